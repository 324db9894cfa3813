//! Routing-stage cases: route, dispatch, route+dispatch and combine, kernels against Burn tensor
//! ops on the same backend (tensor-op route on the device; dispatch planned on the host, which is
//! what the MoE layer does without kernels).

use std::time::Duration;

use burn::tensor::{DType, Tensor, TensorData};
use burn_cubecl::{CubeBackend, CubeRuntime};
use cubecl::prelude::*;
use moe_kernels::RoutingPolicy;
use moe_kernels::combine::{CombineShape, combine};
use moe_kernels::dispatch::dispatch;
use moe_kernels::dispatch::reference::max_tiles;
use moe_kernels::route::route;
use moe_kernels::stage::route_and_dispatch;
use moe_model::backend_ext::{DEFAULT_TILE_ROWS, tensor_ops};
use moe_model::{ExpertRows, MoeBackend};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::device_time::{Spinner, wall_and_device_time};
use super::{BenchRow, time_per_call};

type Cube<R> = CubeBackend<R, f32, i32, u32>;

/// One benchmark shape.
pub struct Case {
    tokens: usize,
    experts: usize,
    policy: RoutingPolicy,
}

impl Case {
    /// How the table names the case, e.g. `T=4096 E=8 threshold(tau=0.5)`.
    pub fn label(&self) -> String {
        format!("T={} E={} {}", self.tokens, self.experts, self.policy)
    }
}

/// The routing cases: all of them, or fewer and smaller if `quick`.
pub fn cases(quick: bool) -> Vec<Case> {
    let threshold = RoutingPolicy::Threshold { tau: 0.5 };
    let top = |k| RoutingPolicy::TopK { k };
    let case = |tokens, experts, policy| Case {
        tokens,
        experts,
        policy,
    };
    if quick {
        return vec![
            case(32, 8, threshold),
            case(4096, 8, threshold),
            case(4096, 64, top(2)),
        ];
    }
    vec![
        case(1, 8, threshold),
        case(32, 8, threshold),
        case(32, 64, top(2)),
        case(1, 256, top(8)),
        case(32, 256, top(8)),
        case(4096, 8, threshold),
        case(4096, 64, top(2)),
        case(65536, 8, threshold),
        case(65536, 64, threshold),
        case(65536, 64, top(8)),
        case(16384, 256, top(8)),
    ]
}

/// Measures `cases`; `device` is the Burn device of the same runtime as `client`; `quick` picks
/// a smaller model width for combine.
pub fn run<R: CubeRuntime>(
    client: &ComputeClient<R>,
    spinner: &Spinner<R>,
    device: &R::Device,
    cases: Vec<Case>,
    quick: bool,
) -> Vec<BenchRow> {
    let d_model = if quick { 256 } else { 2048 };
    let mut rows = Vec::new();
    for case in cases {
        let label = case.label();
        let Case {
            tokens,
            experts,
            policy,
        } = case;
        let slots = policy.max_slots();
        let pairs = tokens * slots;
        let work = tokens * experts;
        let kernel_iters = if work <= 100_000 {
            200
        } else if work <= 2_000_000 {
            50
        } else {
            20
        };
        let baseline_iters = if work <= 100_000 { 20 } else { 5 };

        let mut rng = StdRng::seed_from_u64(tokens as u64 ^ experts as u64);
        let host_logits: Vec<f32> = (0..work).map(|_| rng.random_range(-4.0..4.0)).collect();
        let logits = client.create_from_slice(f32::as_bytes(&host_logits));
        let logits_tensor = Tensor::<Cube<R>, 2>::from_data(
            TensorData::new(host_logits, [tokens, experts]),
            (device, DType::F32),
        );

        let route_kernel =
            || route::<R, f32, i32>(client, &logits, tokens, experts, &policy).expect("valid case");
        let routed = route_kernel();
        let route_time = wall_and_device_time(spinner, kernel_iters, || drop(route_kernel()));
        let route_ops = time_per_call(client, baseline_iters, || {
            drop(tensor_ops::route(logits_tensor.clone(), &policy))
        });

        let dispatch_kernel = || {
            dispatch::<R, i32>(
                client,
                &routed.expert_ids,
                pairs,
                experts,
                DEFAULT_TILE_ROWS,
            )
            .expect("valid case")
        };
        let dispatch_time = wall_and_device_time(spinner, kernel_iters, || drop(dispatch_kernel()));
        let routing = tensor_ops::route(logits_tensor.clone(), &policy);
        let ids = routing.expert_ids.clone();
        let dispatch_ops = time_per_call(client, baseline_iters, || {
            drop(tensor_ops::dispatch(
                ids.clone(),
                experts,
                DEFAULT_TILE_ROWS,
            ))
        });

        let stage_time = wall_and_device_time(spinner, kernel_iters, || {
            drop(
                route_and_dispatch::<R, f32, i32>(
                    client,
                    &logits,
                    tokens,
                    experts,
                    &policy,
                    DEFAULT_TILE_ROWS,
                )
                .expect("valid case"),
            )
        });
        let stage_ops = time_per_call(client, baseline_iters, || {
            let routing = tensor_ops::route(logits_tensor.clone(), &policy);
            drop(tensor_ops::dispatch(
                routing.expert_ids,
                experts,
                DEFAULT_TILE_ROWS,
            ));
        });

        let route_bytes = work * 4 + pairs * 8 + tokens * 4;
        let plan_bytes = (experts + 1) * 4
            + 2 * pairs * 4
            + max_tiles(pairs, experts, DEFAULT_TILE_ROWS) * 8
            + 4;
        let mut row = |op, case: String, (wall, device), floor_bytes, tensor_ops: Duration| {
            rows.push(BenchRow {
                op,
                case,
                kernel_wall: wall,
                kernel_device: device,
                floor_bytes,
                tensor_ops,
            });
        };
        row("route", label.clone(), route_time, route_bytes, route_ops);
        row(
            "dispatch",
            label.clone(),
            dispatch_time,
            pairs * 4 + plan_bytes,
            dispatch_ops,
        );
        row(
            "route+dispatch",
            label.clone(),
            stage_time,
            route_bytes + plan_bytes,
            stage_ops,
        );

        // Combine: random expert outputs for the routed rows, weights and rows from the kernels.
        let plan = dispatch_kernel();
        let offsets = client
            .read_one(plan.expert_offsets.clone())
            .expect("read offsets");
        let routed_rows = *i32::from_bytes(&offsets).last().expect("E + 1 offsets") as usize;
        let expert_rows = Tensor::<Cube<R>, 2>::random(
            [routed_rows, d_model],
            burn::tensor::Distribution::Default,
            (device, DType::F32),
        );
        let rows_handle = expert_rows.clone().into_primitive().tensor().handle;
        let shape = CombineShape {
            num_tokens: tokens,
            slots,
            num_rows: routed_rows,
            d_model,
            splits: 1,
        };
        let combine_time = wall_and_device_time(spinner, kernel_iters, || {
            drop(
                combine::<R, f32, f32, i32>(
                    client,
                    &rows_handle,
                    &routed.weights,
                    &plan.row_of_pair,
                    shape,
                )
                .expect("valid case"),
            )
        });
        let tensor_plan = <Cube<R> as MoeBackend>::moe_dispatch(
            routing.expert_ids.clone(),
            experts,
            DEFAULT_TILE_ROWS,
        );
        let weights = routing.weights.clone();
        let blocks = expert_rows.clone().unsqueeze_dim(0);
        let combine_ops = time_per_call(client, baseline_iters, || {
            drop(tensor_ops::combine(
                ExpertRows {
                    blocks: blocks.clone(),
                },
                weights.clone(),
                &tensor_plan,
            ))
        });
        row(
            "combine",
            format!("{label} d={d_model}"),
            combine_time,
            routed_rows * d_model * 4 + pairs * 8 + tokens * d_model * 4,
            combine_ops,
        );
    }
    rows
}
