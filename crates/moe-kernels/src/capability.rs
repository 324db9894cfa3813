//! What a test does when the device lacks a capability it checks (a 16-bit type, tensor cores,
//! TMA): it says so and skips that part, or fails where the device is known to have everything.

/// The environment variable that turns every capability skip into a failure: the GPU runs in
/// `docs/GPU.md` set it, so a test cannot pass by skipping on a device that lost a capability.
pub const REQUIRE_GPU: &str = "MOE_REQUIRE_GPU";

/// Says that a test skips a part the device cannot run (`reason`); panics instead when
/// [`REQUIRE_GPU`] is set to anything but empty or `0`.
pub fn skip_capability(reason: &str) {
    let required = requires_capabilities(std::env::var(REQUIRE_GPU).ok().as_deref());
    assert!(!required, "{reason}, and {REQUIRE_GPU} is set");
    println!("{reason}: skipped");
}

/// Whether a [`REQUIRE_GPU`] of `value` (`None`: unset) forbids skipping.
fn requires_capabilities(value: Option<&str>) -> bool {
    value.is_some_and(|v| !v.is_empty() && v != "0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_set_non_zero_value_forbids_skipping() {
        assert!(!requires_capabilities(None));
        assert!(!requires_capabilities(Some("")));
        assert!(!requires_capabilities(Some("0")));
        assert!(requires_capabilities(Some("1")));
        assert!(requires_capabilities(Some("yes")));
    }
}
