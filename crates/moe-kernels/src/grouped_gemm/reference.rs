//! Plain-Rust expert projections on the dispatch's rows: the specification of the grouped GEMM.

use crate::Activation;
use crate::dispatch::reference::DispatchPlan;

/// `hidden[row] = act(x[token of row] @ w_in[e])` for every routed row (expert e owns the row),
/// in f64. The weights are f32, or f64 (dequantized weights: the quantized GEMM's specification).
///
/// Shapes: `x` `[T, d]`, `w_in` `[E, d, input_columns(F)]` (SwiGLU: gate columns, then up);
/// returns `[S, F]` in dispatch order.
pub fn input_projection<W: Copy + Into<f64>>(
    x: &[f32],
    w_in: &[W],
    plan: &DispatchPlan,
    slots: usize,
    d_model: usize,
    width: usize,
    activation: Activation,
) -> Vec<f64> {
    let columns = activation.input_columns(width);
    pre_activation(x, w_in, plan, slots, d_model, columns)
        .chunks(columns)
        .flat_map(|row| activation.hidden_f64(row, width))
        .collect()
}

/// `pre[row] = x[token of row] @ w_in[e]` for every routed row, in f64: the input projection
/// before its activation. Returns `[S, columns]`.
pub fn pre_activation<W: Copy + Into<f64>>(
    x: &[f32],
    w_in: &[W],
    plan: &DispatchPlan,
    slots: usize,
    d_model: usize,
    columns: usize,
) -> Vec<f64> {
    let mut pre = Vec::with_capacity(plan.num_rows() * columns);
    for (expert, row) in rows_by_expert(plan) {
        let token = plan.routed_pairs[row] as usize / slots;
        let input = &x[token * d_model..(token + 1) * d_model];
        let weights = &w_in[expert * d_model * columns..(expert + 1) * d_model * columns];
        pre.extend(row_times_matrix(input, weights, columns));
    }
    pre
}

/// `out[row] = a[row] @ weights[e]^T` for every routed row, in f64: the backward's input
/// gradients through an expert's weights.
///
/// Shapes: `a` `[>= S, depth]` in dispatch order, `weights` `[E, width, depth]`; returns
/// `[S, width]`.
pub fn transposed_projection(
    a: &[f32],
    weights: &[f32],
    plan: &DispatchPlan,
    depth: usize,
    width: usize,
) -> Vec<f64> {
    let mut out = Vec::with_capacity(plan.num_rows() * width);
    for (expert, row) in rows_by_expert(plan) {
        let input = &a[row * depth..(row + 1) * depth];
        let matrix = &weights[expert * width * depth..(expert + 1) * width * depth];
        out.extend(matrix.chunks(depth).map(|column| {
            input
                .iter()
                .zip(column)
                .map(|(&x, &w)| x as f64 * w as f64)
                .sum::<f64>()
        }));
    }
    out
}

/// The gradient of every routed row's pre-activations from the gradient of its output row, in
/// f64: `d_hidden = d_rows[row] @ w_out[e]^T` through the SwiGLU's derivative at the row's
/// gate and up pre-activations `pre`. The derivative is taken by central differences of
/// [`Activation::hidden_f64`], so the specification is the forward's alone.
///
/// Shapes: `d_rows` `[>= S, d]` and `pre` `[>= S, 2F]` in dispatch order, `w_out` `[E, F, d]`;
/// returns `[S, 2F]` (gate gradients, then up gradients, per row).
pub fn swiglu_pre_gradient(
    d_rows: &[f32],
    w_out: &[f32],
    pre: &[f32],
    plan: &DispatchPlan,
    d_model: usize,
    width: usize,
) -> Vec<f64> {
    let hidden = |gate: f64, up: f64| Activation::SwiGlu.hidden_f64(&[gate, up], 1)[0];
    let step = 1e-6;
    let d_hidden = transposed_projection(d_rows, w_out, plan, d_model, width);
    let mut d_pre = Vec::with_capacity(d_hidden.len() * 2);
    for (row, d_h) in d_hidden.chunks(width).enumerate() {
        let pre = &pre[row * 2 * width..(row + 1) * 2 * width];
        let (gates, ups) = pre.split_at(width);
        let points = || gates.iter().zip(ups).zip(d_h);
        d_pre.extend(points().map(|((&g, &u), d)| {
            let (g, u) = (g as f64, u as f64);
            d * (hidden(g + step, u) - hidden(g - step, u)) / (2.0 * step)
        }));
        d_pre.extend(points().map(|((&g, &u), d)| {
            let (g, u) = (g as f64, u as f64);
            d * (hidden(g, u + step) - hidden(g, u - step)) / (2.0 * step)
        }));
    }
    d_pre
}

/// `rows[row] = hidden[row] @ w_out[e]` for every routed row, in f64 (weights f32 or f64).
///
/// Shapes: `hidden` `[S, F]` in dispatch order, `w_out` `[E, F, d]`; returns `[S, d]`.
pub fn output_projection<W: Copy + Into<f64>>(
    hidden: &[f32],
    w_out: &[W],
    plan: &DispatchPlan,
    width: usize,
    d_model: usize,
) -> Vec<f64> {
    let mut rows = Vec::with_capacity(plan.num_rows() * d_model);
    for (expert, row) in rows_by_expert(plan) {
        let input = &hidden[row * width..(row + 1) * width];
        let weights = &w_out[expert * width * d_model..(expert + 1) * width * d_model];
        rows.extend(row_times_matrix(input, weights, d_model));
    }
    rows
}

/// `(expert, row)` of every routed row, in row order.
fn rows_by_expert(plan: &DispatchPlan) -> impl Iterator<Item = (usize, usize)> + '_ {
    plan.expert_offsets
        .windows(2)
        .enumerate()
        .flat_map(|(expert, range)| {
            (range[0] as usize..range[1] as usize).map(move |r| (expert, r))
        })
}

/// `row @ matrix` for a row-major `[row.len(), columns]` matrix, in f64.
fn row_times_matrix<W: Copy + Into<f64>>(row: &[f32], matrix: &[W], columns: usize) -> Vec<f64> {
    let mut out = vec![0.0; columns];
    for (k, &value) in row.iter().enumerate() {
        let weights = &matrix[k * columns..(k + 1) * columns];
        for (acc, &w) in out.iter_mut().zip(weights) {
            *acc += value as f64 * w.into();
        }
    }
    out
}
