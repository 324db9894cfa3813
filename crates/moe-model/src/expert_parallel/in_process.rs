//! An [`Exchange`] among the ranks of one process, one thread per rank: each rank leaves its
//! blocks in a shared mailbox, waits for the others, takes the blocks addressed to it and moves
//! them to its device with Burn's `to_device` (a no-op when the ranks share a device, as on the
//! CPU). It tests the plan, the packing and the combine of the expert-parallel layer against the
//! single-device layer; it is not a transport for speed.

use std::any::Any;
use std::sync::{Arc, Barrier, Mutex};

use burn::tensor::{Tensor, backend::Backend};

use super::exchange::Exchange;

/// One rank's message to another, of whichever type the call exchanges.
type Parcel = Box<dyn Any + Send>;

/// What the ranks of one group share.
struct Mailbox<B: Backend> {
    /// `parcels[source][destination]`: left by the source, taken by the destination.
    parcels: Mutex<Vec<Vec<Option<Parcel>>>>,
    /// Every rank waits here after leaving its parcels and after taking its own.
    barrier: Barrier,
    /// The device of each rank.
    devices: Vec<B::Device>,
}

/// One rank's end of an in-process group (see the module docs). A rank that panics leaves the
/// others waiting at the barrier: run a group only where a panic ends the process (tests).
pub struct InProcessExchange<B: Backend> {
    mailbox: Arc<Mailbox<B>>,
    rank: usize,
}

impl<B: Backend> InProcessExchange<B> {
    /// The ends of a group of `devices.len()` ranks, rank `r` on `devices[r]` (one device may
    /// serve several ranks). Hand one end to each rank's thread.
    pub fn group(devices: Vec<B::Device>) -> Vec<Self> {
        let num_ranks = devices.len();
        let mailbox = Arc::new(Mailbox {
            parcels: Mutex::new(
                (0..num_ranks)
                    .map(|_| (0..num_ranks).map(|_| None).collect())
                    .collect(),
            ),
            barrier: Barrier::new(num_ranks),
            devices,
        });
        (0..num_ranks)
            .map(|rank| Self {
                mailbox: mailbox.clone(),
                rank,
            })
            .collect()
    }

    /// Leaves `parcels[r]` for rank `r` and returns the parcel each rank left for this one, by
    /// source rank.
    fn all_to_all<T: Send + 'static>(&self, parcels: Vec<T>) -> Vec<T> {
        assert_eq!(parcels.len(), self.num_ranks(), "one parcel per rank");
        {
            let mut slots = self.mailbox.parcels.lock().expect("no rank panicked");
            for (slot, parcel) in slots[self.rank].iter_mut().zip(parcels) {
                *slot = Some(Box::new(parcel));
            }
        }
        self.mailbox.barrier.wait();
        let received = {
            let mut slots = self.mailbox.parcels.lock().expect("no rank panicked");
            slots
                .iter_mut()
                .map(|from_source| {
                    let parcel = from_source[self.rank].take().expect("every rank sends");
                    *parcel
                        .downcast::<T>()
                        .expect("every rank makes the same call")
                })
                .collect()
        };
        // Nobody leaves the next call's parcels before every rank has taken this call's.
        self.mailbox.barrier.wait();
        received
    }
}

impl<B: Backend> Exchange<B> for InProcessExchange<B> {
    fn rank(&self) -> usize {
        self.rank
    }

    fn num_ranks(&self) -> usize {
        self.mailbox.devices.len()
    }

    fn exchange_counts(&self, counts: Vec<Vec<usize>>) -> Vec<Vec<usize>> {
        self.all_to_all(counts)
    }

    fn exchange_rows(
        &self,
        rows: Tensor<B, 2>,
        send_rows: &[usize],
        received_rows: &[usize],
    ) -> Tensor<B, 2> {
        let [total, d_model] = rows.dims();
        assert_eq!(total, send_rows.iter().sum::<usize>(), "rows of the blocks");
        let dtype = rows.dtype();
        let mut first = 0;
        let blocks: Vec<Option<Tensor<B, 2>>> = send_rows
            .iter()
            .map(|&count| {
                let block = (count > 0).then(|| rows.clone().slice([first..first + count]));
                first += count;
                block
            })
            .collect();
        let device = &self.mailbox.devices[self.rank];
        let received: Vec<Tensor<B, 2>> = self
            .all_to_all(blocks)
            .into_iter()
            .zip(received_rows)
            .filter_map(|(block, &count)| {
                assert_eq!(
                    block.as_ref().map_or(0, |b| b.dims()[0]),
                    count,
                    "rows sent"
                );
                block.map(|b| b.to_device(device))
            })
            .collect();
        if received.is_empty() {
            Tensor::zeros([0, d_model], (device, dtype))
        } else {
            Tensor::cat(received, 0)
        }
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::TensorData;
    use rand::RngExt;

    use super::*;
    use crate::test_support::{TestBackend, host_f64, rng};

    /// Row `i` of the block rank `s` sends to rank `r` holds `(s, r, i)` encoded in each of its
    /// `d` columns (column `j` adds `j / 1000`), so a received row names its origin.
    fn labelled_block(source: usize, dest: usize, count: usize, d: usize) -> Vec<f32> {
        (0..count)
            .flat_map(|i| (0..d).map(move |j| label(source, dest, i) + j as f32 / 1000.0))
            .collect()
    }

    fn label(source: usize, dest: usize, row: usize) -> f32 {
        (source * 10_000 + dest * 1_000 + row + 1) as f32
    }

    /// Random send counts (with zeros), everything to one rank, and nothing at all: each rank
    /// receives exactly the rows addressed to it, in source-rank order, row order kept.
    #[test]
    fn every_rank_receives_its_blocks_in_source_order() {
        let d = 3;
        let mut random = rng(31);
        for num_ranks in [1, 2, 3, 4] {
            let cases: Vec<Vec<Vec<usize>>> = vec![
                (0..num_ranks)
                    .map(|_| (0..num_ranks).map(|_| random.random_range(0..5)).collect())
                    .collect(),
                (0..num_ranks)
                    .map(|_| (0..num_ranks).map(|r| if r == 0 { 4 } else { 0 }).collect())
                    .collect(),
                vec![vec![0; num_ranks]; num_ranks],
            ];
            for sends in cases {
                let ends =
                    InProcessExchange::<TestBackend>::group(vec![Default::default(); num_ranks]);
                let received: Vec<(Vec<usize>, Vec<f64>)> = std::thread::scope(|scope| {
                    let handles: Vec<_> = ends
                        .into_iter()
                        .map(|end| {
                            let sends = &sends;
                            scope.spawn(move || {
                                let source = end.rank();
                                let counts: Vec<Vec<usize>> =
                                    sends[source].iter().map(|&c| vec![c]).collect();
                                let got_counts = end.exchange_counts(counts);
                                let got_rows: Vec<usize> =
                                    got_counts.iter().map(|c| c[0]).collect();
                                let values: Vec<f32> = (0..num_ranks)
                                    .flat_map(|r| labelled_block(source, r, sends[source][r], d))
                                    .collect();
                                let total = sends[source].iter().sum::<usize>();
                                let rows = Tensor::<TestBackend, 2>::from_data(
                                    TensorData::new(values, [total, d]),
                                    &Default::default(),
                                );
                                let out = end.exchange_rows(rows, &sends[source], &got_rows);
                                (got_rows, host_f64(out))
                            })
                        })
                        .collect();
                    handles.into_iter().map(|h| h.join().unwrap()).collect()
                });
                for (dest, (got_rows, values)) in received.iter().enumerate() {
                    let expected_rows: Vec<usize> = sends.iter().map(|s| s[dest]).collect();
                    assert_eq!(got_rows, &expected_rows, "counts at rank {dest}");
                    let expected: Vec<f64> = (0..num_ranks)
                        .flat_map(|s| labelled_block(s, dest, sends[s][dest], d))
                        .map(f64::from)
                        .collect();
                    assert_eq!(values, &expected, "rows at rank {dest} of {sends:?}");
                }
            }
        }
    }
}
