//! Run configuration: one TOML file (`configs/*.toml`) with `[task]`, `[model]` and `[train]`
//! sections over the defaults (`configs/moe.toml` lists them all); `--set key=value` overrides
//! single fields.

use std::path::Path;

use burn::config::Config;
use moe_model::{InvalidValue, ModelConfig};

use crate::error::ExperimentError;
use crate::task::TaskConfig;

/// Optimisation settings.
#[derive(Config, Debug)]
pub struct TrainConfig {
    /// Passes over the training split.
    #[config(default = 10)]
    pub epochs: usize,
    /// Points per training step.
    #[config(default = 128)]
    pub batch_size: usize,
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
            ("eval_batch_size", self.eval_batch_size),
        ] {
            if value == 0 {
                return Err(InvalidValue::new(field, value, "must be >= 1"));
            }
        }
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
        self.train.validate().map_err(|e| e.within("train"))
    }

    /// Reads `path`, applies `key=value` overrides, rejects unknown keys and validates.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self, ExperimentError> {
        let text = std::fs::read_to_string(path).map_err(ExperimentError::io(path))?;
        Self::parse(&text, path, overrides)
    }

    /// Like [`RunConfig::load`], from the text of a config file; `path` is used in errors.
    pub fn parse(text: &str, path: &Path, overrides: &[String]) -> Result<Self, ExperimentError> {
        let parse_error = |message: String| ExperimentError::ParseConfig {
            path: path.to_path_buf(),
            message,
        };
        let mut value: toml::Value = toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map_or(0, |span| text[..span.start].lines().count().max(1));
            parse_error(format!("line {line}: {}", e.message().trim()))
        })?;
        for assignment in overrides {
            apply_override(&mut value, assignment)?;
        }
        let defaults = toml::Value::try_from(RunConfig::new()).expect("defaults serialise");
        fill_defaults(&mut value, &defaults);

        let config: RunConfig = serde_path_to_error::deserialize(value.clone()).map_err(|e| {
            let inner = e.inner().message().trim().to_string();
            match e.path().to_string().as_str() {
                "." => parse_error(inner),
                field => parse_error(format!("{field}: {inner}")),
            }
        })?;
        let known = toml::Value::try_from(&config).map_err(|e| parse_error(e.to_string()))?;
        if let Some(key) = first_unknown_key(&value, &known, "") {
            return Err(ExperimentError::UnknownKey {
                path: path.to_path_buf(),
                key,
            });
        }
        config
            .validate()
            .map_err(|source| ExperimentError::InvalidConfig {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(config)
    }

    /// The configuration as TOML, as written next to a run's results.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a valid config serialises")
    }
}

/// Keys that name the variant of a tagged enum in config files (`FfnConfig`, `RoutingPolicy`).
const VARIANT_TAGS: [&str; 2] = ["kind", "policy"];

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
fn apply_override(root: &mut toml::Value, assignment: &str) -> Result<(), ExperimentError> {
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
