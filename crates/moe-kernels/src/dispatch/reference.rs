//! Plain-Rust dispatch: the specification of the expert-contiguous order of routed pairs.

use crate::UNUSED_SLOT;

/// Where each routed (token, slot) pair goes: experts own contiguous row ranges, and within an
/// expert the rows follow token order. Row count S is the number of used slots (no padding).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DispatchPlan {
    /// Expert `e` owns rows `expert_offsets[e]..expert_offsets[e + 1]`. `[E + 1]`
    pub expert_offsets: Vec<usize>,
    /// Flat pair index `token * slots + slot` of each row. `[S]`
    pub routed_pairs: Vec<usize>,
}

impl DispatchPlan {
    /// Rows routed to each expert. `[E]`
    pub fn expert_counts(&self) -> Vec<usize> {
        self.expert_offsets
            .windows(2)
            .map(|w| w[1] - w[0])
            .collect()
    }
}

/// Plans the dispatch of `expert_ids` (`[T, slots]`, row-major, [`UNUSED_SLOT`] where unused).
pub fn plan(expert_ids: &[i32], num_experts: usize) -> DispatchPlan {
    let mut counts = vec![0usize; num_experts];
    for &id in expert_ids.iter().filter(|&&id| id != UNUSED_SLOT) {
        counts[id as usize] += 1;
    }
    let mut expert_offsets = vec![0usize; num_experts + 1];
    for (e, count) in counts.iter().enumerate() {
        expert_offsets[e + 1] = expert_offsets[e] + count;
    }
    let mut next_row = expert_offsets.clone();
    let mut routed_pairs = vec![0usize; expert_offsets[num_experts]];
    for (pair, &id) in expert_ids
        .iter()
        .enumerate()
        .filter(|(_, id)| **id != UNUSED_SLOT)
    {
        routed_pairs[next_row[id as usize]] = pair;
        next_row[id as usize] += 1;
    }
    DispatchPlan {
        expert_offsets,
        routed_pairs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_pairs_by_expert_in_token_order() {
        // Token 0 -> experts 2, 0; token 1 -> expert 2 only; token 2 -> experts 0, 2.
        let plan = plan(&[2, 0, 2, UNUSED_SLOT, 0, 2], 3);
        assert_eq!(plan.expert_offsets, vec![0, 2, 2, 5]);
        assert_eq!(plan.routed_pairs, vec![1, 4, 0, 2, 5]);
        assert_eq!(plan.expert_counts(), vec![2, 0, 3]);
    }
}
