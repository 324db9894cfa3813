//! Which experts an offloaded model has on the device when a block runs, and when they come.

use std::fmt;
use std::str::FromStr;

/// How expert weights reach the device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OffloadPolicy {
    /// Every expert of every block stays on the device: no copies (the latency floor).
    Resident,
    /// After the router of a block decides, the host copies the missing experts and waits.
    OnDemand,
    /// When block `l` starts, the experts a predictor expects block `l + distance` to use are
    /// copied on the copy stream; what it missed is loaded on demand.
    Prefetch {
        /// The predictor's name (as in the routing trace).
        predictor: String,
    },
    /// Prefetch of the experts block `l + distance` really uses: the upper bound of prefetching.
    Oracle,
}

impl OffloadPolicy {
    /// Whether the host must read each block's routing before the block's experts run (every
    /// policy but `resident`, whose layer routes on the device).
    pub fn reads_routing(&self) -> bool {
        *self != OffloadPolicy::Resident
    }
}

impl fmt::Display for OffloadPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OffloadPolicy::Resident => write!(f, "resident"),
            OffloadPolicy::OnDemand => write!(f, "on-demand"),
            OffloadPolicy::Prefetch { predictor } => write!(f, "prefetch:{predictor}"),
            OffloadPolicy::Oracle => write!(f, "oracle"),
        }
    }
}

/// A policy name that is none of `resident`, `on-demand`, `prefetch:<predictor>`, `oracle`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown offload policy `{0}`: use resident, on-demand, prefetch (every predictor), prefetch:<predictor> or oracle"
)]
pub struct UnknownPolicy(pub String);

impl FromStr for OffloadPolicy {
    type Err = UnknownPolicy;

    /// Parses `resident`, `on-demand`, `oracle` or `prefetch:<predictor>` (a bare `prefetch`,
    /// which means every predictor of a trace, is expanded by the caller).
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name {
            "resident" => Ok(Self::Resident),
            "on-demand" => Ok(Self::OnDemand),
            "oracle" => Ok(Self::Oracle),
            _ => match name.strip_prefix("prefetch:") {
                Some(predictor) if !predictor.is_empty() => Ok(Self::Prefetch {
                    predictor: predictor.to_string(),
                }),
                _ => Err(UnknownPolicy(name.to_string())),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_are_refused() {
        for name in ["resident", "on-demand", "oracle", "prefetch:fate"] {
            let policy: OffloadPolicy = name.parse().unwrap();
            assert_eq!(policy.to_string(), name);
        }
        for bad in ["lru", "prefetch:", "ondemand", ""] {
            let error = bad.parse::<OffloadPolicy>().unwrap_err().to_string();
            assert!(error.contains("unknown offload policy"), "{error}");
        }
    }
}
