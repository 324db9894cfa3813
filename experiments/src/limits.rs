//! The memory a run needs, checked before anything is allocated: an estimate against what this
//! machine has (a failed allocation aborts the process, so it has to be foreseen). The limits
//! that do not depend on the machine are `size_limits`.

use std::path::Path;

use moe_model::{DenseMlpConfig, FfnConfig};

use crate::config::{ConfigSources, RunConfig};
use crate::error::ExperimentError;

/// Bytes of one weight or activation (f32).
const FLOAT_BYTES: f64 = 4.0;
/// Bytes a generated point takes besides its features (the `Vec` header, label and flag).
const ITEM_OVERHEAD_BYTES: f64 = 48.0;

/// What a run does with its model, which sets how many copies of the weights it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// Weights, gradients, Adam's two moments, training and test batches.
    Train,
    /// Weights and test batches.
    Eval,
}

/// Estimated memory of a run, in bytes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MemoryEstimate {
    /// Everything the run holds at its peak: model, optimizer state, one batch, the task's points.
    pub total: f64,
    /// The largest single weight tensor (one device buffer on CubeCL backends).
    pub largest_tensor: f64,
}

impl MemoryEstimate {
    /// Estimates the memory of `config` from its sizes alone, without building anything.
    pub fn of(config: &RunConfig, purpose: Purpose) -> Self {
        let task = &config.task;
        let (input, classes) = (task.input_dim as f64, task.num_classes as f64);
        let d = config.model.d_model as f64;
        let blocks = config.model.num_blocks as f64;
        // Per block: weights of the feed-forward, its largest tensor, activations per token.
        let (ffn_weights, ffn_largest, ffn_per_token) = match &config.model.ffn {
            FfnConfig::Dense(mlp) => {
                let (width, columns) = (mlp.width as f64, mlp.activation.input_columns(1) as f64);
                let weights = d * columns * width + width * d;
                (weights, d * columns * width, (columns + 1.0) * width)
            }
            FfnConfig::Moe(moe) => {
                let (experts, width) = (moe.num_experts as f64, moe.expert_width as f64);
                let columns = moe.activation.input_columns(1) as f64;
                let slots = moe.routing.max_slots() as f64;
                let stacked_in = experts * d * columns * width;
                // Shared experts: one MLP of their summed width.
                let shared = moe.shared_experts as f64 * moe.shared_expert_width as f64;
                let shared_in = d * columns * shared;
                let weights =
                    d * experts + stacked_in + experts * width * d + shared_in + shared * d;
                let per_token = 4.0 * experts
                    + slots * (2.0 * d + (columns + 1.0) * width)
                    + (columns + 1.0) * shared;
                (weights, stacked_in.max(shared_in), per_token)
            }
        };
        let weights = input * d + blocks * (2.0 * d + ffn_weights) + 2.0 * d + d * classes;
        let largest_tensor = ffn_largest.max(input * d).max(d * classes);
        let per_token = input + classes + blocks * (4.0 * d + ffn_per_token);
        let test = task.test_size as f64;
        let point_bytes = input * FLOAT_BYTES + ITEM_OVERHEAD_BYTES;
        let teachers = task.num_clusters as f64 * (7.0 * input + 6.0 * classes + 6.0) * 8.0;
        let points = task.train_size as f64 + task.valid_size as f64 + test;
        let data = teachers + (points + 2.0 * test) * point_bytes + 3.0 * test * 8.0;
        let eval_batch = config.train.eval_batch_size as f64 * per_token;
        // Mixed precision: 16-bit copies of the feed-forward weights (half a float each), and
        // in training their 16-bit gradients too.
        let compute_copies = match config.model.ffn.compute_type() {
            Some(_) => 0.5 * blocks * ffn_weights,
            None => 0.0,
        };
        let floats = match purpose {
            // Weights, gradients and Adam's moments, the per-expert gradients the backward pass
            // sums (two more of the largest tensor), a training batch forward and backward.
            Purpose::Train => {
                4.0 * weights
                    + 2.0 * largest_tensor
                    + 2.0 * compute_copies
                    + (3.0 * config.train.batch_size as f64 * per_token).max(eval_batch)
            }
            Purpose::Eval => weights + compute_copies + eval_batch,
        };
        Self {
            total: floats * FLOAT_BYTES + data,
            largest_tensor: largest_tensor * FLOAT_BYTES,
        }
    }
}

/// Refuses a run that does not fit: its estimate against the host's available memory (where the
/// system reports it) and its largest tensor against `device_buffer`, the largest buffer the
/// device allows (CubeCL backends; CubeCL 0.10 does not report the device's total memory). The
/// error names the size field furthest above its default, and who set it.
pub fn check_memory(
    config: &RunConfig,
    sources: &ConfigSources,
    purpose: Purpose,
    device_buffer: Option<u64>,
) -> Result<(), ExperimentError> {
    let estimate = MemoryEstimate::of(config, purpose);
    let Some(detail) = memory_shortfall(estimate.total, estimate.largest_tensor, device_buffer)
    else {
        return Ok(());
    };
    let (field, value) = largest_size_field(config);
    Err(ExperimentError::TooLarge {
        origin: sources.origin_of(field),
        field: field.to_string(),
        value,
        detail,
    })
}

/// Why a run needing `total` bytes, `largest_tensor` of them in one tensor, does not fit: against
/// the host's available memory (where the system reports it) and `device_buffer`, the largest
/// buffer the device allows; `None` when it fits.
pub fn memory_shortfall(
    total: f64,
    largest_tensor: f64,
    device_buffer: Option<u64>,
) -> Option<String> {
    if let Some(available) = available_host_memory()
        && total > available as f64
    {
        Some(format!(
            "the run needs about {} of memory, {} is available",
            bytes(total),
            bytes(available as f64)
        ))
    } else if let Some(buffer) = device_buffer
        && largest_tensor > buffer as f64
    {
        Some(format!(
            "one tensor needs {}, the device allows at most {} per buffer",
            bytes(largest_tensor),
            bytes(buffer as f64)
        ))
    } else {
        None
    }
}

/// The size fields of a config with their values and defaults.
fn size_fields(config: &RunConfig) -> Vec<(&'static str, usize, usize)> {
    let defaults = RunConfig::new();
    let (task, model, train) = (&config.task, &config.model, &config.train);
    let mut fields = vec![
        ("task.input_dim", task.input_dim, defaults.task.input_dim),
        (
            "task.num_clusters",
            task.num_clusters,
            defaults.task.num_clusters,
        ),
        (
            "task.num_classes",
            task.num_classes,
            defaults.task.num_classes,
        ),
        ("task.train_size", task.train_size, defaults.task.train_size),
        ("task.valid_size", task.valid_size, defaults.task.valid_size),
        ("task.test_size", task.test_size, defaults.task.test_size),
        ("model.d_model", model.d_model, defaults.model.d_model),
        (
            "model.num_blocks",
            model.num_blocks,
            defaults.model.num_blocks,
        ),
        (
            "train.batch_size",
            train.batch_size,
            defaults.train.batch_size,
        ),
        (
            "train.eval_batch_size",
            train.eval_batch_size,
            defaults.train.eval_batch_size,
        ),
    ];
    match (&model.ffn, &defaults.model.ffn) {
        (FfnConfig::Moe(moe), FfnConfig::Moe(default)) => fields.extend([
            (
                "model.ffn.num_experts",
                moe.num_experts,
                default.num_experts,
            ),
            (
                "model.ffn.expert_width",
                moe.expert_width,
                default.expert_width,
            ),
            (
                "model.ffn.shared_experts",
                moe.shared_experts,
                default.shared_experts,
            ),
            (
                "model.ffn.shared_expert_width",
                moe.shared_expert_width,
                default.shared_expert_width,
            ),
        ]),
        (FfnConfig::Dense(mlp), _) => {
            fields.push(("model.ffn.width", mlp.width, DenseMlpConfig::new().width));
        }
        (FfnConfig::Moe(_), FfnConfig::Dense(_)) => {}
    }
    fields
}

/// The size field furthest above its default (by ratio), and its value.
fn largest_size_field(config: &RunConfig) -> (&'static str, usize) {
    furthest_above_default(size_fields(config))
}

/// Of `(field, value, default)` triples, the field whose value is furthest above its default (by
/// ratio), and its value: the one a "too large" message names.
pub fn furthest_above_default(fields: Vec<(&'static str, usize, usize)>) -> (&'static str, usize) {
    fields
        .into_iter()
        .max_by(|a, b| {
            let ratio = |(_, value, default): &(&str, usize, usize)| {
                *value as f64 / (*default).max(1) as f64
            };
            ratio(a).total_cmp(&ratio(b))
        })
        .map(|(field, value, _)| (field, value))
        .expect("a config has size fields")
}

/// Refuses a run whose files (the model, written twice over by the recorder's buffer at most, and
/// burn-train's logs) would not fit on the disk of `results_root`, before anything is written:
/// burn-train's logger panics, or aborts, on a full disk.
pub fn check_disk(results_root: &Path, config: &RunConfig) -> Result<(), ExperimentError> {
    let weights = MemoryEstimate::of(config, Purpose::Eval).total;
    // Logs: a few lines per batch and epoch; 1 MB covers the configs' sizes many times.
    check_free_disk(results_root, 2.0 * weights + 1e6)
}

/// Refuses a run that needs `need` bytes under `results_root` where its file system has less.
pub fn check_free_disk(results_root: &Path, need: f64) -> Result<(), ExperimentError> {
    let existing = results_root
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("."));
    match available_disk(existing) {
        Some(free) if (free as f64) < need => Err(ExperimentError::DiskFull {
            path: results_root.to_path_buf(),
            need: bytes(need),
            available: bytes(free as f64),
        }),
        _ => Ok(()),
    }
}

/// Free bytes for this user on the file system holding `path`; `None` where unknown.
#[cfg(target_os = "linux")]
pub fn available_disk(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is NUL-terminated and `stat` is written by statvfs before it is read.
    let stat = unsafe {
        if libc::statvfs(path.as_ptr(), stat.as_mut_ptr()) != 0 {
            return None;
        }
        stat.assume_init()
    };
    Some((stat.f_bavail as u64).saturating_mul(stat.f_frsize as u64))
}

/// Free bytes for this user on the file system holding `path`; `None` where unknown.
#[cfg(not(target_os = "linux"))]
pub fn available_disk(_: &Path) -> Option<u64> {
    None
}

/// Memory this process may still take: `MemAvailable` of `/proc/meminfo`, lowered to the room
/// left under a cgroup (v2) limit; `None` where neither is known (the check is skipped).
pub fn available_host_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok();
    let available = meminfo.as_deref().and_then(|text| {
        let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    });
    let read_number = |path: &str| {
        std::fs::read_to_string(path)
            .ok()?
            .trim()
            .parse::<u64>()
            .ok()
    };
    let cgroup_room = read_number("/sys/fs/cgroup/memory.max")
        .zip(read_number("/sys/fs/cgroup/memory.current"))
        .map(|(max, current)| max.saturating_sub(current));
    match (available, cgroup_room) {
        (Some(a), Some(c)) => Some(a.min(c)),
        (a, c) => a.or(c),
    }
}

/// `3.1e12` as `3.1 TB`.
pub fn bytes(count: f64) -> String {
    let units = ["bytes", "kB", "MB", "GB", "TB", "PB", "EB"];
    let mut value = count;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < units.len() {
        value /= 1000.0;
        unit += 1;
    }
    match unit {
        0 => format!("{value:.0} bytes"),
        _ => format!("{value:.1} {}", units[unit]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_run_needs_megabytes_and_a_huge_width_terabytes() {
        let config = RunConfig::new();
        let train = MemoryEstimate::of(&config, Purpose::Train);
        let eval = MemoryEstimate::of(&config, Purpose::Eval);
        assert!(
            train.total > 1e6 && train.total < 1e9,
            "{}",
            bytes(train.total)
        );
        assert!(eval.total < train.total);
        // E d 2F floats of the stacked input projections: 8 * 64 * 256 * 4 bytes.
        assert_eq!(train.largest_tensor, 524_288.0);

        let mut huge = RunConfig::new();
        if let FfnConfig::Moe(moe) = &mut huge.model.ffn {
            moe.expert_width = 1_000_000_000;
        }
        assert!(MemoryEstimate::of(&huge, Purpose::Train).total > 1e12);
        assert_eq!(
            largest_size_field(&huge),
            ("model.ffn.expert_width", 1_000_000_000)
        );

        let mut shared = RunConfig::new();
        if let FfnConfig::Moe(moe) = &mut shared.model.ffn {
            moe.shared_experts = 2;
            moe.shared_expert_width = 1_000_000_000;
        }
        assert!(MemoryEstimate::of(&shared, Purpose::Train).total > 1e12);
        assert_eq!(
            largest_size_field(&shared),
            ("model.ffn.shared_expert_width", 1_000_000_000)
        );
    }

    /// Mixed precision holds 16-bit copies of the feed-forward weights (and, training, of their
    /// gradients) beside the f32 ones: 2 bytes per weight for eval, 4 for training.
    #[test]
    fn mixed_precision_adds_the_16_bit_copies() {
        let mut wide = RunConfig::new();
        let FfnConfig::Moe(moe) = &mut wide.model.ffn else {
            panic!("the default run is an MoE")
        };
        moe.expert_width = 100_000;
        let ffn_weights = (moe.num_experts * wide.model.d_model * 3 * moe.expert_width) as f64;
        let blocks = wide.model.num_blocks as f64;
        let mut mixed = wide.clone();
        if let FfnConfig::Moe(moe) = &mut mixed.model.ffn {
            moe.compute_type = Some(moe_model::FloatType::Bf16);
        }
        for (purpose, bytes_per_weight) in [(Purpose::Eval, 2.0), (Purpose::Train, 4.0)] {
            let extra = MemoryEstimate::of(&mixed, purpose).total
                - MemoryEstimate::of(&wide, purpose).total;
            let expected = bytes_per_weight * blocks * ffn_weights;
            // The router's d * E weights are part of the feed-forward's count too.
            assert!(
                (extra / expected - 1.0).abs() < 1e-3,
                "{purpose:?}: {extra} extra bytes, expected about {expected}"
            );
        }
    }

    #[test]
    fn bytes_are_printed_with_a_unit() {
        assert_eq!(bytes(512.0), "512 bytes");
        assert_eq!(bytes(3.14e12), "3.1 TB");
    }
}
