//! Where a config value came from, for messages: the config file, or the `--set` flag that set
//! it. Its own file so that the errors can name it without importing the config.

use std::fmt;
use std::path::PathBuf;

/// Where a config value came from, named in messages: the file, or the `--set` flag that set it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigOrigin {
    /// The config file.
    File(PathBuf),
    /// A `--set key=value` flag, as given.
    Override(String),
}

impl fmt::Display for ConfigOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigOrigin::File(path) => write!(f, "{}", path.display()),
            ConfigOrigin::Override(assignment) => write!(f, "--set {assignment}"),
        }
    }
}
