//! Host copies of small tensors, for the metrics (below every module that reads results back).

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};

/// Host copy of a 1-D integer tensor.
pub fn host_usizes<B: Backend>(tensor: Tensor<B, 1, Int>) -> Vec<usize> {
    tensor
        .into_data()
        .iter::<i64>()
        .map(|v| v as usize)
        .collect()
}

/// Host copy of a 1-D float tensor, widened to f64.
pub fn host_f64s<B: Backend>(tensor: Tensor<B, 1>) -> Vec<f64> {
    tensor.into_data().iter::<f64>().collect()
}
