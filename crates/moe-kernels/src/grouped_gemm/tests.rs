//! The grouped GEMM against the f64 reference, on every runtime: the portable path in f32
//! everywhere, tensor cores in bf16 and f16 where the device has them, the asynchronous-copy pipeline where the
//! device has it.

use cubecl::prelude::*;
use half::{bf16, f16};

use super::reference::{
    input_projection as reference_input, output_projection as reference_output, pre_activation,
    swiglu_pre_gradient, transposed_projection,
};
use super::{
    Epilogue, ExpertGemmConfig, ExpertOperands, ExpertShape, FITTED_TILE_ROWS, GemmParams,
    Pipeline, expert_matmul, fits_fitted_tile, has_tensor_cores, has_tma, input_projection_into,
    multiprocessors, output_projection_into,
};
use crate::capability::skip_capability;
use crate::dispatch::DispatchOnDevice;
use crate::dispatch::reference::{DispatchPlan, plan};
use crate::route::reference::route;
use crate::testgen::{HostFloat, download, random_f32, relative_error, rng, upload};
use crate::{Activation, KernelError, RoutingPolicy};

/// Poison for output buffers: exact in f32, bf16 and f16, far from any output of order one.
const POISON: f32 = -1536.0;

/// One test batch: routing, plan and random operands (already rounded to `F`).
struct Batch {
    shape: ExpertShape,
    plan: DispatchPlan,
    x: Vec<f32>,
    w_in: Vec<f32>,
    w_out: Vec<f32>,
}

impl Batch {
    /// Routes random logits with `policy` (biased towards expert 0 by `skew`), plans tiles of
    /// `tile_rows` rows and draws operands scaled so outputs are of order one.
    #[allow(clippy::too_many_arguments, reason = "test case description")]
    fn new<F: HostFloat>(
        seed: u64,
        num_tokens: usize,
        num_experts: usize,
        d_model: usize,
        width: usize,
        policy: RoutingPolicy,
        activation: Activation,
        skew: f32,
        tile_rows: usize,
    ) -> Self {
        let mut draw = rng(seed);
        let mut logits = random_f32(&mut draw, num_tokens * num_experts, 2.0);
        logits
            .iter_mut()
            .step_by(num_experts)
            .for_each(|l| *l += skew);
        let routed = route(&logits, num_experts, &policy);
        let plan = plan(&routed.expert_ids, num_experts, tile_rows);
        let round = |values: Vec<f32>| -> Vec<f32> {
            values
                .into_iter()
                .map(|v| F::from_f32(v).to_host())
                .collect()
        };
        let columns = activation.input_columns(width);
        let x = round(random_f32(&mut draw, num_tokens * d_model, 1.0));
        let w_in = round(random_f32(
            &mut draw,
            num_experts * d_model * columns,
            (3.0 / d_model as f32).sqrt(),
        ));
        let w_out = round(random_f32(
            &mut draw,
            num_experts * width * d_model,
            (3.0 / width as f32).sqrt(),
        ));
        Self {
            shape: ExpertShape {
                num_tokens,
                slots: routed.slots,
                num_experts,
                d_model,
                width,
            },
            plan,
            x,
            w_in,
            w_out,
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
}

fn to_device<F: HostFloat>(values: &[f32]) -> Vec<F> {
    values.iter().map(|&v| F::from_f32(v)).collect()
}

/// Runs both projections of `batch` with `config` into poisoned buffers and checks them against
/// the reference: every routed row written and within tolerance, no row past S touched.
fn check_projections<R: Runtime, F: HostFloat>(
    client: &ComputeClient<R>,
    batch: &Batch,
    config: &ExpertGemmConfig,
    activation: Activation,
    context: &str,
) {
    let ExpertShape {
        d_model,
        width,
        slots,
        ..
    } = batch.shape;
    let pairs = batch.shape.num_pairs();
    let rows = batch.plan.num_rows();
    let plan = batch.upload_plan(client);
    let context = format!("{context} {:?} {}", batch.shape, config.class);

    let hidden = upload(client, &vec![F::from_f32(POISON); pairs * width]);
    input_projection_into::<R, F, i32>(
        client,
        &upload(client, &to_device::<F>(&batch.x)),
        &upload(client, &to_device::<F>(&batch.w_in)),
        &plan,
        batch.shape,
        &config.input,
        &hidden,
    )
    .unwrap_or_else(|e| panic!("{context}: {e}"));
    let got: Vec<f32> = download::<R, F>(client, hidden)
        .into_iter()
        .map(F::to_host)
        .collect();
    let want = reference_input(
        &batch.x,
        &batch.w_in,
        &batch.plan,
        slots,
        d_model,
        width,
        activation,
    );
    assert_written_and_close(
        &got,
        &want,
        rows * width,
        F::TOLERANCE,
        &format!("{context} input"),
    );

    // The second projection reads the device's hidden rows, so its check is independent of the
    // first's rounding.
    let splits = config.output.split_k;
    let out_len = splits * pairs * d_model;
    let rows_out: Vec<f32> = if splits > 1 {
        let buffer = upload(client, &vec![POISON; out_len]);
        run_output::<R, F>(client, &got, batch, &plan, config, &buffer, &context);
        let partial: Vec<f32> = download::<R, f32>(client, buffer);
        let block = pairs * d_model;
        for s in 0..splits {
            assert!(
                partial[s * block + rows * d_model..(s + 1) * block]
                    .iter()
                    .all(|&v| v == POISON),
                "{context}: split {s} wrote past the routed rows"
            );
        }
        (0..block)
            .map(|i| {
                if i < rows * d_model {
                    (0..splits).map(|s| partial[s * block + i]).sum()
                } else {
                    POISON
                }
            })
            .collect()
    } else {
        let buffer = upload(client, &vec![F::from_f32(POISON); out_len]);
        run_output::<R, F>(client, &got, batch, &plan, config, &buffer, &context);
        download::<R, F>(client, buffer)
            .into_iter()
            .map(F::to_host)
            .collect()
    };
    let want = reference_output(&got, &batch.w_out, &batch.plan, width, d_model);
    assert_written_and_close(
        &rows_out,
        &want,
        rows * d_model,
        F::TOLERANCE,
        &format!("{context} output"),
    );
    check_backward_projections::<R, F>(client, batch, config, activation, &rows_out, &context);
}

/// The training path's projections: pre-activations (gather, no activation), then both input
/// gradients through transposed weights and (SwiGLU) the pre-activations' gradient with the
/// activation's backward fused into the epilogue, each fed the previous kernel output (rows past
/// S still poisoned: they must not be read).
fn check_backward_projections<R: Runtime, F: HostFloat>(
    client: &ComputeClient<R>,
    batch: &Batch,
    config: &ExpertGemmConfig,
    activation: Activation,
    rows_out: &[f32],
    context: &str,
) {
    let ExpertShape {
        num_tokens,
        d_model,
        width,
        slots,
        ..
    } = batch.shape;
    let pairs = batch.shape.num_pairs();
    let rows = batch.plan.num_rows();
    let columns = activation.input_columns(width);
    let plan = batch.upload_plan(client);
    let run_with = |a: &[f32],
                    a_rows,
                    weights: &[f32],
                    depth,
                    width,
                    params: &GemmParams,
                    pre: Option<&[f32]>| {
        let outputs = params.epilogue.output_groups();
        let output = upload(client, &vec![F::from_f32(POISON); pairs * width * outputs]);
        let pre = pre.map(|pre| upload(client, &to_device::<F>(pre)));
        let operands = ExpertOperands {
            a: &upload(client, &to_device::<F>(a)),
            a_rows,
            weights: &upload(client, &to_device::<F>(weights)),
            pre: pre.as_ref(),
            depth,
            width,
            output: &output,
        };
        expert_matmul::<R, F, F, i32>(client, &operands, &plan, batch.shape, params)
            .unwrap_or_else(|e| panic!("{context}: {e}"));
        download::<R, F>(client, output)
            .into_iter()
            .map(F::to_host)
            .collect::<Vec<f32>>()
    };
    let run = |a: &[f32], a_rows, weights: &[f32], depth, width, params: &GemmParams| {
        run_with(a, a_rows, weights, depth, width, params, None)
    };

    let pre = run(
        &batch.x,
        num_tokens,
        &batch.w_in,
        d_model,
        columns,
        &config.pre_activation(),
    );
    let want = pre_activation(&batch.x, &batch.w_in, &batch.plan, slots, d_model, columns);
    assert_written_and_close(
        &pre,
        &want,
        rows * columns,
        F::TOLERANCE,
        &format!("{context} pre"),
    );

    let transposed = config.transposed();
    let d_hidden = run(rows_out, pairs, &batch.w_out, d_model, width, &transposed);
    let want = transposed_projection(rows_out, &batch.w_out, &batch.plan, d_model, width);
    let label = format!("{context} rows @ w_out^T");
    assert_written_and_close(&d_hidden, &want, rows * width, F::TOLERANCE, &label);

    if activation == Activation::SwiGlu {
        let fused = GemmParams {
            epilogue: Epilogue::SwiGluBackward,
            ..transposed
        };
        let d_pre = run_with(
            rows_out,
            pairs,
            &batch.w_out,
            d_model,
            width,
            &fused,
            Some(&pre),
        );
        let want = swiglu_pre_gradient(rows_out, &batch.w_out, &pre, &batch.plan, d_model, width);
        let label = format!("{context} SwiGLU backward of rows @ w_out^T");
        assert_written_and_close(&d_pre, &want, rows * columns, F::TOLERANCE, &label);
    }

    let d_rows = run(&pre, pairs, &batch.w_in, columns, d_model, &transposed);
    let want = transposed_projection(&pre, &batch.w_in, &batch.plan, columns, d_model);
    let label = format!("{context} pre @ w_in^T");
    assert_written_and_close(&d_rows, &want, rows * d_model, F::TOLERANCE, &label);
}

fn run_output<R: Runtime, F: HostFloat>(
    client: &ComputeClient<R>,
    hidden: &[f32],
    batch: &Batch,
    plan: &DispatchOnDevice,
    config: &ExpertGemmConfig,
    rows: &cubecl::server::Handle,
    context: &str,
) {
    output_projection_into::<R, F, i32>(
        client,
        &upload(client, &to_device::<F>(hidden)),
        &upload(client, &to_device::<F>(&batch.w_out)),
        plan,
        batch.shape,
        &config.output,
        rows,
    )
    .unwrap_or_else(|e| panic!("{context}: {e}"));
}

/// The first `written` values are finite and within `tolerance` of `want`; the rest still hold
/// the poison.
fn assert_written_and_close(
    got: &[f32],
    want: &[f64],
    written: usize,
    tolerance: f64,
    context: &str,
) {
    assert_eq!(want.len(), written, "{context}: reference length");
    if let Some(i) = got[..written]
        .iter()
        .position(|v| !v.is_finite() || *v == POISON)
    {
        panic!("{context}: element {i} not written ({})", got[i]);
    }
    let error = relative_error(&got[..written], want);
    assert!(
        error < tolerance,
        "{context}: relative error {error:.2e} >= {tolerance:.0e}"
    );
    if let Some(i) = got[written..].iter().position(|&v| v != POISON) {
        panic!(
            "{context}: element {} past the routed rows written ({})",
            written + i,
            got[written + i]
        );
    }
}

/// One test batch's sizes and routing: `(tokens, experts, d, F, policy, activation, skew)`.
type Case = (usize, usize, usize, usize, RoutingPolicy, Activation, f32);

/// Batches that cover the edge cases: T=1, d and F off the tile sizes (and off the
/// vector widths), one expert taking every token, experts with no tokens, E=256 top-8, and
/// variable-k batches where most tokens use one expert.
fn cases() -> Vec<Case> {
    let threshold = RoutingPolicy::Threshold { tau: 0.3 };
    vec![
        (
            1,
            8,
            64,
            96,
            RoutingPolicy::TopK { k: 2 },
            Activation::SwiGlu,
            0.0,
        ),
        (
            5,
            4,
            30,
            45,
            RoutingPolicy::TopK { k: 1 },
            Activation::Gelu,
            0.0,
        ),
        (40, 6, 72, 40, threshold, Activation::SwiGlu, 0.0),
        (
            70,
            4,
            48,
            24,
            RoutingPolicy::TopK { k: 2 },
            Activation::SwiGlu,
            30.0,
        ),
        (
            4,
            64,
            40,
            56,
            RoutingPolicy::TopK { k: 2 },
            Activation::Gelu,
            0.0,
        ),
        (
            9,
            256,
            32,
            16,
            RoutingPolicy::TopK { k: 8 },
            Activation::SwiGlu,
            0.0,
        ),
        (300, 4, 64, 80, threshold, Activation::SwiGlu, 0.0),
    ]
}

/// Portable configurations with every knob moved: tile rows, split-K, raster groups.
fn portable_configs(activation: Activation) -> Vec<ExpertGemmConfig> {
    let shape = ExpertShape {
        num_tokens: 1,
        slots: 1,
        num_experts: 1,
        d_model: 8,
        width: 8,
    };
    let base = ExpertGemmConfig::choose(&shape, activation, false, None);
    let variant = |tile_rows, tile_cols, split_k, raster_group| {
        let mut config = base;
        config.input.tile_rows = tile_rows;
        config.input.raster_group = raster_group;
        config.output.tile_rows = tile_rows;
        config.output.tile_cols = tile_cols;
        config.output.split_k = split_k;
        config.output.raster_group = raster_group;
        config
    };
    vec![base, variant(16, 16, 3, 1), variant(64, 32, 2, 3)]
}

/// The portable path in f32 with several tile shapes, on every case.
pub fn portable_path_matches_reference<R: Runtime>(client: ComputeClient<R>) {
    for (seed, &(tokens, experts, d, width, policy, activation, skew)) in cases().iter().enumerate()
    {
        for config in portable_configs(activation) {
            let batch = Batch::new::<f32>(
                seed as u64,
                tokens,
                experts,
                d,
                width,
                policy,
                activation,
                skew,
                config.tile_rows(),
            );
            check_projections::<R, f32>(&client, &batch, &config, activation, "portable f32");
        }
    }
}

/// `cases()` plus batches large enough for the medium and prefill shape classes.
fn class_cases() -> Vec<Case> {
    let mut all = cases();
    let top2 = RoutingPolicy::TopK { k: 2 };
    all.push((100, 8, 96, 72, top2, Activation::SwiGlu, 0.0)); // medium
    all.push((600, 4, 128, 136, top2, Activation::SwiGlu, 0.0)); // prefill
    let top8 = RoutingPolicy::TopK { k: 8 };
    all.push((256, 16, 96, 72, top8, Activation::SwiGlu, 0.0)); // prefill fitted: 128 rows each
    all
}

/// Whether `F` runs on tensor cores on this device; `None` (after saying so) for a 16-bit type
/// without them, which these tests skip.
fn tensor_cores_or_skip<R: Runtime, F: HostFloat>(client: &ComputeClient<R>) -> Option<bool> {
    let tensor_cores = has_tensor_cores::<R, F>(client);
    if !tensor_cores && size_of::<F>() == 2 {
        skip_capability(&format!(
            "no tensor cores for {}",
            std::any::type_name::<F>()
        ));
        return None;
    }
    Some(tensor_cores)
}

/// The size rule's configuration for `case` and a batch of it planned for that configuration's
/// tile rows.
fn chosen_batch<R: Runtime, F: HostFloat>(
    client: &ComputeClient<R>,
    case: Case,
    seed: u64,
    tensor_cores: bool,
) -> (ExpertGemmConfig, Batch) {
    let (tokens, experts, d, width, policy, activation, skew) = case;
    let shape = ExpertShape {
        num_tokens: tokens,
        slots: policy.max_slots(),
        num_experts: experts,
        d_model: d,
        width,
    };
    let config =
        ExpertGemmConfig::choose(&shape, activation, tensor_cores, multiprocessors(client));
    let batch = Batch::new::<F>(
        seed,
        tokens,
        experts,
        d,
        width,
        policy,
        activation,
        skew,
        config.tile_rows(),
    );
    (config, batch)
}

/// The configurations the size rule picks (tensor cores in 16-bit floats where the device has
/// them), on every case and on batches large enough for each shape class.
fn chosen_configs_match_reference<R: Runtime, F: HostFloat>(client: &ComputeClient<R>) {
    let Some(tensor_cores) = tensor_cores_or_skip::<R, F>(client) else {
        return;
    };
    let mut all = class_cases();
    all.push((
        600,
        4,
        64,
        128,
        RoutingPolicy::TopK { k: 1 },
        Activation::Gelu,
        1.0,
    ));
    for (seed, &case) in all.iter().enumerate() {
        let (config, batch) = chosen_batch::<R, F>(client, case, seed as u64 + 100, tensor_cores);
        let name = std::any::type_name::<F>();
        check_projections::<R, F>(client, &batch, &config, case.5, name);
    }
}

/// The size rule's choice in f32 (portable), bf16 and f16 (tensor cores where present).
pub fn chosen_configs_match_reference_in_every_float_type<R: Runtime>(client: ComputeClient<R>) {
    chosen_configs_match_reference::<R, f32>(&client);
    chosen_configs_match_reference::<R, bf16>(&client);
    chosen_configs_match_reference::<R, f16>(&client);
}

/// The asynchronous-copy pipeline (2 to 4 buffers) on the size rule's tiles, on tensor cores
/// in bf16 and on units in f32, over every case and each shape class; a device without
/// asynchronous copies, or widths they cannot move, are refused as unsupported.
fn async_pipeline_matches_reference_in<R: Runtime, F: HostFloat>(client: &ComputeClient<R>) {
    let Some(tensor_cores) = tensor_cores_or_skip::<R, F>(client) else {
        return;
    };
    for (seed, &case) in class_cases().iter().enumerate() {
        let (chosen, batch) = chosen_batch::<R, F>(client, case, seed as u64 + 200, tensor_cores);
        let (shape, activation) = (batch.shape, case.5);
        let (d, width) = (shape.d_model, shape.width);
        let stages = 2 + seed % 3;
        let config = chosen.with_pipeline(Pipeline::AsyncCopy { stages });
        // cp.async moves at least 4 bytes: odd widths in 16-bit floats cannot use it.
        let copyable = (4 / size_of::<F>()).max(1);
        let refused =
            !client.properties().features.copy_async || d % copyable != 0 || width % copyable != 0;
        if refused {
            assert_input_refused::<R, F>(client, &batch, &config.input, "asynchronous copies");
            continue;
        }
        let context = format!("{} async {stages}", std::any::type_name::<F>());
        check_projections::<R, F>(client, &batch, &config, activation, &context);
    }
}

/// The input projection of `batch` with `params` is refused as unsupported (`what` cannot run
/// there).
fn assert_input_refused<R: Runtime, F: HostFloat>(
    client: &ComputeClient<R>,
    batch: &Batch,
    params: &GemmParams,
    what: &str,
) {
    let shape = batch.shape;
    let hidden = upload(
        client,
        &vec![F::from_f32(POISON); shape.num_pairs() * shape.width],
    );
    let refused = input_projection_into::<R, F, i32>(
        client,
        &upload(client, &to_device::<F>(&batch.x)),
        &upload(client, &to_device::<F>(&batch.w_in)),
        &batch.upload_plan(client),
        shape,
        params,
        &hidden,
    );
    assert!(
        matches!(refused, Err(KernelError::Unsupported(_))),
        "{what} where they cannot run ({shape:?}): {refused:?}"
    );
}

/// The size rule's tiles with their weight stages, and the A stages of the projections whose
/// rows are in dispatch order, as TMA boxes (bf16 on tensor cores), forward and backward, over
/// every case and each shape class, with 2 to 4 buffers: on a device with TMA they match the
/// reference (widths whose rows are not whole 16-byte units are refused); on one without, the
/// options are refused as unsupported.
pub fn tma_boxes_match_reference<R: Runtime>(client: ComputeClient<R>) {
    let Some(true) = tensor_cores_or_skip::<R, bf16>(&client) else {
        skip_capability("no tensor cores for bf16: no TMA boxes");
        return;
    };
    for (seed, &case) in class_cases().iter().enumerate() {
        let (chosen, batch) = chosen_batch::<R, bf16>(&client, case, seed as u64 + 300, true);
        let boxed = |p: GemmParams| GemmParams {
            tma_weights: true,
            tma_rows: !p.gather,
            pipeline: Pipeline::AsyncCopy {
                stages: 2 + seed % 3,
            },
            ..p
        };
        let config = ExpertGemmConfig {
            input: boxed(chosen.input),
            output: boxed(chosen.output),
            ..chosen
        };
        let (d, width) = (batch.shape.d_model, batch.shape.width);
        if !has_tma(&client) || d % 8 != 0 || width % 8 != 0 {
            assert_input_refused::<R, bf16>(&client, &batch, &config.input, "TMA boxes");
            continue;
        }
        check_projections::<R, bf16>(&client, &batch, &config, case.5, "bf16 tma");
    }
}

/// The asynchronous pipeline in bf16 (tensor cores) and f32 (units).
pub fn async_pipeline_matches_reference<R: Runtime>(client: ComputeClient<R>) {
    async_pipeline_matches_reference_in::<R, bf16>(&client);
    async_pipeline_matches_reference_in::<R, f32>(&client);
}

/// Bad input is an error value, never a launch: shape mismatches, short buffers, a plan from
/// another batch, knobs the kernel cannot run.
pub fn grouped_gemm_rejects_bad_arguments<R: Runtime>(client: ComputeClient<R>) {
    let activation = Activation::SwiGlu;
    let batch = Batch::new::<f32>(
        1,
        10,
        4,
        16,
        8,
        RoutingPolicy::TopK { k: 2 },
        activation,
        0.0,
        32,
    );
    let config = ExpertGemmConfig::choose(&batch.shape, activation, false, None);
    let plan = batch.upload_plan(&client);
    let x = upload(&client, &batch.x);
    let w_in = upload(&client, &batch.w_in);
    let hidden = upload(&client, &vec![0.5f32; batch.shape.num_pairs() * 8]);
    let run = |shape: ExpertShape,
               params: &GemmParams,
               x: &cubecl::server::Handle,
               plan: &DispatchOnDevice| {
        input_projection_into::<R, f32, i32>(&client, x, &w_in, plan, shape, params, &hidden)
            .unwrap_err()
    };
    let message = |error: KernelError| error.to_string();
    assert!(
        message(run(
            ExpertShape {
                d_model: 0,
                ..batch.shape
            },
            &config.input,
            &x,
            &plan
        ))
        .contains("d_model = 0")
    );
    assert!(
        message(run(
            ExpertShape {
                num_tokens: 11,
                ..batch.shape
            },
            &config.input,
            &x,
            &plan
        ))
        .contains("plan")
    );
    assert!(
        message(run(
            batch.shape,
            &config.input,
            &upload(&client, &[1.0f32; 8]),
            &plan
        ))
        .contains("a buffer")
    );
    let other_tiles = DispatchOnDevice {
        tile_rows: 16,
        ..plan.clone()
    };
    assert!(
        message(run(batch.shape, &config.input, &x, &other_tiles)).contains("plan.tile_rows = 16")
    );
    let split_swiglu = GemmParams {
        split_k: 2,
        ..config.input
    };
    assert!(matches!(
        run(batch.shape, &split_swiglu, &x, &plan),
        KernelError::Unsupported(_)
    ));
    let odd_tiles = GemmParams {
        tile_cols: 30,
        ..config.input
    };
    assert!(matches!(
        run(batch.shape, &odd_tiles, &x, &plan),
        KernelError::Unsupported(_)
    ));
    // The SwiGLU backward's epilogue without the pre-activations it reads.
    let pairs = batch.shape.num_pairs();
    let backward = GemmParams {
        epilogue: Epilogue::SwiGluBackward,
        ..config.transposed()
    };
    let operands = ExpertOperands {
        a: &upload(&client, &vec![0.5f32; pairs * 16]),
        a_rows: pairs,
        weights: &upload(&client, &batch.w_out),
        pre: None,
        depth: 16,
        width: 8,
        output: &upload(&client, &vec![0.5f32; pairs * 2 * 8]),
    };
    let error =
        expert_matmul::<R, f32, f32, i32>(&client, &operands, &plan, batch.shape, &backward);
    assert!(message(error.unwrap_err()).contains("pre = missing"));
}

crate::runtime_tests!(
    portable_path_matches_reference,
    async_pipeline_matches_reference,
    tma_boxes_match_reference,
    chosen_configs_match_reference_in_every_float_type,
    grouped_gemm_rejects_bad_arguments,
);

/// The size rule gives experts of about one 128-row tile 144-row tiles, and every candidate of
/// the tuner is a configuration the kernel accepts.
#[test]
fn size_rule_fits_tile_rows_to_one_tile_experts() {
    assert!(!fits_fitted_tile(100));
    assert!(fits_fitted_tile(128));
    assert!(!fits_fitted_tile(664));
    let shape = |tokens, experts, slots| ExpertShape {
        num_tokens: tokens,
        slots,
        num_experts: experts,
        d_model: 7168,
        width: 2048,
    };
    let deepseek = shape(4096, 256, 8);
    let mixtral = shape(4096, 8, 2);
    let pick =
        |shape: &ExpertShape| ExpertGemmConfig::choose(shape, Activation::SwiGlu, true, None);
    assert_eq!(pick(&deepseek).class, "prefill fitted");
    assert_eq!(pick(&deepseek).tile_rows(), FITTED_TILE_ROWS);
    assert_eq!(pick(&deepseek).output.tile_rows, FITTED_TILE_ROWS);
    assert_eq!(pick(&mixtral).class, "prefill");
    for shape in [deepseek, mixtral] {
        for candidate in ExpertGemmConfig::candidates(&shape, Activation::SwiGlu, Some(132)) {
            assert_eq!(candidate.input.check(8), Ok(()), "{candidate:?}");
            assert_eq!(candidate.output.check(8), Ok(()), "{candidate:?}");
            assert_eq!(candidate.input.tile_rows, candidate.output.tile_rows);
        }
    }
}

/// The prefill and medium classes take TMA boxes (weights, and the output projection's rows)
/// where every projection fits them; decode and prefill fitted do not, and widths whose rows
/// are not whole 16-byte units never do.
#[test]
fn tma_boxes_where_the_class_gains_and_they_fit() {
    let shape = |tokens, experts, slots, width| ExpertShape {
        num_tokens: tokens,
        slots,
        num_experts: experts,
        d_model: 4096,
        width,
    };
    let pick =
        |shape: &ExpertShape| ExpertGemmConfig::choose(shape, Activation::SwiGlu, true, None);
    for (shape, gains) in [
        (shape(4096, 8, 2, 14336), true),
        (shape(128, 8, 2, 14336), true),
        (shape(1, 8, 2, 14336), false),
        (shape(4096, 256, 8, 2048), false),
    ] {
        let config = pick(&shape);
        assert_eq!(config.gains_from_tma(), gains, "{}", config.class);
        let boxed = config.with_tma(&shape, true);
        assert!(
            boxed.input.tma_weights && boxed.output.tma_weights,
            "{boxed:?}"
        );
        // The input projection gathers its rows: only the output projection's come as boxes.
        assert!(!boxed.input.tma_rows && boxed.output.tma_rows, "{boxed:?}");
        assert!(!config.with_tma(&shape, false).output.tma_rows);
        assert_eq!(boxed.input.check(8), Ok(()));
        assert_eq!(boxed.output.check(8), Ok(()));
        // The backward's projections through transposed weights keep the boxes.
        let transposed = boxed.transposed();
        assert!(transposed.tma_weights && transposed.transposed_weights);
        assert_eq!(transposed.check(8), Ok(()));
    }
    // Their boxes run along the depth: stages of 32 are half a box, so they copy instead.
    let prefill = pick(&shape(4096, 8, 2, 14336)).with_tma(&shape(4096, 8, 2, 14336), false);
    let shallow = ExpertGemmConfig {
        output: GemmParams {
            stage_depth: 32,
            ..prefill.output
        },
        ..prefill
    };
    assert!(shallow.output.tma_weights && !shallow.transposed().tma_weights);
    // Prefill's 128 x 128 output tiles: the transposed projections take their A rows as boxes
    // too, in 8 planes.
    let deep = prefill.transposed();
    assert_eq!(
        (prefill.output.tile_rows, prefill.output.tile_cols),
        (128, 128)
    );
    assert!(deep.tma_rows && deep.tma_weights, "{deep:?}");
    assert_eq!((deep.warps_m, deep.warps_n), (2, 4));
    assert!(!shallow.transposed().tma_rows);
    let odd = shape(4096, 8, 2, 14332);
    let boxed = pick(&odd).with_tma(&odd, true);
    assert!(!boxed.input.tma_weights && !boxed.output.tma_weights && !boxed.output.tma_rows);
}
