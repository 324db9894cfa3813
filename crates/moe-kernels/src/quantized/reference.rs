//! Plain-Rust quantization, in f64: the specification of the two byte formats, of quantizing a
//! projection's weights and of dequantizing them. The quantized grouped GEMM's specification is
//! the grouped GEMM's (`grouped_gemm::reference`) on the weights [`dequantize`] gives.

use super::format::{QuantFormat, QuantLayout, QuantizedMatrix};

/// The FP8 e4m3 byte nearest `value` (OCP "e4m3fn": sign, 4 exponent bits of bias 7, 3 mantissa
/// bits, no infinities, `S.1111.111` NaN): magnitudes above 448 saturate to 448, ties round to
/// the even mantissa, magnitudes below 2^-6 become subnormals (steps of 2^-9), NaN stays NaN.
pub fn encode_e4m3(value: f64) -> u8 {
    if value.is_nan() {
        return 0x7f;
    }
    let sign = if value.is_sign_negative() { 0x80 } else { 0 };
    let magnitude = value.abs().min(448.0);
    // The binade's exponent (subnormals share the smallest normal one's steps).
    let exponent = binade(magnitude).max(-6);
    let step = 2f64.powi(exponent - 3);
    let steps = (magnitude / step).round_ties_even(); // exact: `step` is a power of two
    let rounded = steps * step;
    if rounded < 2f64.powi(-6) {
        return sign | steps as u8; // subnormal (or zero): exponent field 0, mantissa = steps
    }
    let exponent = binade(rounded); // one up when rounding carried into the next binade
    let mantissa = (rounded / 2f64.powi(exponent) * 8.0 - 8.0) as u8;
    sign | (((exponent + 7) as u8) << 3) | mantissa
}

/// The value of an FP8 e4m3 byte (NaN for `0x7f` and `0xff`).
pub fn decode_e4m3(byte: u8) -> f64 {
    let exponent = ((byte >> 3) & 0xf) as i32;
    let mantissa = (byte & 0x7) as f64;
    if exponent == 15 && mantissa == 7.0 {
        return f64::NAN;
    }
    let magnitude = if exponent == 0 {
        mantissa * 2f64.powi(-9)
    } else {
        (8.0 + mantissa) * 2f64.powi(exponent - 10)
    };
    if byte & 0x80 != 0 {
        -magnitude
    } else {
        magnitude
    }
}

/// The int8 byte nearest `value`: ties to even, clamped to -127..=127 (symmetric: -128 unused).
pub fn encode_int8(value: f64) -> u8 {
    value.round_ties_even().clamp(-127.0, 127.0) as i8 as u8
}

/// The value of an int8 byte (two's complement).
pub fn decode_int8(byte: u8) -> f64 {
    byte as i8 as f64
}

/// The byte of `format` nearest `value`.
pub fn encode(format: QuantFormat, value: f64) -> u8 {
    if format.is_fp8() {
        encode_e4m3(value)
    } else {
        encode_int8(value)
    }
}

/// The value of a byte of `format`.
pub fn decode(format: QuantFormat, byte: u8) -> f64 {
    if format.is_fp8() {
        decode_e4m3(byte)
    } else {
        decode_int8(byte)
    }
}

/// Quantizes `weights` (`[E, depth, columns]`, row-major) to `layout`: each scale maps the
/// largest magnitude of its channel or block onto the format's largest code (a group of zeros
/// gets scale 1), and each weight becomes the byte nearest `weight / scale` (the scale as
/// stored, in f32). Panics when `weights` is not the layout's size (a caller's bug).
pub fn quantize(weights: &[f32], layout: QuantLayout) -> QuantizedMatrix {
    assert_eq!(weights.len(), layout.num_weights(), "weights of {layout}");
    let mut largest = vec![0.0f64; layout.num_scales()];
    for_each_weight(layout, |index, scale| {
        largest[scale] = largest[scale].max((weights[index] as f64).abs());
    });
    let max_code = layout.format.max_code();
    let scales: Vec<f32> = largest
        .iter()
        .map(|&amax| match amax > 0.0 {
            true => (amax / max_code) as f32,
            false => 1.0,
        })
        .collect();
    let mut bytes = vec![0u8; layout.num_weights()];
    for_each_weight(layout, |index, scale| {
        bytes[index] = encode(layout.format, weights[index] as f64 / scales[scale] as f64);
    });
    QuantizedMatrix::new(layout, bytes, scales).expect("quantize builds its own layout")
}

/// The weights `decode(byte) * scale`, in f64, `[E, depth, columns]`.
pub fn dequantize(matrix: &QuantizedMatrix) -> Vec<f64> {
    let layout = matrix.layout();
    let mut weights = vec![0.0; layout.num_weights()];
    for_each_weight(layout, |index, scale| {
        weights[index] =
            decode(layout.format, matrix.bytes()[index]) * matrix.scales()[scale] as f64;
    });
    weights
}

/// Calls `visit(weight index, scale index)` for every weight of `layout`.
fn for_each_weight(layout: QuantLayout, mut visit: impl FnMut(usize, usize)) {
    let mut index = 0;
    for expert in 0..layout.experts {
        for k in 0..layout.depth {
            for column in 0..layout.columns {
                visit(index, layout.scale_index(expert, k, column));
                index += 1;
            }
        }
    }
}

/// The exponent of the binade holding `magnitude` (`floor(log2)`, read from the bits); 0 for 0.
fn binade(magnitude: f64) -> i32 {
    if magnitude == 0.0 {
        return 0;
    }
    ((magnitude.to_bits() >> 52) & 0x7ff) as i32 - 1023
}

#[cfg(test)]
mod tests {
    use float8::F8E4M3;

    use super::*;
    use crate::testgen::{random_f32, rng};

    #[test]
    fn e4m3_codes_match_known_values() {
        for (byte, value) in [
            (0x00, 0.0),
            (0x01, 2f64.powi(-9)),
            (0x07, 7.0 * 2f64.powi(-9)),
            (0x08, 2f64.powi(-6)),
            (0x38, 1.0),
            (0x3c, 1.5),
            (0x7e, 448.0),
            (0xb8, -1.0),
            (0xfe, -448.0),
        ] {
            assert_eq!(decode_e4m3(byte), value, "{byte:#04x}");
            assert_eq!(encode_e4m3(value), byte, "{value}");
        }
        assert!(decode_e4m3(0x7f).is_nan() && decode_e4m3(0xff).is_nan());
    }

    #[test]
    fn e4m3_saturates_rounds_ties_to_even_and_keeps_subnormals() {
        assert_eq!(encode_e4m3(1e6), 0x7e);
        assert_eq!(encode_e4m3(-500.0), 0xfe);
        // 1.0625 is halfway between 1.0 (mantissa 0) and 1.125 (mantissa 1): even is 1.0.
        assert_eq!(encode_e4m3(1.0625), 0x38);
        // 1.1875 is halfway between 1.125 (1) and 1.25 (2): even is 1.25.
        assert_eq!(encode_e4m3(1.1875), 0x3a);
        // 1.96875 rounds up into the next binade: 2.0.
        assert_eq!(encode_e4m3(1.97), 0x40);
        // Half the smallest subnormal is a tie with zero: zero; just above it, the subnormal.
        assert_eq!(encode_e4m3(2f64.powi(-10)), 0x00);
        assert_eq!(encode_e4m3(2f64.powi(-10) * 1.01), 0x01);
        assert_eq!(encode_e4m3(3.5 * 2f64.powi(-9)), 0x04);
    }

    /// Every finite byte decodes and encodes back to itself; random values in range round as
    /// the `float8` crate (CUDA's `__nv_cvt_double_to_fp8`, saturating) rounds them.
    #[test]
    fn e4m3_agrees_with_an_independent_implementation() {
        for byte in (0..=255u8).filter(|b| b & 0x7f != 0x7f) {
            assert_eq!(encode_e4m3(decode_e4m3(byte)), byte, "{byte:#04x}");
            assert_eq!(decode_e4m3(byte), F8E4M3::from_bits(byte).to_f64());
        }
        let mut draw = rng(7);
        for scale in [1e-3, 0.05, 1.0, 30.0, 470.0] {
            for value in random_f32(&mut draw, 2000, scale) {
                let value = value as f64;
                assert_eq!(
                    encode_e4m3(value),
                    F8E4M3::from_f64(value).to_bits(),
                    "{value}"
                );
            }
        }
    }

    #[test]
    fn int8_rounds_ties_to_even_and_clamps_symmetrically() {
        assert_eq!(decode_int8(encode_int8(2.5)), 2.0);
        assert_eq!(decode_int8(encode_int8(-3.5)), -4.0);
        assert_eq!(decode_int8(encode_int8(-300.0)), -127.0);
        assert_eq!(decode_int8(encode_int8(127.4)), 127.0);
    }

    /// Dequantized weights are within half a code step of the originals (relative to each
    /// group's scale; relative to the value for e4m3), and each group's largest weight maps onto
    /// the largest code, on shapes whose d and F are not multiples of 128.
    #[test]
    fn quantize_then_dequantize_stays_within_half_a_step() {
        for format in QuantFormat::ALL {
            for (experts, depth, columns) in [(3, 200, 136), (2, 37, 300), (1, 128, 256)] {
                let layout = QuantLayout {
                    format,
                    experts,
                    depth,
                    columns,
                };
                let weights = random_f32(&mut rng(depth as u64), layout.num_weights(), 0.2);
                let matrix = quantize(&weights, layout);
                let restored = dequantize(&matrix);
                let mut largest_code = vec![0.0f64; layout.num_scales()];
                for (index, (&w, &r)) in weights.iter().zip(&restored).enumerate() {
                    let k = index / columns % depth;
                    let scale_at =
                        layout.scale_index(index / (depth * columns), k, index % columns);
                    let scale = matrix.scales()[scale_at] as f64;
                    let code = (w as f64 / scale).abs();
                    largest_code[scale_at] = largest_code[scale_at].max(code);
                    let bound = match format.is_fp8() {
                        // Half a step of the value's binade (3 mantissa bits), or of subnormals.
                        true => scale * 2f64.powi(binade(code).max(-6) - 4) * 1.000001,
                        false => scale * 0.500001,
                    };
                    assert!(
                        (w as f64 - r).abs() <= bound,
                        "{layout} at {index}: {w} -> {r}"
                    );
                }
                for (group, code) in largest_code.iter().enumerate() {
                    let max = format.max_code();
                    assert!(
                        (code - max).abs() < 1e-4 * max,
                        "{layout} group {group}: {code}"
                    );
                }
            }
        }
    }
}
