//! Kernels the runtime refuses never serve a result: `on_kernels` on wgpu (lavapipe in CI) with a
//! float type the device lacks and with a kernel the runtime refuses at its first launch.

use burn::tensor::DType;
use burn_cubecl::CubeBackend;
use cubecl::prelude::*;
use cubecl::wgpu::{WgpuDevice, WgpuRuntime};
use moe_kernels::RoutingPolicy;

use super::launch::{KernelKey, on_kernels};
use crate::backend_ext::{MoeBackend, take_fallbacks};
use crate::test_support::float_tensor_on;

type Wgpu = CubeBackend<WgpuRuntime, f32, i32, u32>;

/// Asks for far more shared memory than any device has (4 MiB), so the runtime refuses it.
#[cube(launch_unchecked)]
fn oversized_shared_kernel(output: &mut Array<f32>) {
    let mut shared = SharedMemory::<f32>::new(1usize << 20);
    shared[UNIT_POS as usize] = 1.0;
    sync_cube();
    output[UNIT_POS as usize] = shared[(UNIT_POS as usize + 1) % 32];
}

#[test]
fn a_kernel_the_runtime_refuses_falls_back_and_says_so() {
    let client = WgpuRuntime::client(&WgpuDevice::default());
    let output = client.empty(32 * size_of::<f32>());
    take_fallbacks();
    let served = on_kernels(
        "refused test kernel",
        &client,
        KernelKey {
            dtypes: &[],
            sizes: &[32],
        },
        || {
            // SAFETY: 32 units write the 32 floats of `output`.
            unsafe {
                oversized_shared_kernel::launch_unchecked::<WgpuRuntime>(
                    &client,
                    CubeCount::Static(1, 1, 1),
                    CubeDim::new_1d(32),
                    ArrayArg::from_raw_parts(output.clone(), 32),
                );
            }
            Ok("the kernel's output")
        },
        || "the fallback's output",
    );
    assert_eq!(served, "the fallback's output");
    let fallbacks = take_fallbacks();
    assert_eq!(fallbacks.len(), 1, "{fallbacks:?}");
    assert_eq!(fallbacks[0].op, "refused test kernel");
    assert!(
        fallbacks[0].reason.contains("refused"),
        "the note says why: {}",
        fallbacks[0].reason
    );
}

#[test]
fn a_float_type_the_device_lacks_is_an_error_not_a_result() {
    let device = WgpuDevice::default();
    let client = WgpuRuntime::client(&device);
    let bf16_arithmetic = client
        .properties()
        .type_usage(cubecl::ir::StorageType::Scalar(
            cubecl::ir::ElemType::Float(cubecl::ir::FloatKind::BF16),
        ))
        .contains(cubecl::features::TypeUsage::Arithmetic);
    if bf16_arithmetic {
        println!("this wgpu device computes in bf16: there is no missing type to refuse");
        return;
    }
    let values: Vec<f32> = (0..12).map(|i| 0.25 * i as f32 - 1.3).collect();
    let logits = float_tensor_on::<Wgpu, 2>(&values, [3, 4], DType::BF16, &device);
    assert_eq!(logits.dtype(), DType::BF16);
    let refused = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        Wgpu::moe_route(logits, &RoutingPolicy::TopK { k: 2 });
    }));
    let message = refused.expect_err("routing bf16 logits on a device without bf16 must not serve");
    let message = message
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default();
    assert!(
        message.contains("cannot compute in BF16"),
        "the panic names the type: {message}"
    );
}
