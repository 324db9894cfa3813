//! The runs of a sweep: one per method and seed, each a full run config (task or language model)
//! derived from the shared one by changing only the feed-forward (its routing, or a dense MLP)
//! and the training seed.

use std::path::Path;

use moe_model::{
    BalanceMethod, DenseMlpConfig, FfnConfig, InvalidValue, MoeLayerConfig, RoutingPolicy,
};
use serde::{Deserialize, Serialize};

use super::settings::SweepFile;
use crate::config::ConfigOrigin;
use crate::error::ExperimentError;
use crate::workload::WorkloadConfig;

/// Kinds of method, for grouping in tables and plots.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    /// Dense MLP baselines.
    Dense,
    /// Fixed top-k.
    TopK,
    /// Variable-k with a fixed threshold.
    Threshold,
    /// Variable-k with the mean-k budget controller.
    Budget,
    /// Top-p.
    TopP,
    /// Expert choice.
    ExpertChoice,
    /// Threshold routing with another balancing method.
    Balance,
    /// Threshold routing with capacity and token dropping.
    Capacity,
    /// Threshold routing plus shared experts.
    Shared,
}

impl Family {
    /// Label in plots and tables.
    pub fn label(&self) -> &'static str {
        match self {
            Family::Dense => "dense",
            Family::TopK => "top-k",
            Family::Threshold => "threshold",
            Family::Budget => "mean-k budget",
            Family::TopP => "top-p",
            Family::ExpertChoice => "expert choice",
            Family::Balance => "balancing",
            Family::Capacity => "capacity",
            Family::Shared => "shared experts",
        }
    }
}

/// One method of the sweep: a feed-forward configuration.
#[derive(Clone, Debug)]
pub struct Method {
    /// Run-name prefix, e.g. `threshold-0.5`.
    pub name: String,
    /// What kind of method it is.
    pub family: Family,
    /// The feed-forward every block uses.
    pub ffn: FfnConfig,
    /// The `[sweep]` field and entry it comes from, for errors.
    source: (&'static str, String),
}

/// One run of the sweep.
#[derive(Clone, Debug)]
pub struct PlannedRun {
    /// Run name, `<method>-s<seed>`.
    pub name: String,
    /// Method name.
    pub method: String,
    /// Method family.
    pub family: Family,
    /// Training seed.
    pub seed: u64,
    /// The validated run config.
    pub config: WorkloadConfig,
}

/// Every run of the sweep in `file` (read from `path`), methods in file order, seeds inside each.
pub fn plan(file: &SweepFile, path: &Path) -> Result<Vec<PlannedRun>, ExperimentError> {
    let base = WorkloadConfig::parse(&file.run_config_text, path, &file.run_overrides)?;
    let FfnConfig::Moe(moe) = base.ffn() else {
        return Err(ExperimentError::InvalidConfig {
            origin: ConfigOrigin::File(path.to_path_buf()),
            source: InvalidValue::new(
                "model.ffn.kind",
                "\"dense\"",
                "must be \"moe\" in a sweep config (its methods vary the MoE's routing)",
            ),
        });
    };
    let mut runs = Vec::new();
    for method in methods(file, moe) {
        let mut config = base.clone();
        config.set_ffn(method.ffn.clone());
        config.validate().map_err(|e| {
            let (field, value) = &method.source;
            ExperimentError::InvalidConfig {
                origin: ConfigOrigin::File(path.to_path_buf()),
                source: InvalidValue::new(format!("sweep.{field}"), value, e.to_string()),
            }
        })?;
        for &seed in &file.settings.seeds {
            let mut config = config.clone();
            config.set_seed(seed);
            runs.push(PlannedRun {
                name: format!("{}-s{seed}", method.name),
                method: method.name.clone(),
                family: method.family,
                seed,
                config,
            });
        }
    }
    Ok(runs)
}

/// The methods the settings list, over the shared MoE configuration `moe`.
fn methods(file: &SweepFile, moe: &MoeLayerConfig) -> Vec<Method> {
    let s = &file.settings;
    let mut methods = Vec::new();
    let routed = |policy: RoutingPolicy| moe.clone().with_routing(policy);
    let variant = || routed(RoutingPolicy::Threshold { tau: s.variant_tau });
    let mut add = |name: String, family, ffn, source: (&'static str, String)| {
        methods.push(Method {
            name,
            family,
            ffn,
            source,
        })
    };
    if s.dense {
        let dense = |width: usize| {
            FfnConfig::Dense(
                DenseMlpConfig::new()
                    .with_width(width)
                    .with_activation(moe.activation)
                    .with_compute_type(moe.compute_type),
            )
        };
        let active = 2 * moe.expert_width;
        let total = moe.num_experts * moe.expert_width;
        add(
            "dense-active".into(),
            Family::Dense,
            dense(active),
            ("dense", "true".into()),
        );
        add(
            "dense-total".into(),
            Family::Dense,
            dense(total),
            ("dense", "true".into()),
        );
    }
    for &k in &s.top_k {
        let ffn = FfnConfig::Moe(routed(RoutingPolicy::TopK { k }));
        add(
            format!("top{k}"),
            Family::TopK,
            ffn,
            ("top_k", k.to_string()),
        );
    }
    for &tau in &s.thresholds {
        let ffn = FfnConfig::Moe(routed(RoutingPolicy::Threshold { tau }));
        add(
            format!("threshold-{tau}"),
            Family::Threshold,
            ffn,
            ("thresholds", tau.to_string()),
        );
    }
    for &target in &s.target_mean_k {
        let ffn = FfnConfig::Moe(variant().with_target_mean_k(Some(target)));
        let source = ("target_mean_k", target.to_string());
        add(format!("budget-{target}"), Family::Budget, ffn, source);
    }
    for &p in &s.top_p {
        let policy = RoutingPolicy::TopP {
            p,
            max_k: s.top_p_max_k,
        };
        let ffn = FfnConfig::Moe(routed(policy));
        add(
            format!("top-p-{p}"),
            Family::TopP,
            ffn,
            ("top_p", p.to_string()),
        );
    }
    for &capacity_factor in &s.expert_choice {
        let policy = RoutingPolicy::ExpertChoice {
            capacity_factor,
            max_k: moe.num_experts,
        };
        let ffn = FfnConfig::Moe(routed(policy).with_balance(BalanceMethod::None));
        let source = ("expert_choice", capacity_factor.to_string());
        add(
            format!("expert-choice-{capacity_factor}"),
            Family::ExpertChoice,
            ffn,
            source,
        );
    }
    for &balance in &s.balance {
        let ffn = FfnConfig::Moe(variant().with_balance(balance));
        add(
            format!("balance-{balance}"),
            Family::Balance,
            ffn,
            ("balance", balance.to_string()),
        );
    }
    for &factor in &s.capacity_factor {
        let ffn = FfnConfig::Moe(variant().with_capacity_factor(Some(factor)));
        let source = ("capacity_factor", factor.to_string());
        add(format!("capacity-{factor}"), Family::Capacity, ffn, source);
    }
    for &count in &s.shared_experts {
        let ffn = FfnConfig::Moe(variant().with_shared_experts(count));
        add(
            format!("shared-{count}"),
            Family::Shared,
            ffn,
            ("shared_experts", count.to_string()),
        );
    }
    methods
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RunConfig;

    fn file(sweep: &str) -> SweepFile {
        // The run config part must not be empty (an empty config file is an error); the sweep
        // replaces the seed it sets.
        let text = format!("[train]\nseed = 9\n[sweep]\nname = \"t\"\nseeds = [0, 5]\n{sweep}\n");
        SweepFile::parse(&text, Path::new("s.toml"), false).unwrap()
    }

    #[test]
    fn every_listed_method_runs_once_per_seed_with_only_its_routing_changed() {
        let runs = plan(
            &file("dense = true\ntop_k = [2]\ntarget_mean_k = [1.3]\nexpert_choice = [1.5]"),
            Path::new("s.toml"),
        )
        .unwrap();
        let names: Vec<&str> = runs.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "dense-active-s0",
                "dense-active-s5",
                "dense-total-s0",
                "dense-total-s5",
                "top2-s0",
                "top2-s5",
                "budget-1.3-s0",
                "budget-1.3-s5",
                "expert-choice-1.5-s0",
                "expert-choice-1.5-s5",
            ]
        );
        let defaults = RunConfig::new();
        for run in &runs {
            assert_eq!(run.config.seed(), run.seed);
            let WorkloadConfig::Task(config) = &run.config else {
                panic!("a config without [corpus] plans task runs")
            };
            assert_eq!(config.task.to_string(), defaults.task.to_string());
        }
        let FfnConfig::Dense(dense) = runs[2].config.ffn() else {
            panic!("dense-total is dense")
        };
        assert_eq!(dense.width, 8 * 128);
        let FfnConfig::Moe(budget) = runs[6].config.ffn() else {
            panic!("budget is an MoE")
        };
        assert_eq!(budget.target_mean_k, Some(1.3));
    }

    /// A run part with `[corpus]` plans language-model runs: the sweep's methods on its
    /// feed-forward, everything else as the file says.
    #[test]
    fn a_corpus_table_plans_language_model_runs_with_the_base_kept() {
        let text = "[sweep]\nname = \"lm\"\nseeds = [0, 3]\ndense = true\ntop_k = [1]\n\
                    thresholds = [0.4]\ntarget_mean_k = [1.5]\nbalance = [\"bias\"]\n\
                    [corpus]\ndir = \"texts\"\n[model]\nd_model = 32\ncontext = 64\n\
                    num_heads = 2\n[model.ffn]\nkind = \"moe\"\nnum_experts = 4\n\
                    expert_width = 48\ncompute_type = \"bf16\"\n[train]\nsteps = 7\n";
        let file = SweepFile::parse(text, Path::new("lm.toml"), false).unwrap();
        let runs = plan(&file, Path::new("lm.toml")).unwrap();
        let names: Vec<&str> = runs.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "dense-active-s0",
                "dense-active-s3",
                "dense-total-s0",
                "dense-total-s3",
                "top1-s0",
                "top1-s3",
                "threshold-0.4-s0",
                "threshold-0.4-s3",
                "budget-1.5-s0",
                "budget-1.5-s3",
                "balance-bias-s0",
                "balance-bias-s3",
            ]
        );
        for run in &runs {
            let WorkloadConfig::Lm(config) = &run.config else {
                panic!("{}: a [corpus] table plans language-model runs", run.name)
            };
            assert_eq!(config.train.seed, run.seed);
            assert_eq!(config.train.steps, 7);
            assert_eq!(config.corpus.dir, Path::new("texts"));
            assert_eq!((config.model.d_model, config.model.context), (32, 64));
            assert_eq!(
                run.config.ffn().compute_type(),
                Some(moe_model::FloatType::Bf16),
                "{}",
                run.name
            );
        }
        let width = |i: usize| match runs[i].config.ffn() {
            FfnConfig::Dense(dense) => dense.width,
            FfnConfig::Moe(_) => panic!("{} is dense", runs[i].name),
        };
        assert_eq!((width(0), width(2)), (2 * 48, 4 * 48));
        let moe = |i: usize| match runs[i].config.ffn() {
            FfnConfig::Moe(moe) => moe.clone(),
            FfnConfig::Dense(_) => panic!("{} is an MoE", runs[i].name),
        };
        assert_eq!(moe(4).routing, RoutingPolicy::TopK { k: 1 });
        assert_eq!(moe(6).routing, RoutingPolicy::Threshold { tau: 0.4 });
        assert_eq!(moe(8).target_mean_k, Some(1.5));
        assert_eq!(moe(10).balance, BalanceMethod::Bias);
        assert_eq!(moe(10).routing, RoutingPolicy::Threshold { tau: 0.5 });
        assert!(moe(4).num_experts == 4 && moe(4).expert_width == 48);
    }

    #[test]
    fn a_method_the_model_cannot_run_names_its_sweep_field() {
        let error = plan(&file("top_k = [9]"), Path::new("s.toml")).unwrap_err();
        assert!(
            error.to_string().contains("sweep.top_k = 9 is invalid"),
            "{error}"
        );
        let error = plan(&file("target_mean_k = [2.5]"), Path::new("s.toml")).unwrap_err();
        assert!(
            error.to_string().contains("sweep.target_mean_k = 2.5"),
            "{error}"
        );
    }
}
