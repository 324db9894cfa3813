//! The weight gradient against the f64 reference, on every runtime: the portable path in f32
//! everywhere (and in 16-bit floats where the device has them), tensor cores in bf16 and f16
//! where the device has them (every tuning candidate).

use cubecl::prelude::*;
use cubecl::server::Handle;
use half::{bf16, f16};

use super::reference::expert_weight_grad as reference_grad;
use super::{
    WeightGradParams, WeightGradShape, expert_weight_grad, expert_weight_grad_into,
    weight_grad_config,
};
use crate::capability::skip_capability;
use crate::dispatch::DispatchOnDevice;
use crate::dispatch::reference::{DispatchPlan, plan};
use crate::grouped_gemm::{has_tensor_cores, multiprocessors};
use crate::pipeline::Pipeline;
use crate::route::reference::route;
use crate::testgen::{HostFloat, download, random_f32, relative_error, rng, upload};
use crate::{KernelError, RoutingPolicy};

/// Poison for output buffers and for input rows past S: exact in f32, bf16 and f16, far from any
/// value of order one, so a stray read or a missed write shows.
const POISON: f32 = -1536.0;

/// Tiles of the dispatch's list; the weight gradient does not read them.
const PLAN_TILE_ROWS: usize = 16;

/// One test batch: routing, plan and random operands (already rounded to `F`); rows of `a` (not
/// gathered) and `b` past S hold the poison.
struct Batch {
    shape: WeightGradShape,
    gather: bool,
    plan: DispatchPlan,
    a: Vec<f32>,
    b: Vec<f32>,
}

/// `(tokens, experts, a_width, b_width, policy, skew towards expert 0)`.
type Case = (usize, usize, usize, usize, RoutingPolicy, f32);

impl Batch {
    fn new<F: HostFloat>(seed: u64, case: Case, gather: bool) -> Self {
        let (num_tokens, num_experts, a_width, b_width, policy, skew) = case;
        let mut draw = rng(seed);
        let mut logits = random_f32(&mut draw, num_tokens * num_experts, 2.0);
        logits
            .iter_mut()
            .step_by(num_experts)
            .for_each(|l| *l += skew);
        let routed = route(&logits, num_experts, &policy);
        let plan = plan(&routed.expert_ids, num_experts, PLAN_TILE_ROWS);
        let shape = WeightGradShape {
            num_tokens,
            slots: routed.slots,
            num_experts,
            a_width,
            b_width,
        };
        let rows = plan.num_rows();
        let mut operand = |row_count: usize, width: usize, used: usize| -> Vec<f32> {
            let mut values = random_f32(&mut draw, row_count * width, 1.0);
            values[used * width..].fill(POISON);
            values
                .into_iter()
                .map(|v| F::from_f32(v).to_host())
                .collect()
        };
        let a = if gather {
            operand(num_tokens, a_width, num_tokens)
        } else {
            operand(shape.num_pairs(), a_width, rows)
        };
        let b = operand(shape.num_pairs(), b_width, rows);
        Self {
            shape,
            gather,
            plan,
            a,
            b,
        }
    }

    fn upload_plan<R: Runtime>(&self, client: &ComputeClient<R>) -> DispatchOnDevice {
        let tiles: Vec<i32> = self.plan.tiles.concat();
        DispatchOnDevice {
            expert_offsets: upload(client, &self.plan.expert_offsets),
            routed_pairs: upload(client, &self.plan.routed_pairs),
            row_of_pair: upload(client, &self.plan.row_of_pair),
            tiles: upload(client, &tiles),
            num_tiles: upload(client, &[self.plan.num_tiles]),
            num_pairs: self.shape.num_pairs(),
            num_experts: self.shape.num_experts,
            tile_rows: self.plan.tile_rows,
        }
    }

    /// Runs the kernel with `params` into a poisoned buffer; returns the gradient as f32.
    fn run<R: Runtime, F: HostFloat>(
        &self,
        client: &ComputeClient<R>,
        params: &WeightGradParams,
        context: &str,
    ) -> Vec<f32> {
        let grad = upload(client, &vec![F::from_f32(POISON); self.shape.grad_len()]);
        expert_weight_grad_into::<R, F, i32>(
            client,
            &upload(client, &to_device::<F>(&self.a)),
            self.gather,
            &upload(client, &to_device::<F>(&self.b)),
            &self.upload_plan(client),
            self.shape,
            params,
            &grad,
        )
        .unwrap_or_else(|e| panic!("{context}: {e}"));
        download::<R, F>(client, grad)
            .into_iter()
            .map(F::to_host)
            .collect()
    }

    /// Checks every element of `got` against the reference: each expert with rows within
    /// `tolerance` (relative to its own norm), each expert without rows exactly zero.
    fn check(&self, got: &[f32], tolerance: f64, context: &str) {
        let WeightGradShape {
            slots,
            a_width,
            b_width,
            ..
        } = self.shape;
        let want = reference_grad(
            &self.a,
            self.gather,
            &self.b,
            &self.plan,
            slots,
            a_width,
            b_width,
        );
        let context = format!("{context} {:?} gather={}", self.shape, self.gather);
        assert_eq!(got.len(), want.len(), "{context}: gradient length");
        if let Some(i) = got.iter().position(|v| !v.is_finite() || *v == POISON) {
            panic!("{context}: element {i} not written ({})", got[i]);
        }
        let block = a_width * b_width;
        for (expert, count) in self.plan.expert_counts().into_iter().enumerate() {
            let range = expert * block..(expert + 1) * block;
            if count == 0 {
                assert!(
                    got[range].iter().all(|&v| v == 0.0),
                    "{context}: expert {expert} has no rows but a nonzero gradient"
                );
                continue;
            }
            let error = relative_error(&got[range.clone()], &want[range]);
            assert!(
                error < tolerance,
                "{context}: expert {expert} ({count} rows): relative error {error:.2e} >= {tolerance:.0e}"
            );
        }
    }
}

fn to_device<F: HostFloat>(values: &[f32]) -> Vec<F> {
    values.iter().map(|&v| F::from_f32(v)).collect()
}

/// Batches that cover the edge cases: T = 1, widths off the tiles and off the vector widths (45:
/// scalar loads), one expert taking every row (the others empty), widths 96 and 160, variable k
/// (threshold: unused slots), many experts with few rows each, and experts with hundreds of rows
/// (many stages).
fn cases() -> Vec<Case> {
    let threshold = RoutingPolicy::Threshold { tau: 0.3 };
    let top = |k| RoutingPolicy::TopK { k };
    vec![
        (1, 8, 64, 96, top(2), 0.0),
        (5, 4, 30, 45, top(1), 0.0),
        (40, 6, 72, 40, threshold, 0.0),
        (70, 4, 48, 24, top(1), 30.0),
        (300, 4, 96, 160, threshold, 0.0),
        (9, 64, 40, 56, top(8), 0.0),
        (200, 3, 128, 136, top(2), 1.0),
    ]
}

/// Portable knobs with every size moved: the default, small tiles and short stages, tall tiles
/// with long stages and 8-wide unit columns.
fn portable_params() -> Vec<WeightGradParams> {
    let base = WeightGradParams::PORTABLE;
    vec![
        base,
        WeightGradParams {
            tile_m: 16,
            tile_n: 16,
            stage_rows: 8,
            unit_m: 2,
            unit_n: 4,
            ..base
        },
        WeightGradParams {
            tile_m: 64,
            tile_n: 32,
            // 32 rows would need more than the 32 KiB of shared memory some devices give.
            stage_rows: 24,
            unit_m: 4,
            unit_n: 8,
            ..base
        },
    ]
}

/// Runs `cases`, gathered and not, with the knobs `params_of` gives for each shape.
fn check_cases<R: Runtime, F: HostFloat>(
    client: &ComputeClient<R>,
    cases: &[Case],
    params_of: impl Fn(&WeightGradShape) -> Vec<WeightGradParams>,
    context: &str,
) {
    for (seed, &case) in cases.iter().enumerate() {
        for gather in [true, false] {
            let batch = Batch::new::<F>(seed as u64, case, gather);
            for params in params_of(&batch.shape) {
                let context = format!("{context} {params:?}");
                let got = batch.run::<R, F>(client, &params, &context);
                batch.check(&got, F::TOLERANCE, &context);
            }
        }
    }
}

/// The portable path in f32 with several tile shapes, on every case.
pub fn portable_path_matches_reference<R: Runtime>(client: ComputeClient<R>) {
    check_cases::<R, f32>(&client, &cases(), |_| portable_params(), "portable f32");
}

/// One 16-bit type: the portable path where the device has the type (else skipped) and, with
/// `every_candidate`, tensor cores in every tuning candidate where the device has them.
///
/// The candidates run on one case, with many stages and widths off every tile, in one type:
/// each candidate compiles once per comptime variant, and all of them on every case in both
/// types outran a 10-minute device step. The tiles do not depend on the type;
/// `chosen_config_is_correct_and_deterministic` runs the size rule's tiles on every case in both.
fn half_precision_matches_reference<R: Runtime, F: HostFloat>(
    client: &ComputeClient<R>,
    every_candidate: bool,
) {
    let name = std::any::type_name::<F>();
    if every_candidate && has_tensor_cores::<R, F>(client) {
        let sms = multiprocessors(client);
        check_cases::<R, F>(
            client,
            &[cases()[4]],
            |shape| WeightGradParams::candidates(shape, sms),
            &format!("tensor cores {name}"),
        );
    }
    if client.properties().supports_type(F::cube_type()) {
        check_cases::<R, F>(
            client,
            &cases(),
            |_| portable_params(),
            &format!("portable {name}"),
        );
    } else {
        skip_capability(&format!("this device has no {name}"));
    }
}

/// bf16 and f16 on every path the device has (every tensor-core candidate in bf16).
pub fn half_precision_matches_reference_in_bf16_and_f16<R: Runtime>(client: ComputeClient<R>) {
    half_precision_matches_reference::<R, bf16>(&client, true);
    half_precision_matches_reference::<R, f16>(&client, false);
}

/// The size rule's choice in every float type, and the allocating entry point: the same bits on a
/// second run (deterministic).
pub fn chosen_config_is_correct_and_deterministic<R: Runtime>(client: ComputeClient<R>) {
    fn run<R: Runtime, F: HostFloat>(client: &ComputeClient<R>) {
        if !client.properties().supports_type(F::cube_type()) {
            return;
        }
        for (seed, &case) in cases().iter().enumerate() {
            let batch = Batch::new::<F>(seed as u64 + 100, case, true);
            let params = weight_grad_config::<R, F>(client, &batch.shape);
            let context = format!("chosen {} {params:?}", std::any::type_name::<F>());
            let (a, b) = (
                upload(client, &to_device::<F>(&batch.a)),
                upload(client, &to_device::<F>(&batch.b)),
            );
            let plan = batch.upload_plan(client);
            let grad = || -> Vec<F> {
                let handle = expert_weight_grad::<R, F, i32>(
                    client,
                    &a,
                    true,
                    &b,
                    &plan,
                    batch.shape,
                    &params,
                )
                .unwrap_or_else(|e| panic!("{context}: {e}"));
                download::<R, F>(client, handle)
            };
            let (first, second) = (grad(), grad());
            assert!(first == second, "{context}: two runs differ");
            let got: Vec<f32> = first.into_iter().map(F::to_host).collect();
            batch.check(&got, F::TOLERANCE, &context);
        }
    }
    run::<R, f32>(&client);
    run::<R, bf16>(&client);
    run::<R, f16>(&client);
}

/// A corrupt plan (offsets past P and decreasing, pairs out of range) gives wrong numbers but
/// writes every element, finite, and reads nothing out of bounds.
pub fn corrupt_plan_writes_finite_values<R: Runtime>(client: ComputeClient<R>) {
    let batch = Batch::new::<f32>(7, (12, 4, 24, 20, RoutingPolicy::TopK { k: 2 }, 0.0), true);
    let pairs = batch.shape.num_pairs() as i32;
    let mut plan = batch.upload_plan(&client);
    plan.expert_offsets = upload(&client, &[0, pairs + 40, 3, -1, pairs]);
    let routed_pairs: Vec<i32> = (0..pairs)
        .map(|r| [-1, 5 * pairs, r][r as usize % 3])
        .collect();
    plan.routed_pairs = upload(&client, &routed_pairs);
    let grad = upload(&client, &vec![POISON; batch.shape.grad_len()]);
    expert_weight_grad_into::<R, f32, i32>(
        &client,
        &upload(&client, &batch.a),
        true,
        &upload(&client, &batch.b),
        &plan,
        batch.shape,
        &WeightGradParams::PORTABLE,
        &grad,
    )
    .expect("a corrupt plan is not detected on the host");
    let got = download::<R, f32>(&client, grad);
    assert!(got.iter().all(|v| v.is_finite() && *v != POISON));
}

/// The asynchronous pipeline (2 to 4 buffers) on the portable shapes in f32, on every case (the
/// tensor-core candidates include it in 16-bit floats); a device without asynchronous copies
/// refuses it as unsupported.
pub fn async_pipeline_matches_reference<R: Runtime>(client: ComputeClient<R>) {
    let asynchronous = |stages: usize| {
        portable_params()
            .into_iter()
            .map(move |params| WeightGradParams {
                pipeline: Pipeline::AsyncCopy { stages },
                ..params
            })
    };
    if client.properties().features.copy_async {
        check_cases::<R, f32>(
            &client,
            &cases(),
            |_| (2..=4).flat_map(asynchronous).collect(),
            "async f32",
        );
        return;
    }
    let batch = Batch::new::<f32>(3, cases()[2], true);
    let plan = batch.upload_plan(&client);
    let refused = expert_weight_grad::<R, f32, i32>(
        &client,
        &upload(&client, &batch.a),
        true,
        &upload(&client, &batch.b),
        &plan,
        batch.shape,
        &asynchronous(3).next().unwrap(),
    );
    assert!(
        matches!(refused, Err(KernelError::Unsupported(_))),
        "asynchronous copies on a device without them: {refused:?}"
    );
}

/// Bad input is an error value, never a launch: zero sizes, a plan from another batch, short
/// buffers, tensor cores where the device has none for the type, knobs the kernel cannot run.
pub fn weight_grad_rejects_bad_arguments<R: Runtime>(client: ComputeClient<R>) {
    let batch = Batch::new::<f32>(1, (10, 4, 16, 8, RoutingPolicy::TopK { k: 2 }, 0.0), true);
    let plan = batch.upload_plan(&client);
    let a = upload(&client, &batch.a);
    let b = upload(&client, &batch.b);
    let grad = upload(&client, &vec![0.5f32; batch.shape.grad_len()]);
    let run = |shape: WeightGradShape, params: &WeightGradParams, a: &Handle| {
        expert_weight_grad_into::<R, f32, i32>(&client, a, true, &b, &plan, shape, params, &grad)
            .unwrap_err()
    };
    let portable = WeightGradParams::PORTABLE;
    let message = |error: KernelError| error.to_string();
    let zero_width = WeightGradShape {
        a_width: 0,
        ..batch.shape
    };
    assert!(message(run(zero_width, &portable, &a)).contains("a_width = 0"));
    let other_batch = WeightGradShape {
        num_tokens: 11,
        ..batch.shape
    };
    assert!(message(run(other_batch, &portable, &a)).contains("plan"));
    let short = upload(&client, &[1.0f32; 8]);
    assert!(message(run(batch.shape, &portable, &short)).contains("a buffer"));
    // f32 never runs on tensor cores (16-bit inputs only).
    assert!(matches!(
        run(batch.shape, &WeightGradParams::TENSOR_CORES, &a),
        KernelError::Unsupported(_)
    ));
    let odd_tiles = WeightGradParams {
        tile_m: 30,
        ..portable
    };
    assert!(matches!(
        run(batch.shape, &odd_tiles, &a),
        KernelError::Unsupported(_)
    ));
}

/// The size rule: portable without tensor cores; 128 x 128 for large gradients; smaller tiles for
/// narrow widths and small grids; every candidate runs with 16-byte loads of 16-bit floats.
#[test]
fn size_rule_picks_tiles_by_shape() {
    let shape = |num_experts, a_width, b_width| WeightGradShape {
        num_tokens: 4096,
        slots: 2,
        num_experts,
        a_width,
        b_width,
    };
    let large = shape(8, 4096, 2 * 14336);
    assert_eq!(
        WeightGradParams::choose(&large, false, Some(132)),
        WeightGradParams::PORTABLE
    );
    assert_eq!(
        WeightGradParams::choose(&large, true, Some(132)),
        WeightGradParams::TENSOR_CORES
    );
    let narrow = WeightGradParams::choose(&shape(64, 64, 4096), true, Some(132));
    assert_eq!((narrow.tile_m, narrow.tile_n), (64, 128));
    let small = WeightGradParams::choose(&shape(2, 256, 256), true, Some(132));
    assert_eq!((small.tile_m, small.tile_n), (64, 64));
    for candidate in WeightGradParams::candidates(&large, Some(132)) {
        assert_eq!(candidate.check(8), Ok(()), "{candidate:?}");
    }
}

/// The gradient tile takes the stage buffers' place where the compiler reuses freed shared
/// memory, so 64-row stages of 128 x 128 tiles fit two cubes on an H100 SM; elsewhere the cube
/// needs both.
#[test]
fn gradient_tile_reuses_the_stage_buffers_where_it_can() {
    let deep = WeightGradParams {
        stage_rows: 64,
        ..WeightGradParams::TENSOR_CORES
    };
    let stages = 3 * 64 * (136 + 136) * 2;
    let tile = 128 * 136 * 2;
    assert_eq!(deep.shared_bytes(2, true), stages);
    assert_eq!(deep.shared_bytes(2, false), stages + tile);
    let wide_tile = WeightGradParams {
        stage_rows: 16,
        tile_n: 256,
        ..WeightGradParams::TENSOR_CORES
    };
    assert_eq!(wide_tile.shared_bytes(2, true), 128 * 264 * 2);
    let large = WeightGradShape {
        num_tokens: 4096,
        slots: 2,
        num_experts: 8,
        a_width: 4096,
        b_width: 2 * 14336,
    };
    assert!(WeightGradParams::candidates(&large, Some(132)).contains(&deep));
}

crate::runtime_tests!(
    portable_path_matches_reference,
    async_pipeline_matches_reference,
    half_precision_matches_reference_in_bf16_and_f16,
    chosen_config_is_correct_and_deterministic,
    corrupt_plan_writes_finite_values,
    weight_grad_rejects_bad_arguments,
);
