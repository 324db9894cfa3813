//! Times every tile candidate of the grouped GEMMs on the benchmark's shapes (CUDA, bf16) and
//! prints a table per shape: how the size rules of `grouped_gemm/config.rs` and
//! `expert_grad/params.rs` were chosen.
//!
//! `cargo run --release -p moe-kernels --example tune_grouped_gemm [-- <shape filters>...
//! [--only <candidate text>[|<candidate text>...]] [--ops <op>,...]]`
//!
//! Ops: `gemm1`, `gemm2` (the forward's projections), `pre` (the training forward's
//! pre-activations), `dhidden` (`d_rows @ w_out^T` with the identity epilogue and with the fused
//! SwiGLU backward, same tiles: what the fusion costs inside the GEMM), `dtokens`
//! (`d_pre @ w_in^T`; both transposed projections at the rule's tiles, then with TMA weight
//! boxes toggled, then every candidate's output tiles made transposed), `wgrad_in`,
//! `wgrad_out` (the weight gradients' candidates): with the forward's `gemm2` at the rule's
//! tiles, every GEMM of a training step. Without `--ops`: all.

use std::time::Duration;

use cubecl::cuda::{CudaDevice, CudaRuntime};
use cubecl::prelude::*;
use half::bf16;
use moe_kernels::Activation;
use moe_kernels::dispatch::DispatchOnDevice;
use moe_kernels::dispatch::reference::plan;
use moe_kernels::expert_grad::{WeightGradParams, WeightGradShape, expert_weight_grad};
use moe_kernels::grouped_gemm::{
    Epilogue, ExpertGemmConfig, ExpertOperands, ExpertShape, GemmParams, device_config,
    expert_matmul, input_projection, multiprocessors, output_projection,
};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

type R = CudaRuntime;

/// `(name, tokens, d, F, E, slots, mean k)` of the shapes tuned.
const SHAPES: [(&str, usize, usize, usize, usize, usize, f64); 6] = [
    ("mixtral T=4096 mean-k 1.3", 4096, 4096, 14336, 8, 2, 1.3),
    ("fine-grained T=16384 top-2", 16384, 2048, 1408, 64, 2, 2.0),
    ("deepseek T=4096 top-8", 4096, 7168, 2048, 256, 8, 8.0),
    ("mixtral T=1 top-2", 1, 4096, 14336, 8, 2, 2.0),
    ("mixtral T=16 mean-k 1.3", 16, 4096, 14336, 8, 2, 1.3),
    ("mixtral T=128 mean-k 1.3", 128, 4096, 14336, 8, 2, 1.3),
];

/// What `--ops` picks from (all of it by default).
const OPS: [&str; 7] = [
    "gemm1",
    "gemm2",
    "pre",
    "dhidden",
    "dtokens",
    "wgrad_in",
    "wgrad_out",
];

/// Removes `flag <value>` from `args` and returns the value.
fn take_flag(args: &mut Vec<String>, flag: &str) -> Option<String> {
    let at = args.iter().position(|a| a == flag)?;
    let value = (at + 1 < args.len()).then(|| args.remove(at + 1));
    args.remove(at);
    value
}

fn main() {
    let mut filters: Vec<String> = std::env::args().skip(1).collect();
    // `--only <text>|<text>...`: time only the candidates whose description contains one of them.
    let only = take_flag(&mut filters, "--only").unwrap_or_default();
    let picked = |description: &str| only.split('|').any(|text| description.contains(text));
    let ops: Vec<String> = match take_flag(&mut filters, "--ops") {
        Some(list) => list.split(',').map(str::to_owned).collect(),
        None => OPS.map(str::to_owned).to_vec(),
    };
    if let Some(unknown) = ops.iter().find(|op| !OPS.contains(&op.as_str())) {
        eprintln!("unknown op `{unknown}`: one of {}", OPS.join(", "));
        std::process::exit(2);
    }
    let wanted = |op: &str| ops.iter().any(|o| o == op);
    let client = R::client(&CudaDevice::default());
    let sms = multiprocessors(&client);
    for &(name, tokens, d_model, width, experts, slots, mean_k) in &SHAPES {
        if !filters.is_empty() && !filters.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        let shape = ExpertShape {
            num_tokens: tokens,
            slots,
            num_experts: experts,
            d_model,
            width,
        };
        let ids = expert_ids(tokens, experts, slots, mean_k);
        let rows = ids.iter().filter(|&&id| id >= 0).count();
        let mut rng = StdRng::seed_from_u64(7);
        let mut random = |len: usize| {
            // One random block repeated: timing does not depend on the values, and drawing
            // gigabytes of them one by one took minutes on the host (DeepSeek's weights).
            let block: Vec<bf16> = (0..len.min(1 << 20))
                .map(|_| bf16::from_f32(rng.random_range(-1.0..1.0)))
                .collect();
            let values: Vec<bf16> = block.iter().copied().cycle().take(len).collect();
            client.create_from_slice(bf16::as_bytes(&values))
        };
        let x = random(tokens * d_model);
        let w_in = random(experts * d_model * 2 * width);
        let w_out = random(experts * width * d_model);
        let hidden = random(tokens * slots * width);
        println!("\n{name}: {rows} routed rows");
        let (mut inputs, mut outputs) = (Vec::new(), Vec::new());
        let candidates = ExpertGemmConfig::candidates(&shape, Activation::SwiGlu, sms);
        for config in &candidates {
            let plan = upload_plan(&client, &ids, experts, config.tile_rows());
            if wanted("gemm1")
                && !inputs.contains(&config.input)
                && picked(&describe(&config.input))
            {
                inputs.push(config.input);
                let time = time(&client, || {
                    input_projection::<R, bf16, i32>(
                        &client,
                        &x,
                        &w_in,
                        &plan,
                        shape,
                        &config.input,
                    )
                    .map(drop)
                });
                report(
                    "gemm1",
                    &config.input,
                    time,
                    2.0 * (rows * d_model * 2 * width) as f64,
                );
            }
            if wanted("gemm2")
                && !outputs.contains(&config.output)
                && picked(&describe(&config.output))
            {
                outputs.push(config.output);
                let time = time(&client, || {
                    output_projection::<R, bf16, i32>(
                        &client,
                        &hidden,
                        &w_out,
                        &plan,
                        shape,
                        &config.output,
                    )
                    .map(drop)
                });
                report(
                    "gemm2",
                    &config.output,
                    time,
                    2.0 * (rows * width * d_model) as f64,
                );
            }
        }
        // What the layers run on this device (TMA weight boxes included).
        let chosen = device_config::<R, bf16>(&client, &shape, Activation::SwiGlu);
        let plan = upload_plan(&client, &ids, experts, chosen.tile_rows());
        let pairs = tokens * slots;
        let out = |columns: usize| client.empty(pairs * columns * size_of::<bf16>());
        // Times one grouped GEMM of the training step and prints its row.
        let time_matmul = |op: &str, operands: ExpertOperands, params: &GemmParams, flops| {
            let time = time(&client, || {
                expert_matmul::<R, bf16, bf16, i32>(&client, &operands, &plan, shape, params)
            });
            report(op, params, time, flops);
        };
        if wanted("pre") {
            let params = chosen.pre_activation();
            let output = out(2 * width);
            let operands = ExpertOperands {
                a: &x,
                a_rows: tokens,
                weights: &w_in,
                pre: None,
                depth: d_model,
                width: 2 * width,
                output: &output,
            };
            let flops = 2.0 * (rows * d_model * 2 * width) as f64;
            time_matmul("pre", operands, &params, flops);
        }
        // The projections through transposed weights: the rule's tiles, then the same with the
        // weight stages copied by the units instead of TMA boxes (or the other way round), then
        // every candidate's output tiles (with the rule's tile rows, so the same plan) made
        // transposed; those `--only` picks.
        let transposed: Vec<GemmParams> = {
            let rule = chosen.transposed();
            let other = GemmParams {
                tma_weights: !rule.tma_weights,
                ..rule
            };
            let others = candidates
                .iter()
                .filter(|c| c.tile_rows() == chosen.tile_rows())
                .map(|c| c.transposed())
                .filter(|p| picked(&describe(p)));
            let mut all: Vec<GemmParams> = Vec::new();
            for params in [rule, other].into_iter().chain(others) {
                if params.check(8).is_ok() && !all.contains(&params) {
                    all.push(params);
                }
            }
            all
        };
        if wanted("dhidden") {
            // `d_rows @ w_out^T` (`w_out` is `[E, F, d]`: transposed, depth d), then the same
            // tiles with the SwiGLU backward reading the pre-activations.
            let d_rows = random(pairs * d_model);
            let pre = random(pairs * 2 * width);
            for (&tiles, epilogue) in transposed
                .iter()
                .flat_map(|t| [(t, Epilogue::Identity), (t, Epilogue::SwiGluBackward)])
            {
                let params = GemmParams { epilogue, ..tiles };
                let fused = epilogue == Epilogue::SwiGluBackward;
                let output = out(width * epilogue.output_groups());
                let operands = ExpertOperands {
                    a: &d_rows,
                    a_rows: pairs,
                    weights: &w_out,
                    pre: fused.then_some(&pre),
                    depth: d_model,
                    width,
                    output: &output,
                };
                let op = if fused { "dhidden+swiglu'" } else { "dhidden" };
                time_matmul(op, operands, &params, 2.0 * (rows * d_model * width) as f64);
            }
        }
        if wanted("dtokens") {
            // `d_pre @ w_in^T` (`w_in` is `[E, d, 2F]`: transposed, depth 2F, d columns).
            let d_pre = random(pairs * 2 * width);
            let output = out(d_model);
            for params in &transposed {
                let operands = ExpertOperands {
                    a: &d_pre,
                    a_rows: pairs,
                    weights: &w_in,
                    pre: None,
                    depth: 2 * width,
                    width: d_model,
                    output: &output,
                };
                let flops = 2.0 * (rows * d_model * 2 * width) as f64;
                time_matmul("dtokens", operands, params, flops);
            }
        }
        // dW_in = x_e^T dGU_e (gathered token rows, [d, 2F]); dW_out = h_e^T dRows_e ([F, d]).
        for (op, gather, a_width, b_width) in [
            ("wgrad_in", true, d_model, 2 * width),
            ("wgrad_out", false, width, d_model),
        ] {
            if !wanted(op) {
                continue;
            }
            let grad_shape = WeightGradShape {
                num_tokens: tokens,
                slots,
                num_experts: experts,
                a_width,
                b_width,
            };
            let a = if gather {
                x.clone()
            } else {
                random(pairs * a_width)
            };
            let b = random(pairs * b_width);
            for params in WeightGradParams::candidates(&grad_shape, sms) {
                let tiles = describe_grad(&params);
                if !picked(&tiles) {
                    continue;
                }
                let time = time(&client, || {
                    expert_weight_grad::<R, bf16, i32>(
                        &client, &a, gather, &b, &plan, grad_shape, &params,
                    )
                    .map(drop)
                });
                print_row(op, &tiles, time, 2.0 * (rows * a_width * b_width) as f64);
            }
        }
    }
}

/// Synthetic routing: `mean_k - 1` of the tokens use two experts (top-2 shapes: all), the
/// others one; `slots` distinct experts per token for top-k shapes.
fn expert_ids(tokens: usize, experts: usize, slots: usize, mean_k: f64) -> Vec<i32> {
    let mut rng = StdRng::seed_from_u64(tokens as u64);
    let mut ids = Vec::with_capacity(tokens * slots);
    for _ in 0..tokens {
        let used = if slots == 2 {
            1 + usize::from(rng.random_range(0.0..1.0) < mean_k - 1.0)
        } else {
            slots
        };
        let mut chosen: Vec<i32> = Vec::new();
        while chosen.len() < used {
            let e = rng.random_range(0..experts) as i32;
            if !chosen.contains(&e) {
                chosen.push(e);
            }
        }
        chosen.resize(slots, -1);
        ids.extend(chosen);
    }
    ids
}

fn upload_plan(
    client: &ComputeClient<R>,
    ids: &[i32],
    experts: usize,
    tile_rows: usize,
) -> DispatchOnDevice {
    let plan = plan(ids, experts, tile_rows);
    let upload = |values: &[i32]| client.create_from_slice(i32::as_bytes(values));
    DispatchOnDevice {
        expert_offsets: upload(&plan.expert_offsets),
        routed_pairs: upload(&plan.routed_pairs),
        row_of_pair: upload(&plan.row_of_pair),
        tiles: upload(&plan.tiles.concat()),
        num_tiles: upload(&[plan.num_tiles]),
        num_pairs: ids.len(),
        num_experts: experts,
        tile_rows,
    }
}

/// Median device time of `work` after two warm-up calls, or the kernel's refusal.
fn time<E: std::fmt::Display>(
    client: &ComputeClient<R>,
    mut work: impl FnMut() -> Result<(), E> + Send,
) -> Result<Duration, String> {
    for _ in 0..2 {
        work().map_err(|e| e.to_string())?;
    }
    let mut samples: Vec<Duration> = (0..7)
        .map(|_| {
            let (_, duration) = client
                .profile(|| work().map_err(|e| e.to_string()), "tune")
                .expect("profile");
            cubecl::future::block_on(duration.resolve()).duration()
        })
        .collect();
    samples.sort();
    Ok(samples[samples.len() / 2])
}

/// The knobs of one candidate in one line.
fn describe(params: &GemmParams) -> String {
    format!(
        "{}x{}x{} planes {}x{} split {} {:?}{}{}",
        params.tile_rows,
        params.tile_cols,
        params.stage_depth,
        params.warps_m,
        params.warps_n,
        params.split_k,
        params.pipeline,
        if params.tma_weights { " tma" } else { "" },
        if params.tma_rows { " rows" } else { "" }
    )
}

/// The knobs of one weight-gradient candidate in one line.
fn describe_grad(params: &WeightGradParams) -> String {
    format!(
        "{}x{} rows {} planes {}x{} {:?}",
        params.tile_m,
        params.tile_n,
        params.stage_rows,
        params.warps_m,
        params.warps_n,
        params.pipeline
    )
}

fn report(op: &str, params: &GemmParams, time: Result<Duration, String>, flops: f64) {
    print_row(op, &describe(params), time, flops);
}

fn print_row(op: &str, tiles: &str, time: Result<Duration, String>, flops: f64) {
    match time {
        Ok(time) => println!(
            "  {op} {tiles:<64} {:>10.1} us {:>7.1} TFLOP/s",
            time.as_secs_f64() * 1e6,
            flops / time.as_secs_f64() / 1e12
        ),
        Err(reason) => println!("  {op} {tiles:<64} skipped: {reason}"),
    }
}
