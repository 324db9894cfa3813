//! The `[sweep]` section of a sweep config (`configs/sweep.toml`): which methods, which seeds, how
//! many runs at once; `[sweep.quick]` replaces some of its fields for `--quick`. The rest of the
//! file is an ordinary run config, shared by every run of the sweep.

use std::path::Path;

use moe_model::{BalanceMethod, InvalidValue};
use serde::Deserialize;

use crate::config::ConfigOrigin;
use crate::error::ExperimentError;

/// What a sweep trains; every list may be empty (that method is left out).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepSettings {
    /// The sweep writes `results/sweep-<name>/`.
    pub name: String,
    /// Training seeds (weights and shuffling); every method runs once per seed.
    pub seeds: Vec<u64>,
    /// Runs trained at the same time, each in its own process.
    #[serde(default = "one")]
    pub jobs: usize,
    /// The dense baselines: as many active parameters as top-2, and as many in total as the MoE.
    #[serde(default)]
    pub dense: bool,
    /// Fixed top-k routing for each k.
    #[serde(default)]
    pub top_k: Vec<usize>,
    /// Variable-k threshold routing for each tau.
    #[serde(default)]
    pub thresholds: Vec<f64>,
    /// Threshold routing with the mean-k budget controller, for each target mean k.
    #[serde(default)]
    pub target_mean_k: Vec<f64>,
    /// Top-p routing for each p.
    #[serde(default)]
    pub top_p: Vec<f64>,
    /// Most experts per token of the top-p runs.
    #[serde(default = "four")]
    pub top_p_max_k: usize,
    /// Expert-choice routing for each capacity factor (mean k).
    #[serde(default)]
    pub expert_choice: Vec<f64>,
    /// Threshold routing at `variant_tau` with each balancing method.
    #[serde(default)]
    pub balance: Vec<BalanceMethod>,
    /// Threshold routing at `variant_tau` with token dropping at each capacity factor.
    #[serde(default)]
    pub capacity_factor: Vec<f64>,
    /// Threshold routing at `variant_tau` plus this many shared experts (each entry a run).
    #[serde(default)]
    pub shared_experts: Vec<usize>,
    /// The tau of the balance, capacity and shared-expert variants.
    #[serde(default = "half")]
    pub variant_tau: f64,
}

fn one() -> usize {
    1
}

fn four() -> usize {
    4
}

fn half() -> f64 {
    0.5
}

impl SweepSettings {
    /// Checks what the run configs cannot: names, seeds, list ranges independent of the model.
    pub fn validate(&self) -> Result<(), InvalidValue> {
        let name_ok = !self.name.is_empty()
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
            && !self.name.starts_with(['.', '-']);
        if !name_ok {
            return Err(InvalidValue::new(
                "name",
                format!("{:?}", self.name),
                "must be letters, digits, '.', '_' or '-', not starting with '.' or '-'",
            ));
        }
        if self.seeds.is_empty() {
            return Err(InvalidValue::new(
                "seeds",
                "[]",
                "must list at least one seed",
            ));
        }
        if let Some(seed) = duplicate(&self.seeds) {
            return Err(InvalidValue::new("seeds", seed, "is listed twice"));
        }
        if self.jobs == 0 {
            return Err(InvalidValue::new("jobs", 0, "must be >= 1"));
        }
        let in_unit = |field: &str, values: &[f64], open_at_zero: bool| {
            values.iter().find_map(|&v| {
                let ok = if open_at_zero {
                    v > 0.0 && v <= 1.0
                } else {
                    (0.0..=1.0).contains(&v)
                };
                (!ok).then(|| {
                    let range = if open_at_zero { "(0, 1]" } else { "[0, 1]" };
                    InvalidValue::new(field, v, format!("every entry must be in {range}"))
                })
            })
        };
        if let Some(error) = [
            in_unit("thresholds", &self.thresholds, false),
            in_unit("top_p", &self.top_p, true),
            in_unit("variant_tau", &[self.variant_tau], false),
        ]
        .into_iter()
        .flatten()
        .next()
        {
            return Err(error);
        }
        if let Some(&k) = self.top_k.iter().find(|&&k| k == 0) {
            return Err(InvalidValue::new("top_k", k, "every entry must be >= 1"));
        }
        if self.methods_listed() == 0 {
            return Err(InvalidValue::new(
                "dense",
                self.dense,
                "no method is listed: set dense = true or list top_k, thresholds, ...",
            ));
        }
        Ok(())
    }

    /// How many methods the lists name (runs = methods x seeds).
    pub fn methods_listed(&self) -> usize {
        2 * usize::from(self.dense)
            + self.top_k.len()
            + self.thresholds.len()
            + self.target_mean_k.len()
            + self.top_p.len()
            + self.expert_choice.len()
            + self.balance.len()
            + self.capacity_factor.len()
            + self.shared_experts.len()
    }
}

fn duplicate(seeds: &[u64]) -> Option<u64> {
    seeds
        .iter()
        .enumerate()
        .find(|(i, s)| seeds[..*i].contains(s))
        .map(|(_, &s)| s)
}

/// The parts of a sweep config file: the settings (quick fields applied when asked) and the
/// shared run config, as TOML text.
#[derive(Clone, Debug)]
pub struct SweepFile {
    /// The `[sweep]` section.
    pub settings: SweepSettings,
    /// Overrides of the run config for `--quick` (`[sweep.quick] set = [...]`).
    pub run_overrides: Vec<String>,
    /// Everything but `[sweep]`: the run config every run starts from.
    pub run_config_text: String,
}

impl SweepFile {
    /// Reads and checks the `[sweep]` section of `path`; `quick` applies `[sweep.quick]`.
    pub fn load(path: &Path, quick: bool) -> Result<Self, ExperimentError> {
        let text = std::fs::read_to_string(path).map_err(ExperimentError::io(path))?;
        Self::parse(&text, path, quick)
    }

    /// Like [`SweepFile::load`], from the text of the file; `path` is used in errors.
    pub fn parse(text: &str, path: &Path, quick: bool) -> Result<Self, ExperimentError> {
        let parse_error = |message: String| ExperimentError::ParseConfig {
            origin: ConfigOrigin::File(path.to_path_buf()),
            message,
        };
        let mut root: toml::Table = toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map_or(0, |span| text[..span.start].lines().count().max(1));
            parse_error(format!("line {line}: {}", e.message().trim()))
        })?;
        let Some(toml::Value::Table(mut sweep)) = root.remove("sweep") else {
            return Err(parse_error(
                "no [sweep] section (see configs/sweep.toml)".into(),
            ));
        };
        let quick_table = sweep.remove("quick");
        let mut run_overrides = Vec::new();
        if quick {
            let Some(toml::Value::Table(mut fields)) = quick_table else {
                return Err(parse_error(
                    "--quick needs a [sweep.quick] section (see configs/sweep.toml)".into(),
                ));
            };
            if let Some(set) = fields.remove("set") {
                run_overrides = set
                    .try_into::<Vec<String>>()
                    .map_err(|e| parse_error(format!("sweep.quick.set: {}", e.message().trim())))?;
            }
            for (key, value) in fields {
                if !sweep.contains_key(&key) && !FIELDS.contains(&key.as_str()) {
                    return Err(ExperimentError::UnknownKey {
                        origin: ConfigOrigin::File(path.to_path_buf()),
                        key: format!("sweep.quick.{key}"),
                    });
                }
                sweep.insert(key, value);
            }
        }
        let settings: SweepSettings = serde_path_to_error::deserialize(toml::Value::Table(sweep))
            .map_err(|e| {
            let inner = e.inner().message().trim().to_string();
            match e.path().to_string().as_str() {
                "." => parse_error(format!("sweep: {inner}")),
                field => parse_error(format!("sweep.{field}: {inner}")),
            }
        })?;
        settings
            .validate()
            .map_err(|source| ExperimentError::InvalidConfig {
                origin: ConfigOrigin::File(path.to_path_buf()),
                source: source.within("sweep"),
            })?;
        Ok(Self {
            settings,
            run_overrides,
            run_config_text: toml::to_string(&root).expect("a parsed table serialises"),
        })
    }
}

/// Every field of [`SweepSettings`] (those `[sweep.quick]` may set even when `[sweep]` does not).
const FIELDS: [&str; 14] = [
    "name",
    "seeds",
    "jobs",
    "dense",
    "top_k",
    "thresholds",
    "target_mean_k",
    "top_p",
    "top_p_max_k",
    "expert_choice",
    "balance",
    "capacity_factor",
    "shared_experts",
    "variant_tau",
];

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
[sweep]
name = "t"
seeds = [0, 1]
thresholds = [0.5]
[sweep.quick]
seeds = [3]
set = ["train.epochs=1"]
[train]
epochs = 4
"#;

    #[test]
    fn quick_replaces_its_fields_and_the_rest_is_the_run_config() {
        let path = Path::new("s.toml");
        let full = SweepFile::parse(FILE, path, false).unwrap();
        assert_eq!(full.settings.seeds, vec![0, 1]);
        assert!(full.run_overrides.is_empty());
        assert!(full.run_config_text.contains("epochs = 4"));
        assert!(!full.run_config_text.contains("sweep"));
        let quick = SweepFile::parse(FILE, path, true).unwrap();
        assert_eq!(quick.settings.seeds, vec![3]);
        assert_eq!(quick.settings.thresholds, vec![0.5]);
        assert_eq!(quick.run_overrides, vec!["train.epochs=1".to_string()]);
    }

    #[test]
    fn bad_sweep_sections_name_the_field() {
        let path = Path::new("s.toml");
        let error = |text: &str| SweepFile::parse(text, path, false).unwrap_err().to_string();
        assert!(error(&FILE.replace("[0.5]", "[1.5]")).contains("sweep.thresholds = 1.5"));
        assert!(error(&FILE.replace("seeds = [0, 1]", "seeds = [0, 0]")).contains("sweep.seeds"));
        assert!(error(&FILE.replace("name = \"t\"", "name = \"a/b\"")).contains("sweep.name"));
        assert!(error(&FILE.replace("thresholds", "thresholdz")).contains("thresholdz"));
        assert!(error("[train]\nepochs = 1\n").contains("no [sweep] section"));
    }
}
