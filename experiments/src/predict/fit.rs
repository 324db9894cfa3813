//! Distilling one gating head per (target block, distance) from the training split.

use std::ops::ControlFlow;

use moe_model::MoeAutodiffBackend;
use moe_model::prediction::{DistillData, GatingHead, GatingHeadConfig, distill};

use super::records::SplitRecords;
use super::report::HeadTraining;
use super::settings::PredictSettings;

/// Gating heads by target block and distance: `heads[t][j - 1]`, `Some` where `t >= j`.
pub type Heads<B> = Vec<Vec<Option<GatingHead<B>>>>;

/// Heads `[target][j - 1]` (`Some` where `target >= j`) trained on `train` with `settings`, on
/// backend `B`, printing one line per epoch; `stopped()` ends training early (Ctrl-C), leaving
/// the remaining heads untrained. Head `i` (in target, then distance order) is initialised and
/// shuffled with seed `settings.seed + i`.
pub fn fit_heads<B: MoeAutodiffBackend>(
    train: &SplitRecords,
    d_model: usize,
    num_experts: usize,
    max_distance: usize,
    settings: &PredictSettings,
    device: &B::Device,
    stopped: impl Fn() -> bool,
) -> (Heads<B>, Vec<HeadTraining>) {
    let blocks = train.real.len();
    let head_config = GatingHeadConfig::new(d_model, num_experts).with_hidden(settings.hidden);
    let total = (1..=max_distance).map(|j| blocks - j).sum::<usize>();
    println!(
        "  distilling {total} gating heads ({} parameters each, {} epochs of {} points)",
        head_config.cost().params,
        settings.epochs,
        train.len()
    );
    let mut heads = Vec::with_capacity(blocks);
    let mut training = Vec::new();
    let mut index = 0;
    for target in 0..blocks {
        let mut row = Vec::with_capacity(max_distance);
        for j in 1..=max_distance {
            if j > target || stopped() {
                row.push(None);
                continue;
            }
            let source = target - j;
            let data = DistillData {
                features: &train.normed[source],
                targets: &train.targets[target],
                d_model,
                num_experts,
            };
            let seed = settings.seed.wrapping_add(index as u64);
            index += 1;
            let config = settings.distill().with_seed(seed);
            let head = head_config.init::<B>(seed, device);
            let (head, report) = distill(head, &data, &config, device, |epoch, loss| {
                println!(
                    "  head {index}/{total}: block {target} from block {source} (j={j}), epoch \
                     {epoch}/{}: loss {loss:.4}",
                    config.epochs
                );
                match stopped() {
                    true => ControlFlow::Break(()),
                    false => ControlFlow::Continue(()),
                }
            });
            training.push(HeadTraining {
                target_block: target,
                distance: j,
                report,
            });
            row.push(Some(head));
        }
        heads.push(row);
    }
    (heads, training)
}
