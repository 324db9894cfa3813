//! Embeds the commit the binary is built from as `MOE_BUILD_COMMIT` (`-dirty` when tracked files
//! differ from it), so every record a run writes names the code that produced it, wherever the
//! binary runs (a GPU machine gets a stripped binary and no repository).

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    // A commit or checkout moves HEAD's log; staging changes the index; an edit of the sources
    // can make the tree dirty.
    for file in ["logs/HEAD", "index"] {
        if let Some(path) = git(&["rev-parse", "--git-path", file]) {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    for sources in ["src", "../crates", "../Cargo.toml"] {
        println!("cargo:rerun-if-changed={sources}");
    }
    if let Some(commit) = git(&["rev-parse", "HEAD"]) {
        let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
            .is_some_and(|status| !status.is_empty());
        let suffix = if dirty { "-dirty" } else { "" };
        println!("cargo:rustc-env=MOE_BUILD_COMMIT={commit}{suffix}");
    }
}
