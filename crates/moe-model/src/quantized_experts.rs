//! The experts' weights quantized for serving (issue 31): int8 or FP8 e4m3 bytes with f32 scales
//! per output channel or per 128 x 128 block, held on the device next to the float weights they
//! were made from. The layer runs them through the weight-only quantized kernel on CubeCL
//! backends, and through the float experts on the weights dequantized on the host elsewhere
//! (`MoeBackend::moe_quantized_experts`).
//!
//! The tensors are constants of the module (not parameters): they are neither trained nor saved
//! in the model's record; a model's quantized experts travel as their own file
//! ([`QuantizedExperts::to_matrices`], [`QuantizedExperts::from_matrices`]).

use burn::module::Module;
use burn::tensor::{DType, Int, Tensor, TensorData, backend::Backend};
use moe_kernels::quantized::reference::{dequantize, quantize};
use moe_kernels::quantized::{QuantFormat, QuantLayout, QuantizedMatrix};

use crate::InvalidValue;

/// One projection's quantized weights on the device.
#[derive(Module, Debug)]
pub struct QuantizedWeights<B: Backend> {
    /// The bytes `[E, depth, columns]`, four per 32-bit word (`pack_bytes`), as i32. `[words]`
    pub packed: Tensor<B, 1, Int>,
    /// The scales in f32. `[E, scale rows, scale columns]`
    pub scales: Tensor<B, 3>,
    /// Shape and format.
    #[module(skip)]
    pub layout: QuantLayout,
}

impl<B: Backend> QuantizedWeights<B> {
    /// Uploads `matrix` to `device`.
    pub fn new(matrix: &QuantizedMatrix, device: &B::Device) -> Self {
        let layout = matrix.layout();
        let words: Vec<i32> = matrix.packed().into_iter().map(|w| w as i32).collect();
        let num_words = words.len();
        Self {
            packed: Tensor::from_data(TensorData::new(words, [num_words]), (device, DType::I32)),
            scales: Tensor::from_data(
                TensorData::new(matrix.scales().to_vec(), layout.scale_shape()),
                (device, DType::F32),
            ),
            layout,
        }
    }

    /// The bytes and scales read back to the host.
    pub fn to_matrix(&self) -> QuantizedMatrix {
        let words = self.packed.to_data().convert::<i32>();
        let mut bytes: Vec<u8> = words
            .iter::<i32>()
            .flat_map(|word| word.to_le_bytes())
            .collect();
        bytes.truncate(self.layout.num_weights());
        let scales = self.scales.to_data().convert::<f32>().into_vec::<f32>();
        QuantizedMatrix::new(self.layout, bytes, scales.expect("f32 scales"))
            .expect("the device copy of a checked matrix")
    }

    /// The weights dequantized on the host (f64, rounded to f32) and uploaded in `dtype`:
    /// `[E, depth, columns]`.
    pub fn dequantized(&self, dtype: DType) -> Tensor<B, 3> {
        let layout = self.layout;
        let values: Vec<f32> = dequantize(&self.to_matrix())
            .into_iter()
            .map(|v| v as f32)
            .collect();
        let shape = [layout.experts, layout.depth, layout.columns];
        Tensor::from_data(
            TensorData::new(values, shape),
            (&self.scales.device(), dtype),
        )
    }
}

/// Both projections of an MoE layer's experts, quantized.
#[derive(Module, Debug)]
pub struct QuantizedExperts<B: Backend> {
    /// `[E, d, input_columns(F)]`
    pub w_in: QuantizedWeights<B>,
    /// `[E, F, d]`
    pub w_out: QuantizedWeights<B>,
}

impl<B: Backend> QuantizedExperts<B> {
    /// Quantizes float weights `w_in` (`[E, d, input_columns(F)]`) and `w_out` (`[E, F, d]`) to
    /// `format` (on the host, by the reference quantizer), on their device.
    pub fn quantize(w_in: Tensor<B, 3>, w_out: Tensor<B, 3>, format: QuantFormat) -> Self {
        let device = w_in.device();
        let matrix = |weights: Tensor<B, 3>| {
            let [experts, depth, columns] = weights.dims();
            let layout = QuantLayout {
                format,
                experts,
                depth,
                columns,
            };
            let values = weights.into_data().convert::<f32>().into_vec::<f32>();
            quantize(&values.expect("f32 weights"), layout)
        };
        Self::from_matrices(&matrix(w_in), &matrix(w_out), &device)
            .expect("both projections in one format")
    }

    /// Uploads quantized `w_in` and `w_out`; an error when their formats differ or their
    /// shapes do not chain (`w_in`'s depth is `w_out`'s columns, both have E experts).
    pub fn from_matrices(
        w_in: &QuantizedMatrix,
        w_out: &QuantizedMatrix,
        device: &B::Device,
    ) -> Result<Self, InvalidValue> {
        let (a, b) = (w_in.layout(), w_out.layout());
        if a.format != b.format {
            return Err(InvalidValue::new(
                "w_out.format",
                b.format,
                format!("must be w_in's ({})", a.format),
            ));
        }
        if a.experts != b.experts || a.depth != b.columns {
            return Err(InvalidValue::new(
                "w_out",
                b,
                format!("must be [{}, F, {}] to follow w_in {a}", a.experts, a.depth),
            ));
        }
        Ok(Self {
            w_in: QuantizedWeights::new(w_in, device),
            w_out: QuantizedWeights::new(w_out, device),
        })
    }

    /// Both projections read back to the host, `(w_in, w_out)`.
    pub fn to_matrices(&self) -> (QuantizedMatrix, QuantizedMatrix) {
        (self.w_in.to_matrix(), self.w_out.to_matrix())
    }

    /// The format of both projections.
    pub fn format(&self) -> QuantFormat {
        self.w_in.layout.format
    }
}
