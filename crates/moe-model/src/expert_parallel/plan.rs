//! The host side of the exchange: which rank owns which experts, how many rows a rank sends to
//! each rank (per expert), and which local expert each received row is for.
//!
//! Experts are sharded in contiguous blocks (rank `r` owns `r * E/N .. (r + 1) * E/N`), so the
//! dispatch order (rows grouped by expert, token order within an expert) is already grouped by
//! destination rank: the send order is the dispatch's `routed_pairs` and the way back is its
//! `row_of_pair`, and no further permutation is needed on the sending side.

use std::ops::Range;

use crate::InvalidValue;

/// E experts in N contiguous shards of E / N experts, one per rank.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExpertShards {
    num_experts: usize,
    num_ranks: usize,
}

impl ExpertShards {
    /// `num_experts` experts over `num_ranks` ranks; every rank must hold the same number of
    /// experts, at least one.
    pub fn new(num_experts: usize, num_ranks: usize) -> Result<Self, InvalidValue> {
        if num_ranks == 0 {
            return Err(InvalidValue::new("ranks", 0, "must be >= 1"));
        }
        if num_ranks > num_experts {
            return Err(InvalidValue::new(
                "ranks",
                num_ranks,
                format!("must be <= num_experts ({num_experts}): each rank holds an expert"),
            ));
        }
        if !num_experts.is_multiple_of(num_ranks) {
            return Err(InvalidValue::new(
                "ranks",
                num_ranks,
                format!("must divide num_experts ({num_experts}): every rank holds E / N experts"),
            ));
        }
        Ok(Self {
            num_experts,
            num_ranks,
        })
    }

    /// Number of experts E.
    pub fn num_experts(&self) -> usize {
        self.num_experts
    }

    /// Number of ranks N.
    pub fn num_ranks(&self) -> usize {
        self.num_ranks
    }

    /// Experts per rank, E / N.
    pub fn experts_per_rank(&self) -> usize {
        self.num_experts / self.num_ranks
    }

    /// The experts `rank` holds.
    pub fn experts_of(&self, rank: usize) -> Range<usize> {
        let per_rank = self.experts_per_rank();
        rank * per_rank..(rank + 1) * per_rank
    }

    /// The rows a rank sends to each rank, per expert of the destination:
    /// `[N][E / N]`, from the dispatch's `expert_offsets` (`[E + 1]`).
    pub fn send_counts(&self, expert_offsets: &[usize]) -> Vec<Vec<usize>> {
        assert_eq!(expert_offsets.len(), self.num_experts + 1, "E + 1 offsets");
        (0..self.num_ranks)
            .map(|rank| {
                self.experts_of(rank)
                    .map(|e| expert_offsets[e + 1] - expert_offsets[e])
                    .collect()
            })
            .collect()
    }
}

/// Rows of each rank's block: the sum of its per-expert counts. `[N]`
pub fn block_rows(counts: &[Vec<usize>]) -> Vec<usize> {
    counts
        .iter()
        .map(|per_expert| per_expert.iter().sum())
        .collect()
}

/// The local expert of each received row, in the order the rows arrive: by source rank, then
/// by expert (each source sends in dispatch order), from the counts each source sent
/// (`[N][E / N]`). `[R]`
pub fn received_experts(received_counts: &[Vec<usize>]) -> Vec<i32> {
    received_counts
        .iter()
        .flat_map(|per_expert| {
            per_expert
                .iter()
                .enumerate()
                .flat_map(|(local, &count)| std::iter::repeat_n(local as i32, count))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use moe_kernels::UNUSED_SLOT;
    use moe_kernels::dispatch::reference::plan;
    use rand::RngExt;
    use rand::rngs::StdRng;

    use super::*;
    use crate::test_support::rng;

    /// A routed row as the tests track it: (source rank, token, expert).
    type Row = (usize, usize, usize);

    /// How the tokens of a source rank pick their experts.
    #[derive(Clone, Copy, Debug)]
    enum Routing {
        /// 1..=K distinct random experts per token (variable k).
        Variable,
        /// Expert 0 alone: rank 0 receives everything, the others nothing.
        FirstExpert,
        /// Random experts of the last rank only.
        LastRank,
    }

    /// `[T, K]` expert ids of one source rank, [`UNUSED_SLOT`] in unused slots.
    fn route(
        random: &mut StdRng,
        routing: Routing,
        tokens: usize,
        slots: usize,
        shards: ExpertShards,
    ) -> Vec<i32> {
        let last = shards.experts_of(shards.num_ranks() - 1);
        let mut ids = Vec::new();
        for _ in 0..tokens {
            let mut pool: Vec<usize> = match routing {
                Routing::Variable => (0..shards.num_experts()).collect(),
                Routing::FirstExpert => vec![0],
                Routing::LastRank => last.clone().collect(),
            };
            let used = random.random_range(1..=slots.min(pool.len()));
            for slot in 0..slots {
                if slot < used {
                    let pick = pool.swap_remove(random.random_range(0..pool.len()));
                    ids.push(pick as i32);
                } else {
                    ids.push(UNUSED_SLOT);
                }
            }
        }
        ids
    }

    /// The plain reference of what rank `dest` receives, in order: for each source rank, for
    /// each of `dest`'s experts, that source's tokens routed to it, in token order.
    fn expected_received(
        routings: &[Vec<i32>],
        slots: usize,
        shards: ExpertShards,
        dest: usize,
    ) -> Vec<Row> {
        let mut rows = Vec::new();
        for (source, ids) in routings.iter().enumerate() {
            for expert in shards.experts_of(dest) {
                for (pair, &id) in ids.iter().enumerate() {
                    if id == expert as i32 {
                        rows.push((source, pair / slots, expert));
                    }
                }
            }
        }
        rows
    }

    /// Splits `rows` into consecutive blocks of `sizes` rows.
    fn split(rows: &[Row], sizes: &[usize]) -> Vec<Vec<Row>> {
        let mut first = 0;
        sizes
            .iter()
            .map(|&size| {
                first += size;
                rows[first - size..first].to_vec()
            })
            .collect()
    }

    /// Each source plans and packs with the dispatch reference and [`ExpertShards::send_counts`],
    /// the blocks cross on the host, each destination names its rows with
    /// [`received_experts`]: every destination must receive what the reference says, and the
    /// rows sent back must land, through the source's `row_of_pair`, on the pair they came from.
    #[test]
    fn plan_and_packing_match_a_plain_reference_on_random_routings() {
        let mut random = rng(41);
        let num_experts = 8;
        for num_ranks in [1, 2, 4, 8] {
            let shards = ExpertShards::new(num_experts, num_ranks).expect("valid shards");
            for routing in [Routing::Variable, Routing::FirstExpert, Routing::LastRank] {
                let slots = random.random_range(1..=4);
                let routings: Vec<Vec<i32>> = (0..num_ranks)
                    .map(|_| {
                        let tokens = random.random_range(1..30);
                        route(&mut random, routing, tokens, slots, shards)
                    })
                    .collect();
                let plans: Vec<_> = routings
                    .iter()
                    .map(|ids| plan(ids, num_experts, 64))
                    .collect();
                let send_counts: Vec<Vec<Vec<usize>>> = plans
                    .iter()
                    .map(|p| {
                        let offsets: Vec<usize> =
                            p.expert_offsets.iter().map(|&o| o as usize).collect();
                        shards.send_counts(&offsets)
                    })
                    .collect();
                let sent: Vec<Vec<Vec<Row>>> = plans
                    .iter()
                    .enumerate()
                    .map(|(source, p)| {
                        let packed: Vec<Row> = p.routed_pairs[..p.num_rows()]
                            .iter()
                            .map(|&pair| {
                                let pair = pair as usize;
                                let expert = routings[source][pair] as usize;
                                (source, pair / slots, expert)
                            })
                            .collect();
                        split(&packed, &block_rows(&send_counts[source]))
                    })
                    .collect();

                let mut results: Vec<Vec<Vec<Row>>> = Vec::new(); // [dest][source]
                for dest in 0..num_ranks {
                    let received_counts: Vec<Vec<usize>> =
                        send_counts.iter().map(|s| s[dest].clone()).collect();
                    let received: Vec<Row> =
                        sent.iter().flat_map(|s| s[dest].iter().copied()).collect();
                    let first_expert = shards.experts_of(dest).start;
                    let named: Vec<Row> = received
                        .iter()
                        .zip(received_experts(&received_counts))
                        .map(|(&(source, token, _), local)| {
                            (source, token, first_expert + local as usize)
                        })
                        .collect();
                    let expected = expected_received(&routings, slots, shards, dest);
                    assert_eq!(named, expected, "rank {dest} of {num_ranks}, {routing:?}");
                    results.push(split(&named, &block_rows(&received_counts)));
                }

                for (source, p) in plans.iter().enumerate() {
                    let returned: Vec<Row> = results
                        .iter()
                        .flat_map(|from_dest| from_dest[source].iter().copied())
                        .collect();
                    assert_eq!(returned.len(), p.num_rows());
                    for (pair, &id) in routings[source].iter().enumerate() {
                        let row = p.row_of_pair[pair];
                        if id == UNUSED_SLOT {
                            assert_eq!(row, UNUSED_SLOT);
                            continue;
                        }
                        let expected = (source, pair / slots, id as usize);
                        assert_eq!(returned[row as usize], expected, "{routing:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn shards_refuse_uneven_or_empty_ranks() {
        for (experts, ranks) in [(4, 8), (6, 4), (8, 0), (8, 3)] {
            let error = ExpertShards::new(experts, ranks).expect_err("must be refused");
            assert_eq!(error.field, "ranks");
        }
        let shards = ExpertShards::new(8, 4).expect("8 experts over 4 ranks");
        assert_eq!(shards.experts_of(2), 4..6);
        assert_eq!(
            shards.send_counts(&[0, 1, 1, 4, 4, 4, 9, 9, 10]),
            [vec![1, 0], vec![3, 0], vec![0, 5], vec![0, 1]]
        );
        assert_eq!(received_experts(&[vec![2, 0], vec![1, 1]]), [0, 0, 0, 1]);
    }
}
