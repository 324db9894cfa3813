//! Plain-Rust weight gradient of the expert projections: the specification of the kernel.

use crate::dispatch::reference::DispatchPlan;

/// `grad[e] = sum over expert e's routed rows r of outer(a[source(r)], b[r])`, in f64.
///
/// Shapes: `a` `[T, a_width]` token rows when `gather` (source(r) = `routed_pairs[r] / slots`),
/// else `[P, a_width]` in dispatch order (source(r) = r); `b` `[P, b_width]` in dispatch order.
/// Returns `[E, a_width, b_width]`; experts without rows are zero.
pub fn expert_weight_grad(
    a: &[f32],
    gather: bool,
    b: &[f32],
    plan: &DispatchPlan,
    slots: usize,
    a_width: usize,
    b_width: usize,
) -> Vec<f64> {
    let num_experts = plan.expert_offsets.len() - 1;
    let mut grad = vec![0.0; num_experts * a_width * b_width];
    for (expert, range) in plan.expert_offsets.windows(2).enumerate() {
        let block = &mut grad[expert * a_width * b_width..(expert + 1) * a_width * b_width];
        for row in range[0] as usize..range[1] as usize {
            let source = if gather {
                plan.routed_pairs[row] as usize / slots
            } else {
                row
            };
            let a_row = &a[source * a_width..(source + 1) * a_width];
            let b_row = &b[row * b_width..(row + 1) * b_width];
            for (i, &a_value) in a_row.iter().enumerate() {
                let out = &mut block[i * b_width..(i + 1) * b_width];
                for (acc, &b_value) in out.iter_mut().zip(b_row) {
                    *acc += a_value as f64 * b_value as f64;
                }
            }
        }
    }
    grad
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatch::reference::plan;

    #[test]
    fn sums_outer_products_of_each_experts_rows() {
        // Token 0 -> experts 1, 0; token 1 -> expert 1 only. Expert 2 gets nothing.
        let plan = plan(&[1, 0, 1, -1], 3, 4);
        let x = [1.0, 2.0, 3.0, 4.0]; // [T = 2, 2]
        // [S = 3, 1] (rows past S are never read): rows (expert 0, token 0), (1, 0), (1, 1).
        let b = [10.0, 20.0, 30.0];
        let grad = expert_weight_grad(&x, true, &b, &plan, 2, 2, 1);
        assert_eq!(grad, vec![10.0, 20.0, 20.0 + 90.0, 40.0 + 120.0, 0.0, 0.0]);
        let dispatched = [1.0, 2.0, 1.0, 2.0, 3.0, 4.0]; // [S = 3, 2]
        let grad = expert_weight_grad(&dispatched, false, &b, &plan, 2, 2, 1);
        assert_eq!(grad, vec![10.0, 20.0, 20.0 + 90.0, 40.0 + 120.0, 0.0, 0.0]);
    }
}
