//! Run configuration: one TOML file (`configs/*.toml`) with `[task]`, `[model]` and `[train]`
//! sections over the defaults (`configs/moe.toml` lists them all); `--set key=value` overrides
//! single fields.

use std::path::{Path, PathBuf};

use burn::config::Config;
use moe_model::{InvalidValue, ModelConfig};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use crate::config_origin::ConfigOrigin;
use crate::error::ExperimentError;
use crate::size_limits;
use crate::task::TaskConfig;

/// A config file and the `--set key=value` overrides applied over it (`--config`, `--set`).
#[derive(Clone, Debug, clap::Args)]
pub struct ConfigSources {
    /// Config file, e.g. configs/moe.toml.
    #[arg(long = "config")]
    pub file: PathBuf,
    /// Override one config field, e.g. --set train.epochs=3 (repeatable; a later one wins).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
}

impl ConfigSources {
    /// Reads the file, applies the overrides, rejects unknown keys and validates.
    pub fn load(&self) -> Result<RunConfig, ExperimentError> {
        RunConfig::load(&self.file, &self.overrides)
    }

    /// Who set `field` (a dotted path): the last override of that field, of a table around it or
    /// of a field inside it; else the file.
    pub fn origin_of(&self, field: &str) -> ConfigOrigin {
        let within = |inner: &str, outer: &str| {
            inner == outer || inner.starts_with(outer) && inner[outer.len()..].starts_with('.')
        };
        self.overrides
            .iter()
            .rev()
            .find(|assignment| {
                let key = assignment
                    .split_once('=')
                    .map_or(assignment.as_str(), |(k, _)| k);
                let key = key.trim();
                !field.is_empty() && (within(key, field) || within(field, key))
            })
            .map_or_else(
                || ConfigOrigin::File(self.file.clone()),
                |assignment| ConfigOrigin::Override(assignment.clone()),
            )
    }
}

/// Optimisation settings.
#[derive(Config, Debug)]
pub struct TrainConfig {
    /// Passes over the training split.
    #[config(default = 10)]
    pub epochs: usize,
    /// Points per training step, over all devices.
    #[config(default = 128)]
    pub batch_size: usize,
    /// Devices training runs on, data parallel (burn-train's multi-device strategy): each step
    /// every device takes `batch_size / devices` points and the gradients are added into one
    /// optimizer step, as one device would take on the whole batch. On ndarray the ranks are
    /// threads sharing the CPU.
    #[config(default = 1)]
    pub devices: usize,
    /// Adam learning rate.
    #[config(default = 3e-3)]
    pub learning_rate: f64,
    /// Seed of the weight initialisation and of the shuffling.
    #[config(default = 0)]
    pub seed: u64,
    /// Points per batch when evaluating and timing inference.
    #[config(default = 1024)]
    pub eval_batch_size: usize,
}

impl TrainConfig {
    /// Checks every field against its allowed range.
    pub fn validate(&self) -> Result<(), InvalidValue> {
        for (field, value) in [
            ("epochs", self.epochs),
            ("batch_size", self.batch_size),
            ("devices", self.devices),
            ("eval_batch_size", self.eval_batch_size),
        ] {
            if value == 0 {
                return Err(InvalidValue::new(field, value, "must be >= 1"));
            }
        }
        check_shares(self.batch_size, self.devices)?;
        if !(self.learning_rate > 0.0 && self.learning_rate.is_finite()) {
            return Err(InvalidValue::new(
                "learning_rate",
                self.learning_rate,
                "must be a finite number > 0",
            ));
        }
        Ok(())
    }
}

/// Everything one run needs: the task, the model and how to train it.
#[derive(Config, Debug)]
pub struct RunConfig {
    /// The synthetic task.
    #[config(default = "TaskConfig::new()")]
    pub task: TaskConfig,
    /// The classifier.
    #[config(default = "ModelConfig::new()")]
    pub model: ModelConfig,
    /// Optimisation.
    #[config(default = "TrainConfig::new()")]
    pub train: TrainConfig,
}

impl RunConfig {
    /// Checks every section; the error names the field by its dotted path.
    pub fn validate(&self) -> Result<(), InvalidValue> {
        self.task.validate().map_err(|e| e.within("task"))?;
        self.model.validate().map_err(|e| e.within("model"))?;
        self.train.validate().map_err(|e| e.within("train"))?;
        size_limits::check_sizes(&self.task, &self.model)
    }

    /// Reads `path`, applies `key=value` overrides, rejects unknown keys and validates.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self, ExperimentError> {
        let text = std::fs::read_to_string(path).map_err(ExperimentError::io(path))?;
        Self::parse(&text, path, overrides)
    }

    /// Like [`RunConfig::load`], from the text of a config file; `path` is used in errors.
    pub fn parse(text: &str, path: &Path, overrides: &[String]) -> Result<Self, ExperimentError> {
        parse_config(text, path, overrides)
    }

    /// The configuration as TOML, as written next to a run's results.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a valid config serialises")
    }
}

impl ConfigFile for RunConfig {
    fn defaults() -> Self {
        RunConfig::new()
    }

    fn validate(&self) -> Result<(), InvalidValue> {
        RunConfig::validate(self)
    }
}

/// The root of a config file (a task run, a language-model run): what [`parse_config`] needs to
/// fill in defaults, reject unknown keys and validate.
pub trait ConfigFile: Serialize + DeserializeOwned {
    /// Every field at its default: what a file leaves out.
    fn defaults() -> Self;
    /// Checks every section; the error names the field by its dotted path.
    fn validate(&self) -> Result<(), InvalidValue>;
}

/// Reads a config file's text, applies `key=value` overrides, fills in the defaults, rejects
/// unknown keys and validates; `path` is used in errors, which name the field and who set it.
pub fn parse_config<C: ConfigFile>(
    text: &str,
    path: &Path,
    overrides: &[String],
) -> Result<C, ExperimentError> {
    let sources = ConfigSources {
        file: path.to_path_buf(),
        overrides: overrides.to_vec(),
    };
    let mut value: toml::Value = toml::from_str(text).map_err(|e| {
        let line = e
            .span()
            .map_or(0, |span| text[..span.start].lines().count().max(1));
        ExperimentError::ParseConfig {
            origin: ConfigOrigin::File(path.to_path_buf()),
            message: format!("line {line}: {}", e.message().trim()),
        }
    })?;
    if value.as_table().is_some_and(toml::Table::is_empty) {
        return Err(ExperimentError::EmptyConfig(path.to_path_buf()));
    }
    for assignment in overrides {
        apply_override(&mut value, assignment)?;
    }
    let defaults = toml::Value::try_from(C::defaults()).expect("defaults serialise");
    fill_defaults(&mut value, &defaults);

    let config = deserialize::<C>(&value).map_err(|(field, message)| {
        let field = locate_in_tagged_table::<C>(&value, &field, &message).unwrap_or(field);
        ExperimentError::ParseConfig {
            origin: sources.origin_of(&field),
            message: match field.as_str() {
                "" => message,
                field => format!("{field}: {message}"),
            },
        }
    })?;
    let known = toml::Value::try_from(&config).expect("a parsed config serialises");
    if let Some(key) = first_unknown_key(&value, &known, "") {
        return Err(ExperimentError::UnknownKey {
            origin: sources.origin_of(&key),
            key,
        });
    }
    config
        .validate()
        .map_err(|source| ExperimentError::InvalidConfig {
            origin: sources.origin_of(&source.field),
            source,
        })?;
    Ok(config)
}

/// Keys that name the variant of a tagged enum in config files (`FfnConfig`, `RoutingPolicy`).
const VARIANT_TAGS: [&str; 2] = ["kind", "policy"];

/// Parses a filled-in config; the error is the dotted path of the field (empty for the whole
/// file) and what is wrong with it, in the words of the config file rather than Rust type names.
fn deserialize<C: DeserializeOwned>(value: &toml::Value) -> Result<C, (String, String)> {
    serde_path_to_error::deserialize(value.clone()).map_err(|e| {
        let field = match e.path().to_string() {
            root if root == "." => String::new(),
            field => field,
        };
        (field, without_type_names(e.inner().message().trim()))
    })
}

/// serde reports an error inside an internally tagged table (`model.ffn`, `model.ffn.routing`)
/// at the table, having buffered its fields. Finds the field inside: removing the culprit turns
/// the error into "missing field `<it>`", removing any other field leaves it as it was.
fn locate_in_tagged_table<C: DeserializeOwned>(
    value: &toml::Value,
    reported: &str,
    message: &str,
) -> Option<String> {
    if message.starts_with("missing field") {
        return None; // nothing to find: the field is not there
    }
    let table_at = |root: &toml::Value, path: &str| {
        path.split('.')
            .try_fold(root, |v, key| v.get(key))
            .and_then(toml::Value::as_table)
            .cloned()
    };
    let search = |table_path: &str| -> Option<(String, bool)> {
        let table = table_at(value, table_path)?;
        if !VARIANT_TAGS.iter().any(|tag| table.contains_key(*tag)) {
            return None;
        }
        table
            .iter()
            .filter(|(key, _)| !VARIANT_TAGS.contains(&key.as_str()))
            .find_map(|(key, field_value)| {
                let mut probe = value.clone();
                let mut slot = &mut probe;
                for part in table_path.split('.') {
                    slot = slot.get_mut(part)?;
                }
                slot.as_table_mut()?.remove(key);
                let missing = format!("missing field `{key}`");
                let culprit =
                    matches!(deserialize::<C>(&probe), Err((at, m)) if at == reported && m == missing);
                culprit.then(|| (format!("{table_path}.{key}"), field_value.is_table()))
            })
    };
    let mut found = None;
    let mut table_path = reported.to_string();
    while let Some((field, is_table)) = search(&table_path) {
        found = Some(field.clone());
        if !is_table {
            break;
        }
        table_path = field;
    }
    found
}

/// serde names the Rust types it expected (`struct TrainConfigSerde`, `internally tagged enum
/// FfnConfig`); a config file has tables.
fn without_type_names(message: &str) -> String {
    let mut text = message.to_string();
    for kind in ["internally tagged enum ", "struct ", "enum "] {
        while let Some(start) = text.find(kind) {
            let name = start + kind.len();
            let end = text[name..]
                .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                .map_or(text.len(), |len| name + len);
            text.replace_range(start..end, "a table");
        }
    }
    text
}

/// Fills the fields a config file leaves out with the defaults, table by table, so a file only
/// states what differs. A table naming another variant than the default's (`kind = "dense"`) is
/// kept as written: the default's fields belong to the other variant.
fn fill_defaults(value: &mut toml::Value, defaults: &toml::Value) {
    let (toml::Value::Table(table), toml::Value::Table(default_table)) = (value, defaults) else {
        return;
    };
    let other_variant = VARIANT_TAGS.iter().any(
        |tag| matches!((table.get(*tag), default_table.get(*tag)), (Some(a), Some(b)) if a != b),
    );
    if other_variant {
        return;
    }
    for (key, default) in default_table {
        match table.get_mut(key) {
            Some(given) => fill_defaults(given, default),
            None => {
                table.insert(key.clone(), default.clone());
            }
        }
    }
}

/// Sets `key.path=value` in the parsed file; the value is read as TOML, or as a string if it is
/// not valid TOML (so `--set model.ffn.kind=dense` needs no quotes).
pub(crate) fn apply_override(
    root: &mut toml::Value,
    assignment: &str,
) -> Result<(), ExperimentError> {
    let bad = || ExperimentError::BadOverride(assignment.to_string());
    let (key, raw) = assignment.split_once('=').ok_or_else(bad)?;
    let keys: Vec<&str> = key.trim().split('.').collect();
    if keys.iter().any(|k| k.is_empty()) {
        return Err(bad());
    }
    let value = toml::from_str::<toml::Table>(&format!("v = {}", raw.trim()))
        .ok()
        .and_then(|mut table| table.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.trim().to_string()));

    let (last, sections) = keys.split_last().expect("at least one key");
    let mut table = root.as_table_mut().ok_or_else(bad)?;
    for section in sections {
        table = table
            .entry(section.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .ok_or_else(bad)?;
    }
    table.insert(last.to_string(), value);
    Ok(())
}

/// The first key of `given` (depth first, dotted path) that `known` does not have.
fn first_unknown_key(given: &toml::Value, known: &toml::Value, prefix: &str) -> Option<String> {
    let (toml::Value::Table(given), toml::Value::Table(known)) = (given, known) else {
        return None;
    };
    given.iter().find_map(|(key, value)| {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match known.get(key) {
            None => Some(path),
            Some(known_value) => first_unknown_key(value, known_value, &path),
        }
    })
}

/// Refuses a `batch_size` that `devices` cannot share equally: data parallel gives every device
/// the same number of points (or windows) per step.
pub fn check_shares(batch_size: usize, devices: usize) -> Result<(), InvalidValue> {
    if batch_size.is_multiple_of(devices) {
        return Ok(());
    }
    Err(InvalidValue::new(
        "batch_size",
        batch_size,
        format!("must be a multiple of devices ({devices}): each device takes an equal share"),
    ))
}
