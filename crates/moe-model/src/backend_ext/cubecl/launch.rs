//! How every MoE operation runs on its kernels: the float types are ones the device computes in,
//! the first launch of each kernel is checked for errors the runtime reports later, and a kernel
//! that cannot run the input hands the operation to the tensor ops, which is said once.
//!
//! CubeCL 0.10 launches asynchronously: a kernel that fails to compile or asks for more shared
//! memory than the device has returns `Ok` at launch, leaves its output buffer as it was (stale
//! memory), and records the error on the stream until the next flush. A float type the device
//! cannot compute in is worse: the compiler panics on the device's thread, which logs and goes
//! on. Neither may become a served result, so [`on_kernels`] refuses the type before launching
//! and flushes the stream after the first launch of each kernel to read its report.

use std::collections::HashSet;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Mutex;

use burn::tensor::DType;
use burn_cubecl::CubeRuntime;
use cubecl::features::TypeUsage;
use cubecl::ir::{ElemType, FloatKind, StorageType};
use cubecl::prelude::ComputeClient;
use cubecl::server::ServerError;
use moe_kernels::KernelError;

use crate::backend_ext::note_fallback;

/// Evaluates `$body` with the type `$K` set to the kernel element of the float `$dtype` (f32,
/// f16, bf16), or `$other` for a dtype the kernels do not take.
macro_rules! with_float_kernel {
    ($dtype:expr, $K:ident => $body:expr, else $other:expr) => {
        match $dtype {
            burn::tensor::DType::F32 => {
                type $K = f32;
                $body
            }
            burn::tensor::DType::F16 => {
                type $K = burn::tensor::f16;
                $body
            }
            burn::tensor::DType::BF16 => {
                type $K = burn::tensor::bf16;
                $body
            }
            _ => $other,
        }
    };
}
pub(super) use with_float_kernel;

/// What identifies one compiled kernel of an operation: the float types and sizes it was
/// launched with (the size rule picks its tiles from the sizes).
pub(super) struct KernelKey<'a> {
    /// The float types of the operands and outputs.
    pub dtypes: &'a [DType],
    /// The sizes the launch depends on.
    pub sizes: &'a [usize],
}

/// The kernels already launched once and checked, by a hash of runtime, operation and key.
static CHECKED: Mutex<Option<HashSet<u64>>> = Mutex::new(None);

/// Runs `op` through `launch` (its kernels); on an input they do not support, or an error the
/// runtime reports for the first launch of this `key`, says so once and returns `fallback()`.
///
/// # Panics
/// On a float type of `key` the device cannot compute in (the tensor ops could not either: the
/// caller chose a type this device lacks), and on an invalid input (a bug of the layer).
pub(super) fn on_kernels<R: CubeRuntime, T>(
    op: &'static str,
    client: &ComputeClient<R>,
    key: KernelKey<'_>,
    launch: impl FnOnce() -> Result<T, KernelError>,
    fallback: impl FnOnce() -> T,
) -> T {
    if let Some(dtype) = key
        .dtypes
        .iter()
        .find(|dtype| !computes_in(client, **dtype))
    {
        panic!(
            "MoE {op}: this {} device cannot compute in {dtype:?} (choose a float type it has)",
            R::name(client)
        );
    }
    match launch().and_then(|output| checked_first_launch::<R>(op, client, &key).map(|()| output)) {
        Ok(output) => output,
        Err(KernelError::Unsupported(reason)) => {
            note_fallback(op, reason);
            fallback()
        }
        Err(KernelError::Invalid(error)) => panic!("MoE {op} kernel got invalid input: {error}"),
    }
}

/// After the first launch of `op` with `key` in this process, flushes the stream and turns an
/// error the runtime recorded (compilation, resources) into `Unsupported`; later launches of the
/// same kernel cannot fail that way and are not flushed.
fn checked_first_launch<R: CubeRuntime>(
    op: &'static str,
    client: &ComputeClient<R>,
    key: &KernelKey<'_>,
) -> Result<(), KernelError> {
    let mut hasher = DefaultHasher::new();
    (R::name(client), op, key.dtypes, key.sizes).hash(&mut hasher);
    let id = hasher.finish();
    let mut checked = CHECKED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if checked.get_or_insert_with(HashSet::new).contains(&id) {
        return Ok(());
    }
    client.flush().map_err(|error| {
        KernelError::Unsupported(format!("the device refused it: {}", summary(&error)))
    })?;
    checked.get_or_insert_with(HashSet::new).insert(id);
    Ok(())
}

/// A runtime error in one line, without its backtraces.
fn summary(error: &ServerError) -> String {
    let text = error.to_string();
    let text = text.split("Backtrace").next().unwrap_or_default();
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Whether the device does arithmetic in the float `dtype` (lavapipe's WGSL has no bf16, for
/// one). A dtype no kernel takes passes: the kernels refuse it themselves.
fn computes_in<R: CubeRuntime>(client: &ComputeClient<R>, dtype: DType) -> bool {
    let kind = match dtype {
        DType::F32 => FloatKind::F32,
        DType::F16 => FloatKind::F16,
        DType::BF16 => FloatKind::BF16,
        _ => return true,
    };
    client
        .properties()
        .type_usage(StorageType::Scalar(ElemType::Float(kind)))
        .contains(TypeUsage::Arithmetic)
}

/// `Unsupported` when an operand of `others` (name, float type) differs from `first`'s type: the
/// kernels take one float type for all their operands.
pub(super) fn same_float_type(
    first: (&str, DType),
    others: &[(&str, DType)],
) -> Result<(), KernelError> {
    match others.iter().find(|(_, dtype)| *dtype != first.1) {
        Some((name, dtype)) => Err(KernelError::Unsupported(format!(
            "mixed float types: {} {:?}, {name} {dtype:?}",
            first.0, first.1
        ))),
        None => Ok(()),
    }
}

/// The error for a float tensor whose dtype no kernel takes (e.g. f64).
pub(super) fn unsupported_dtype(name: &str, dtype: DType) -> KernelError {
    KernelError::Unsupported(format!(
        "{name} in {dtype:?} (the kernels take f32, f16, bf16)"
    ))
}
