//! The limits of a task run's sizes that do not depend on the machine: the number of experts, and
//! every weight tensor's element count.

use moe_model::{FfnConfig, InvalidValue, ModelConfig};

use crate::task::TaskConfig;

/// Most experts an MoE layer may have. On NdArray (the tensor-op path) every expert a batch uses
/// costs a matmul pair and, in the backward pass, a gradient the size of all experts' stacked
/// weights, so a training step grows with E squared: at this E one step of the smoke model
/// already takes about two minutes on a 2-core CPU (measured), beyond it a run is a mistake.
pub const MAX_EXPERTS: usize = 65536;

/// Checks the limits that do not depend on the machine; part of `RunConfig::validate`. Every
/// weight tensor's element count must be representable: a wrapped product would silently build
/// another model than the config describes.
pub fn check_sizes(task: &TaskConfig, model: &ModelConfig) -> Result<(), InvalidValue> {
    if let FfnConfig::Moe(moe) = &model.ffn
        && moe.num_experts > MAX_EXPERTS
    {
        return Err(InvalidValue::new(
            "model.ffn.num_experts",
            moe.num_experts,
            format!("must be in 1..={MAX_EXPERTS}"),
        ));
    }
    let d = model.d_model;
    let mut products = vec![
        ("task.input_dim", task.input_dim, vec![task.input_dim, d]),
        (
            "task.num_classes",
            task.num_classes,
            vec![d, task.num_classes],
        ),
    ];
    match &model.ffn {
        FfnConfig::Dense(mlp) => {
            let columns = mlp.activation.input_columns(1);
            products.push(("model.ffn.width", mlp.width, vec![d, columns, mlp.width]));
        }
        FfnConfig::Moe(moe) => {
            let columns = moe.activation.input_columns(1);
            products.push((
                "model.ffn.expert_width",
                moe.expert_width,
                vec![moe.num_experts, d, columns, moe.expert_width],
            ));
            products.push((
                "model.ffn.shared_expert_width",
                moe.shared_expert_width,
                vec![moe.shared_experts, moe.shared_expert_width, d, columns],
            ));
        }
    }
    for (field, value, factors) in products {
        let elements = factors.iter().try_fold(1usize, |n, &f| n.checked_mul(f));
        // Burn and CubeCL index some buffers with 32-bit byte offsets' multiples; stay well
        // inside u64 bytes and i64 element counts.
        if elements.is_none_or(|n| n > (i64::MAX as usize) / 8) {
            let shown: Vec<String> = factors.iter().map(usize::to_string).collect();
            return Err(InvalidValue::new(
                field,
                value,
                format!(
                    "the weight tensor it sizes would hold {} elements, more than can be addressed",
                    shown.join(" x ")
                ),
            ));
        }
    }
    Ok(())
}
