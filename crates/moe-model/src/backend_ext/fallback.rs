//! Fallbacks from a kernel to the tensor ops are decisions: each distinct one is printed once per
//! process, and recorded for the calling thread so tests can assert that the kernels ran.

use std::cell::RefCell;
use std::collections::HashSet;
use std::sync::Mutex;

/// One fallback: the operation and why its kernel did not run.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Fallback {
    /// The layer operation (`route`, `dispatch`, `experts`, `combine`).
    pub op: &'static str,
    /// The kernel's reason.
    pub reason: String,
}

static PRINTED: Mutex<Option<HashSet<Fallback>>> = Mutex::new(None);

thread_local! {
    static RECORDED: RefCell<Vec<Fallback>> = const { RefCell::new(Vec::new()) };
}

/// Records that `op` ran on tensor ops because its kernel does not support the input, and says
/// so on stderr the first time this process sees that reason.
pub(crate) fn note_fallback(op: &'static str, reason: String) {
    let fallback = Fallback { op, reason };
    let mut printed = PRINTED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if printed
        .get_or_insert_with(HashSet::new)
        .insert(fallback.clone())
    {
        eprintln!(
            "note: MoE {} runs on tensor ops (slower): {}",
            fallback.op, fallback.reason
        );
    }
    RECORDED.with(|recorded| recorded.borrow_mut().push(fallback));
}

/// The fallbacks this thread took since the last call.
pub fn take_fallbacks() -> Vec<Fallback> {
    RECORDED.with(|recorded| recorded.borrow_mut().drain(..).collect())
}
