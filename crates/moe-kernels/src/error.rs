//! The one error type for values a user or caller got wrong.

/// A value outside the range an operation accepts: names the field, the value and what is allowed,
/// so the message alone tells a user what to change.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field} = {value} is invalid: {allowed}")]
pub struct InvalidValue {
    /// Dotted path of the offending field, e.g. `routing.k` or `model.ffn.num_experts`.
    pub field: String,
    /// The value that was given, as the user wrote it.
    pub value: String,
    /// What would have been accepted, e.g. `must be in 1..=8 (num_experts)`.
    pub allowed: String,
}

impl InvalidValue {
    /// An error for `field`, which holds `value` but must satisfy `allowed`.
    pub fn new(field: impl Into<String>, value: impl ToString, allowed: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            value: value.to_string(),
            allowed: allowed.into(),
        }
    }

    /// The same error seen from an enclosing section: `k` inside `routing` becomes `routing.k`.
    pub fn within(mut self, section: &str) -> Self {
        self.field = format!("{section}.{}", self.field);
        self
    }
}

/// Why a kernel did not run: the caller's input was wrong, or the kernel does not cover this
/// shape or device (a caller may then take a slower path, and should say so).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum KernelError {
    /// A value the caller got wrong (a shape mismatch, a short buffer).
    #[error(transparent)]
    Invalid(#[from] InvalidValue),
    /// Valid input the kernel does not handle, e.g. more routing slots than it keeps in
    /// registers, or a tile that does not fit the device's shared memory.
    #[error("not supported by the kernel: {0}")]
    Unsupported(String),
}
