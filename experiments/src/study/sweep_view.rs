//! A sweep's `sweep.json` as the report reads it: per method, the mean and spread over seeds of
//! each quantity, by name.

use serde_json::Value;

pub use crate::sweep::Spread;

/// One method's row of a sweep.
#[derive(Clone, Debug)]
pub struct MethodView {
    /// Method name, e.g. `budget-1.4`.
    pub method: String,
    /// Family, e.g. `dense`, `top_k`, `threshold`, `budget`, `balance`.
    pub family: String,
    /// Seeds summarised.
    pub runs: usize,
    stats: Vec<(String, Spread)>,
}

impl MethodView {
    /// The spread of the quantity `name`, if the method has it.
    pub fn get(&self, name: &str) -> Option<Spread> {
        self.stats.iter().find(|(n, _)| n == name).map(|(_, s)| *s)
    }
}

/// A sweep's method rows and what it ran on.
#[derive(Clone, Debug)]
pub struct SweepView {
    /// Backend the runs trained on.
    pub backend: String,
    /// Seeds of every method.
    pub seeds: usize,
    /// One row per method, in the sweep's order.
    pub methods: Vec<MethodView>,
    /// Planned runs that did not run (a partial sweep); empty for a complete one.
    pub missing: Vec<String>,
    /// Runs trained at once (0 where the file does not say): above 1 they shared the device.
    pub jobs: usize,
}

impl SweepView {
    /// Reads the method rows of a `sweep.json`; `None` when it has none.
    pub fn parse(json: &Value) -> Option<Self> {
        let methods: Vec<MethodView> = json["methods"]
            .as_array()?
            .iter()
            .filter_map(|row| {
                let stats = row["stats"]
                    .as_array()?
                    .iter()
                    .filter_map(|pair| {
                        let name = pair[0].as_str()?.to_string();
                        let mean = pair[1]["mean"].as_f64()?;
                        let std = pair[1]["std"].as_f64().unwrap_or(0.0);
                        Some((name, Spread { mean, std }))
                    })
                    .collect();
                Some(MethodView {
                    method: row["method"].as_str()?.to_string(),
                    family: row["family"].as_str().unwrap_or_default().to_string(),
                    runs: row["runs"].as_u64().unwrap_or(0) as usize,
                    stats,
                })
            })
            .collect();
        (!methods.is_empty()).then(|| SweepView {
            backend: json["backend"].as_str().unwrap_or("?").to_string(),
            seeds: json["seeds"].as_array().map_or(0, Vec::len),
            methods,
            missing: json["missing"]
                .as_array()
                .map(|runs| {
                    runs.iter()
                        .filter_map(|r| Some(r.as_str()?.to_string()))
                        .collect()
                })
                .unwrap_or_default(),
            jobs: json["jobs"].as_u64().unwrap_or(0) as usize,
        })
    }

    /// The method named `name`.
    pub fn method(&self, name: &str) -> Option<&MethodView> {
        self.methods.iter().find(|m| m.method == name)
    }

    /// The methods of `family`.
    pub fn family<'a>(&'a self, family: &'a str) -> impl Iterator<Item = &'a MethodView> {
        self.methods.iter().filter(move |m| m.family == family)
    }
}
