//! Dispatch: groups the routed (token, slot) pairs by expert, without capacity padding.

pub mod reference;
