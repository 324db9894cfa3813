//! The language-model sweep's tables on hand-made metrics: the quantities' names and means over
//! seeds, the front with lower bits per byte better, and the layout of `pareto.md`.

use super::plan::{Family, PlannedRun};
use super::table::SweepTable;
use crate::lm::config::LmRunConfig;
use crate::lm::evaluate::{BlockRouting, ClassScore, SplitScore};
use crate::lm::metrics::LmMetrics;
use crate::routing_metrics::LoadStats;
use crate::workload::{Workload, WorkloadConfig, WorkloadMetrics};

/// A run's routing on the validation split: mean k, and per block (load CV, router entropy).
struct Routing {
    mean_k: f64,
    blocks: [(f64, f64); 2],
    letter_k: f64,
    word_start_k: f64,
}

/// A language-model run's metrics with the given validation bits per byte and routing (`None`:
/// dense); the test split scores 0.1 bits per byte more.
fn metrics(valid_bpb: f64, routing: Option<Routing>) -> LmMetrics {
    let class = |class: &str, mean_k: Option<f64>| ClassScore {
        class: class.into(),
        share: 0.5,
        bits_per_byte: valid_bpb,
        mean_k,
    };
    let split = |bits_per_byte: f64| SplitScore {
        bytes: 1000,
        bits_per_byte,
        by_class: vec![
            class("letter", routing.as_ref().map(|r| r.letter_k)),
            class("digit", routing.as_ref().map(|r| r.mean_k)),
        ],
        by_word_position: vec![class(
            "word-start",
            routing.as_ref().map(|r| r.word_start_k),
        )],
        mean_k: routing.as_ref().map(|r| r.mean_k),
        fraction_k1: routing.as_ref().map(|r| 2.0 - r.mean_k),
        blocks: routing.as_ref().map_or(Vec::new(), |r| {
            r.blocks
                .iter()
                .enumerate()
                .map(|(block, &(cv, entropy))| BlockRouting {
                    block,
                    mean_k: r.mean_k,
                    fraction_k1: 2.0 - r.mean_k,
                    load: LoadStats {
                        expert_counts: vec![1, 2],
                        cv,
                        gini: cv / 2.0,
                        max_violation: 2.0 * cv,
                    },
                    router_entropy: entropy,
                    dropped_fraction: 0.0,
                })
                .collect()
        }),
        tokens_per_s: 1e4,
    };
    LmMetrics {
        workload: "lm".into(),
        run: String::new(),
        backend: "ndarray".into(),
        git_commit: None,
        model: "2 blocks d=32 ctx=64, moe E=4 F=32".into(),
        sources: vec!["sotu".into()],
        steps: 10,
        train_tokens: 5120,
        train_wall_time_s: 2.0,
        train_tokens_per_s: 2560.0,
        steady_tokens_per_s: Some(3000.0),
        params_total: 50_000,
        params_active: 40_000.0,
        flops_per_token: 90_000.0,
        valid: split(valid_bpb),
        test: split(valid_bpb + 0.1),
        routing_limits: Vec::new(),
        curve: Vec::new(),
    }
}

fn routed(mean_k: f64, blocks: [(f64, f64); 2]) -> Option<Routing> {
    Some(Routing {
        mean_k,
        blocks,
        letter_k: mean_k - 0.1,
        word_start_k: mean_k + 0.2,
    })
}

/// Two seeds of five methods: threshold-0.5 has top-2's bits per byte at a lower mean k, and
/// budget-1.8 is worse than it at a higher one; top-1 has the lowest mean k and the most bits.
/// The bits per byte are exact in binary, so the tie is one.
fn table() -> SweepTable {
    let runs = [
        ("dense-active", Family::Dense, [(2.0, None), (2.25, None)]),
        (
            "top1",
            Family::TopK,
            [
                (2.5, routed(1.0, [(0.2, 1.0), (0.1, 1.2)])),
                (2.75, routed(1.0, [(0.4, 1.0), (0.3, 1.2)])),
            ],
        ),
        (
            "top2",
            Family::TopK,
            [
                (2.25, routed(2.0, [(0.1, 1.0), (0.1, 1.0)])),
                (2.25, routed(2.0, [(0.1, 1.0), (0.1, 1.0)])),
            ],
        ),
        (
            "threshold-0.5",
            Family::Threshold,
            [
                (2.5, routed(1.25, [(0.5, 0.8), (0.1, 0.6)])),
                (2.0, routed(1.75, [(0.3, 0.8), (0.1, 0.6)])),
            ],
        ),
        (
            "budget-1.8",
            Family::Budget,
            [
                (2.375, routed(1.8, [(0.2, 0.9), (0.2, 0.9)])),
                (2.375, routed(1.8, [(0.2, 0.9), (0.2, 0.9)])),
            ],
        ),
    ];
    let mut plan = Vec::new();
    let mut measured = Vec::new();
    for (method, family, seeds) in runs {
        for (seed, (bpb, routing)) in seeds.into_iter().enumerate() {
            plan.push(PlannedRun {
                name: format!("{method}-s{seed}"),
                method: method.into(),
                family,
                seed: seed as u64,
                config: WorkloadConfig::Lm(LmRunConfig::new()),
            });
            measured.push(WorkloadMetrics::Lm(metrics(bpb, routing)));
        }
    }
    let (methods, runs) = SweepTable::rows(plan.iter().zip(measured).collect(), Workload::Lm);
    SweepTable {
        workload: Workload::Lm,
        name: "lm".into(),
        backend: "ndarray".into(),
        quick: false,
        seeds: vec![0, 1],
        wall_time_s: 1.0,
        jobs: 1,
        missing: Vec::new(),
        methods,
        runs,
    }
}

#[test]
fn lm_methods_average_their_seeds_and_lower_bits_per_byte_is_on_the_front() {
    let table = table();
    let front: Vec<(&str, bool)> = table
        .methods
        .iter()
        .map(|m| (m.method.as_str(), m.on_front))
        .collect();
    assert_eq!(
        front,
        [
            ("dense-active", false),
            ("top1", true),
            ("top2", false),
            ("threshold-0.5", true),
            ("budget-1.8", false),
        ]
    );
    let threshold = &table.methods[3];
    let close = |name: &str, mean: f64, std: f64| {
        let s = threshold.get(name).unwrap_or_else(|| panic!("no {name}"));
        assert!(
            (s.mean - mean).abs() < 1e-12 && (s.std - std).abs() < 1e-12,
            "{name}: {s:?}, expected {mean} ± {std}"
        );
    };
    let std_of_pair = |a: f64, b: f64| (a - b).abs() / 2f64.sqrt();
    close("valid_bits_per_byte", 2.25, std_of_pair(2.5, 2.0));
    close("test_bits_per_byte", 2.35, std_of_pair(2.6, 2.1));
    close("mean_k", 1.5, std_of_pair(1.25, 1.75));
    close("fraction_k1", 0.5, std_of_pair(0.75, 0.25));
    // Block means per run: CV (0.5 + 0.1) / 2 and (0.3 + 0.1) / 2; entropy 0.7 in both.
    close("load_cv", 0.25, std_of_pair(0.3, 0.2));
    close("load_gini", 0.125, std_of_pair(0.15, 0.1));
    close("max_violation", 0.5, std_of_pair(0.6, 0.4));
    close("router_entropy", 0.7, 0.0);
    close("steady_tokens_per_s", 3000.0, 0.0);
    let dense = &table.methods[0];
    assert_eq!(dense.get("mean_k"), None);
    assert_eq!(dense.get("load_cv"), None);
    assert_eq!(dense.get("valid_bits_per_byte").unwrap().mean, 2.125);
}

#[test]
fn lm_csv_names_every_quantity_with_its_std() {
    let csv = table().csv();
    let header = csv.lines().next().unwrap();
    let quantities = [
        "valid_bits_per_byte",
        "test_bits_per_byte",
        "mean_k",
        "fraction_k1",
        "flops_per_token",
        "params_active",
        "steady_tokens_per_s",
        "train_wall_time_s",
        "load_cv",
        "load_gini",
        "max_violation",
        "router_entropy",
    ];
    let expected: Vec<String> = ["kind", "method", "family", "seed", "runs"]
        .map(String::from)
        .into_iter()
        .chain(
            quantities
                .iter()
                .flat_map(|q| [q.to_string(), format!("{q}_std")]),
        )
        .collect();
    assert_eq!(header, expected.join(","));
    assert_eq!(csv.lines().filter(|l| l.starts_with("run,")).count(), 10);
    let dense = csv
        .lines()
        .find(|l| l.starts_with("method,dense-active,"))
        .unwrap();
    // Two runs, valid bits per byte 2.125, ..., then no mean k or k = 1 share.
    assert!(dense.contains(",2,2.125,"), "{dense}");
    assert!(dense.contains(",,,,,"), "{dense}");
}

#[test]
fn lm_pareto_md_has_the_main_block_and_class_tables_with_captions() {
    let markdown = table().markdown();
    let tables: Vec<&str> = markdown.split("\n\n").collect();
    assert_eq!(tables.len(), 6, "{markdown}");
    assert!(tables[0].contains("lower is better"), "{}", tables[0]);
    let main: Vec<&str> = tables[1].lines().collect();
    assert_eq!(
        main[0],
        "| method | valid bpb | test bpb | mean k | k=1 % | FLOPs/token | active params | train tokens/s | load CV | front |"
    );
    assert_eq!(
        main[2],
        "| dense-active | 2.1250 ± 0.1768 | 2.2250 ± 0.1768 | - | - | 90000 | 40000 | 3000 | - |  |"
    );
    assert_eq!(
        main[5],
        "| threshold-0.5 | 2.2500 ± 0.3536 | 2.3500 ± 0.3536 | 1.500 ± 0.354 | 50.0 ± 35.4 | 90000 | 40000 | 3000 | 0.250 ± 0.071 | * |"
    );
    assert!(
        tables[2].starts_with("Load CV per MoE block"),
        "{}",
        tables[2]
    );
    assert_eq!(
        tables[3].lines().collect::<Vec<_>>(),
        [
            "| method | block 0 | block 1 |",
            "| --- | --- | --- |",
            "| top1 | 0.300 | 0.200 |",
            "| top2 | 0.100 | 0.100 |",
            "| threshold-0.5 | 0.400 | 0.100 |",
            "| budget-1.8 | 0.200 | 0.200 |",
        ]
    );
    assert!(
        tables[4].starts_with("Mean k by the class"),
        "{}",
        tables[4]
    );
    let classes: Vec<&str> = tables[5].lines().collect();
    assert_eq!(
        classes[0],
        "| method | letter | digit | whitespace | punctuation | word-start | within-word | outside-word |"
    );
    assert_eq!(
        classes[4],
        "| threshold-0.5 | 1.400 | 1.500 | - | - | 1.700 | - | - |"
    );
}
