//! The activation kernel against `Activation::hidden_f64`, on every runtime and float type it
//! supports.

use cubecl::prelude::*;
use half::{bf16, f16};

use super::{ActivateShape, activate_rows, activate_rows_into};
use crate::Activation;
use crate::testgen::{
    HostFloat, download, for_half_types, random_f32, relative_error, rng, upload,
};

/// Activates `num_rows` random rows of which the offsets route `routed` (the last offset; more
/// than `num_rows` is clamped) into a NaN-poisoned buffer: the routed rows match the f64
/// reference, the others keep the poison.
fn check<R: Runtime, F: HostFloat>(
    client: &ComputeClient<R>,
    activation: Activation,
    num_rows: usize,
    width: usize,
    routed: usize,
    seed: u64,
) {
    let columns = activation.input_columns(width);
    let pre: Vec<F> = random_f32(&mut rng(seed), num_rows * columns, 4.0)
        .into_iter()
        .map(F::from_f32)
        .collect();
    let offsets = [0, routed / 3, routed / 2, routed.saturating_sub(1), routed].map(|o| o as i32);
    let hidden = upload(client, &vec![F::from_f32(f32::NAN); num_rows * width]);
    let shape = ActivateShape {
        num_rows,
        width,
        num_experts: offsets.len() - 1,
    };
    activate_rows_into::<R, F, i32>(
        client,
        &upload(client, &pre),
        &upload(client, &offsets),
        &hidden,
        shape,
        activation,
    )
    .unwrap();
    let got: Vec<f32> = download::<R, F>(client, hidden)
        .into_iter()
        .map(F::to_host)
        .collect();
    let written = routed.min(num_rows);
    let want: Vec<f64> = pre
        .chunks(columns)
        .take(written)
        .flat_map(|row| {
            let row: Vec<f64> = row.iter().map(|&v| v.to_host() as f64).collect();
            activation.hidden_f64(&row, width)
        })
        .collect();
    let context = format!(
        "{activation:?} {} P={num_rows} F={width} S={routed}",
        std::any::type_name::<F>()
    );
    let error = relative_error(&got[..written * width], &want);
    assert!(
        error < F::TOLERANCE,
        "{context}: relative error {error:.2e}"
    );
    assert!(
        got[written * width..].iter().all(|v| v.is_nan()),
        "{context}: a row past S was written"
    );
}

/// Both activations on rows off the vector and cube sizes, S below P, S = P, S = 1, an offset
/// past P (clamped), and more values than one grid covers (grid-stride loop).
fn check_type<R: Runtime, F: HostFloat>(client: &ComputeClient<R>) {
    for (seed, activation) in [Activation::SwiGlu, Activation::Gelu]
        .into_iter()
        .enumerate()
    {
        let seed = seed as u64 * 10;
        check::<R, F>(client, activation, 37, 45, 23, seed);
        check::<R, F>(client, activation, 16, 64, 16, seed + 1);
        check::<R, F>(client, activation, 9, 3, 1, seed + 2);
        check::<R, F>(client, activation, 12, 8, 40, seed + 3);
    }
    // 66 000 x 256 hidden values: more than 65 535 cubes of 256 units.
    check::<R, F>(client, Activation::Gelu, 66_000, 256, 65_900, 7);
}

/// f32 on every runtime.
pub fn activation_matches_reference<R: Runtime>(client: ComputeClient<R>) {
    check_type::<R, f32>(&client);
}

/// bf16 and f16 where the device has them, else skipped.
pub fn activation_matches_reference_in_bf16_and_f16<R: Runtime>(client: ComputeClient<R>) {
    for_half_types(&client, check_type::<R, bf16>, check_type::<R, f16>);
}

/// Bad sizes and short buffers are errors, not launches.
pub fn activation_rejects_bad_arguments<R: Runtime>(client: ComputeClient<R>) {
    let buffer = upload(&client, &[0.0f32; 8]);
    let offsets = upload(&client, &[0i32, 2]);
    let run = |shape, activation| {
        activate_rows::<R, f32, i32>(&client, &buffer, &offsets, shape, activation)
            .unwrap_err()
            .to_string()
    };
    let shape = ActivateShape {
        num_rows: 2,
        width: 2,
        num_experts: 1,
    };
    assert!(run(ActivateShape { width: 0, ..shape }, Activation::Gelu).contains("width = 0"));
    assert!(
        run(
            ActivateShape {
                num_rows: 3,
                ..shape
            },
            Activation::SwiGlu
        )
        .contains("pre buffer")
    );
    assert!(
        run(
            ActivateShape {
                num_experts: 2,
                ..shape
            },
            Activation::Gelu
        )
        .contains("expert_offsets buffer")
    );
}

crate::runtime_tests!(
    activation_matches_reference,
    activation_matches_reference_in_bf16_and_f16,
    activation_rejects_bad_arguments
);
