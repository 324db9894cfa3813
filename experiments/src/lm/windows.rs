//! Windows of a token stream for next-token prediction: random windows to train on, and
//! consecutive windows that cover a whole split to evaluate on.

use rand::{Rng, RngExt};

use super::corpus::CorpusError;
use super::tokens::Token;

/// `batch` windows of `context` tokens at uniformly random starts in `stream`, and their
/// targets, the same windows shifted by one token. Both `[batch * context]`, row-major.
pub fn window_batch<R: Rng + ?Sized>(
    stream: &[Token],
    context: usize,
    batch: usize,
    rng: &mut R,
) -> Result<(Vec<Token>, Vec<Token>), CorpusError> {
    if context == 0 || stream.len() <= context {
        return Err(CorpusError::StreamTooShort {
            tokens: stream.len(),
            context,
        });
    }
    let last_start = stream.len() - context - 1;
    let mut inputs = Vec::with_capacity(batch * context); // [batch * context]
    let mut targets = Vec::with_capacity(batch * context); // [batch * context]
    for _ in 0..batch {
        let start = rng.random_range(0..=last_start);
        inputs.extend_from_slice(&stream[start..start + context]);
        targets.extend_from_slice(&stream[start + 1..start + context + 1]);
    }
    Ok((inputs, targets))
}

/// Consecutive, non-overlapping windows of `context` tokens over `stream`, each with its
/// targets (the window shifted by one): every token but the first is a target exactly once.
/// The last window is shorter when `stream.len() - 1` is not a multiple of `context` (a
/// `context` of 0 is taken as 1).
pub fn eval_windows(stream: &[Token], context: usize) -> EvalWindows<'_> {
    EvalWindows {
        stream,
        context: context.max(1),
        start: 0,
    }
}

/// The iterator of [`eval_windows`]: `(inputs, targets)` slices of equal length.
#[derive(Clone, Debug)]
pub struct EvalWindows<'a> {
    stream: &'a [Token],
    context: usize,
    start: usize,
}

impl<'a> Iterator for EvalWindows<'a> {
    type Item = (&'a [Token], &'a [Token]);

    fn next(&mut self) -> Option<Self::Item> {
        let predicted = self.stream.len().saturating_sub(1);
        if self.start >= predicted {
            return None;
        }
        let end = (self.start + self.context).min(predicted);
        let window = (
            &self.stream[self.start..end],
            &self.stream[self.start + 1..end + 1],
        );
        self.start = end;
        Some(window)
    }
}
