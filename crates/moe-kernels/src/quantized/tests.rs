//! The quantized grouped GEMM against the f64 reference (the grouped GEMM's specification on the
//! weights dequantized in f64), on every runtime, in every format: both projections, SwiGLU and
//! GELU, every routing policy the layer decides per token, skewed and empty experts, d and F off
//! the 128 blocks, T from 1 to 16384.

use cubecl::prelude::*;

use super::reference::{dequantize, quantize};
use super::{
    QuantFormat, QuantGemmParams, QuantLayout, QuantizedMatrix, QuantizedOnDevice,
    QuantizedOperands, quantized_input_projection, quantized_matmul,
};
use crate::dispatch::reference::{DispatchPlan, plan};
use crate::grouped_gemm::reference::{
    input_projection as reference_input, output_projection as reference_output,
};
use crate::grouped_gemm::{Epilogue, ExpertShape};
use crate::route::reference::route;
use crate::testgen::{download, random_f32, relative_error, rng, upload, upload_plan};
use crate::{Activation, KernelError, RoutingPolicy};

/// Poison for output buffers, far from any output of order one.
const POISON: f32 = -1536.0;

/// The f32 kernel against the f64 reference of the same dequantized weights: only f32 rounding
/// separates them.
const TOLERANCE: f64 = 1e-5;

/// One test batch: routing, plan, activations and both projections quantized.
struct Batch {
    shape: ExpertShape,
    activation: Activation,
    plan: DispatchPlan,
    x: Vec<f32>,
    w_in: QuantizedMatrix,
    w_out: QuantizedMatrix,
}

/// One batch's sizes and routing: `(tokens, experts, d, F, policy, activation, skew)`.
type Case = (usize, usize, usize, usize, RoutingPolicy, Activation, f32);

impl Batch {
    /// Routes random logits with `policy` (biased towards expert 0 by `skew`), plans tiles of
    /// `tile_rows` rows, draws operands scaled so outputs are of order one and quantizes the
    /// weights to `format`.
    fn new(seed: u64, case: Case, format: QuantFormat, tile_rows: usize) -> Self {
        let (num_tokens, num_experts, d_model, width, policy, activation, skew) = case;
        let mut draw = rng(seed);
        let mut logits = random_f32(&mut draw, num_tokens * num_experts, 2.0);
        logits
            .iter_mut()
            .step_by(num_experts)
            .for_each(|l| *l += skew);
        let routed = route(&logits, num_experts, &policy);
        let columns = activation.input_columns(width);
        let x = random_f32(&mut draw, num_tokens * d_model, 1.0);
        let mut quantized = |depth: usize, columns: usize| {
            let layout = QuantLayout {
                format,
                experts: num_experts,
                depth,
                columns,
            };
            let scale = (3.0 / depth as f32).sqrt();
            quantize(&random_f32(&mut draw, layout.num_weights(), scale), layout)
        };
        let w_in = quantized(d_model, columns);
        let w_out = quantized(width, d_model);
        Self {
            shape: ExpertShape {
                num_tokens,
                slots: routed.slots,
                num_experts,
                d_model,
                width,
            },
            activation,
            plan: plan(&routed.expert_ids, num_experts, tile_rows),
            x,
            w_in,
            w_out,
        }
    }
}

/// The bytes and scales of `matrix` on the device: (packed bytes, scales).
fn upload_matrix<R: Runtime>(
    client: &ComputeClient<R>,
    matrix: &QuantizedMatrix,
) -> (cubecl::server::Handle, cubecl::server::Handle) {
    (
        upload(client, &matrix.packed()),
        upload(client, matrix.scales()),
    )
}

/// Runs one projection of `batch` into a poisoned `[P, width]` buffer and returns it.
fn run_projection<R: Runtime>(
    client: &ComputeClient<R>,
    batch: &Batch,
    a: &[f32],
    matrix: &QuantizedMatrix,
    width: usize,
    params: &QuantGemmParams,
) -> Result<Vec<f32>, KernelError> {
    let pairs = batch.shape.num_pairs();
    let (packed, scales) = upload_matrix(client, matrix);
    let output = upload(client, &vec![POISON; pairs * width]);
    let operands = QuantizedOperands {
        a: &upload(client, a),
        a_rows: a.len() / matrix.layout().depth,
        weights: QuantizedOnDevice {
            packed: &packed,
            scales: &scales,
            layout: matrix.layout(),
        },
        width,
        output: &output,
    };
    let plan = upload_plan(client, &batch.plan, pairs, batch.shape.num_experts);
    quantized_matmul::<R, f32, i32>(client, &operands, &plan, batch.shape, params)?;
    Ok(download::<R, f32>(client, output))
}

/// Both projections of `batch` against the reference: every routed row written and within
/// [`TOLERANCE`], no row past S touched. The second reads the kernel's hidden rows, so its check
/// is independent of the first's rounding.
fn check_projections<R: Runtime>(client: &ComputeClient<R>, batch: &Batch, context: &str) {
    let ExpertShape {
        d_model,
        width,
        slots,
        ..
    } = batch.shape;
    let rows = batch.plan.num_rows();
    let format = batch.w_in.layout().format;
    let context = format!(
        "{context} {format} {:?} tile_rows {}",
        batch.shape, batch.plan.tile_rows
    );
    let epilogue = match batch.activation {
        Activation::SwiGlu => Epilogue::SwiGlu,
        Activation::Gelu => Epilogue::Gelu,
    };
    let input = QuantGemmParams::new(batch.plan.tile_rows, epilogue, true, format);
    let hidden = run_projection(client, batch, &batch.x, &batch.w_in, width, &input)
        .unwrap_or_else(|e| panic!("{context}: {e}"));
    let want = reference_input(
        &batch.x,
        &dequantize(&batch.w_in),
        &batch.plan,
        slots,
        d_model,
        width,
        batch.activation,
    );
    assert_written_and_close(&hidden, &want, rows * width, &format!("{context} input"));

    let output = QuantGemmParams::new(batch.plan.tile_rows, Epilogue::Identity, false, format);
    let out = run_projection(client, batch, &hidden, &batch.w_out, d_model, &output)
        .unwrap_or_else(|e| panic!("{context}: {e}"));
    let want = reference_output(
        &hidden,
        &dequantize(&batch.w_out),
        &batch.plan,
        width,
        d_model,
    );
    assert_written_and_close(&out, &want, rows * d_model, &format!("{context} output"));
}

/// The first `written` values are finite and within [`TOLERANCE`] of `want`; the rest still hold
/// the poison.
fn assert_written_and_close(got: &[f32], want: &[f64], written: usize, context: &str) {
    assert_eq!(want.len(), written, "{context}: reference length");
    if let Some(i) = got[..written]
        .iter()
        .position(|v| !v.is_finite() || *v == POISON)
    {
        panic!("{context}: element {i} not written ({})", got[i]);
    }
    let error = relative_error(&got[..written], want);
    assert!(
        error < TOLERANCE,
        "{context}: relative error {error:.2e} >= {TOLERANCE:.0e}"
    );
    if let Some(i) = got[written..].iter().position(|&v| v != POISON) {
        panic!(
            "{context}: element {} past the routed rows written",
            written + i
        );
    }
}

/// Batches that cover the edge cases: T=1, d and F off the 128 blocks and off the tile
/// sizes, one expert taking every token (the others empty), E=64 with four tokens (most experts
/// empty), E=256 top-8, variable k (threshold, top-p).
fn cases() -> Vec<Case> {
    let top2 = RoutingPolicy::TopK { k: 2 };
    let threshold = RoutingPolicy::Threshold { tau: 0.3 };
    vec![
        (1, 8, 64, 96, top2, Activation::SwiGlu, 0.0),
        (
            5,
            4,
            30,
            45,
            RoutingPolicy::TopK { k: 1 },
            Activation::Gelu,
            0.0,
        ),
        (40, 6, 200, 136, threshold, Activation::SwiGlu, 0.0),
        (70, 4, 48, 24, top2, Activation::SwiGlu, 30.0),
        (4, 64, 40, 56, top2, Activation::Gelu, 0.0),
        (
            9,
            256,
            32,
            16,
            RoutingPolicy::TopK { k: 8 },
            Activation::SwiGlu,
            0.0,
        ),
        (
            150,
            8,
            130,
            260,
            RoutingPolicy::TopP { p: 0.7, max_k: 3 },
            Activation::SwiGlu,
            1.0,
        ),
    ]
}

/// Every case in every format, on the tile rows the size rule uses (16, 64, 144) and an odd one.
pub fn quantized_projections_match_reference<R: Runtime>(client: ComputeClient<R>) {
    for (seed, &case) in cases().iter().enumerate() {
        for format in QuantFormat::ALL {
            for tile_rows in [16, 64, 144, 7] {
                let batch = Batch::new(seed as u64, case, format, tile_rows);
                check_projections(&client, &batch, "quantized");
            }
        }
    }
}

/// A prefill batch of 16384 tokens, top-2 over 8 experts, in each format.
pub fn quantized_projections_match_reference_at_16384_tokens<R: Runtime>(client: ComputeClient<R>) {
    let case = (
        16384,
        8,
        48,
        40,
        RoutingPolicy::TopK { k: 2 },
        Activation::SwiGlu,
        0.5,
    );
    for format in QuantFormat::ALL {
        check_projections(&client, &Batch::new(3, case, format, 64), "T=16384");
    }
}

/// Weights whose layout does not fit the projection, scales or bytes too short for their
/// layout, and a plan of other tile rows are refused as invalid.
pub fn quantized_gemm_rejects_bad_arguments<R: Runtime>(client: ComputeClient<R>) {
    let case = (
        6,
        4,
        40,
        24,
        RoutingPolicy::TopK { k: 2 },
        Activation::SwiGlu,
        0.0,
    );
    let batch = Batch::new(1, case, QuantFormat::Fp8Block, 16);
    let pairs = batch.shape.num_pairs();
    let width = batch.shape.width;
    let params = QuantGemmParams::new(16, Epilogue::SwiGlu, true, QuantFormat::Fp8Block);
    let (packed, scales) = upload_matrix(&client, &batch.w_in);
    let short_scales = upload(&client, &batch.w_in.scales()[1..]);
    let short_packed = upload(&client, &batch.w_in.packed()[1..]);
    let x = upload(&client, &batch.x);
    let output = upload(&client, &vec![POISON; pairs * width]);
    let plan = upload_plan(&client, &batch.plan, pairs, batch.shape.num_experts);
    let layout = batch.w_in.layout();
    let attempt = |packed, scales, layout: QuantLayout, params: &QuantGemmParams| {
        let operands = QuantizedOperands {
            a: &x,
            a_rows: batch.shape.num_tokens,
            weights: QuantizedOnDevice {
                packed,
                scales,
                layout,
            },
            width,
            output: &output,
        };
        quantized_matmul::<R, f32, i32>(&client, &operands, &plan, batch.shape, params)
    };
    assert!(attempt(&packed, &scales, layout, &params).is_ok());
    let narrow = QuantLayout {
        columns: layout.columns - 1,
        ..layout
    };
    for (what, result) in [
        ("layout", attempt(&packed, &scales, narrow, &params)),
        ("scales", attempt(&packed, &short_scales, layout, &params)),
        ("bytes", attempt(&short_packed, &scales, layout, &params)),
        (
            "tile rows",
            attempt(
                &packed,
                &scales,
                layout,
                &QuantGemmParams {
                    tile_rows: 32,
                    ..params
                },
            ),
        ),
    ] {
        assert!(
            matches!(result, Err(KernelError::Invalid(_))),
            "{what}: {result:?}"
        );
    }
    // The allocating launcher takes the plan's tile rows and the activation's epilogue.
    let w_in = QuantizedOnDevice {
        packed: &packed,
        scales: &scales,
        layout,
    };
    let hidden = quantized_input_projection::<R, f32, i32>(
        &client,
        &x,
        w_in,
        &plan,
        batch.shape,
        Activation::SwiGlu,
    )
    .expect("valid arguments");
    let got = download::<R, f32>(&client, hidden);
    let want = reference_input(
        &batch.x,
        &dequantize(&batch.w_in),
        &batch.plan,
        batch.shape.slots,
        batch.shape.d_model,
        width,
        Activation::SwiGlu,
    );
    let rows = batch.plan.num_rows() * width;
    assert!(relative_error(&got[..rows], &want) < TOLERANCE);
}

crate::runtime_tests!(
    quantized_projections_match_reference,
    quantized_projections_match_reference_at_16384_tokens,
    quantized_gemm_rejects_bad_arguments,
);
