//! Two methods of a sweep side by side on one quantity, said in words with the seed spread.

use super::sweep_view::{MethodView, Spread};

/// `method` against `base` on one quantity.
#[derive(Clone, Debug)]
pub struct Comparison {
    /// The method looked at.
    pub method: String,
    /// What it is compared with.
    pub base: String,
    /// The method's value.
    pub value: Spread,
    /// The base's value.
    pub base_value: Spread,
}

impl Comparison {
    /// `method` against `base` on `quantity`; `None` if either lacks it.
    pub fn of(method: &MethodView, base: &MethodView, quantity: &str) -> Option<Self> {
        Some(Self {
            method: method.method.clone(),
            base: base.method.clone(),
            value: method.get(quantity)?,
            base_value: base.get(quantity)?,
        })
    }

    /// Relative difference, `value / base - 1`.
    pub fn relative(&self) -> f64 {
        self.value.mean / self.base_value.mean - 1.0
    }

    /// Whether the means differ by less than the larger of the two seed spreads (or either is
    /// one seed: then nothing can be said about noise and this is false).
    pub fn within_spread(&self) -> bool {
        let spread = self.value.std.max(self.base_value.std);
        spread > 0.0 && (self.value.mean - self.base_value.mean).abs() <= spread
    }

    /// E.g. `2.109 ± 0.004 against top2's 2.105 ± 0.003 (+0.2%, within the seed spread)`: the
    /// values times `scale`, with `digits` decimals.
    pub fn words(&self, scale: f64, digits: usize) -> String {
        let spread = match (self.within_spread(), self.value.std > 0.0) {
            (true, _) => ", within the seed spread",
            (false, true) => ", more than the seed spread",
            (false, false) => ", one seed",
        };
        format!(
            "{:.*} ± {:.*} against {}'s {:.*} ± {:.*} ({:+.1}%{spread})",
            digits,
            scale * self.value.mean,
            digits,
            scale * self.value.std,
            self.base,
            digits,
            scale * self.base_value.mean,
            digits,
            scale * self.base_value.std,
            100.0 * self.relative()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spread(mean: f64, std: f64) -> Spread {
        Spread { mean, std }
    }

    fn comparison(value: Spread, base: Spread) -> Comparison {
        Comparison {
            method: "budget-1.4".into(),
            base: "top2".into(),
            value,
            base_value: base,
        }
    }

    #[test]
    fn a_difference_inside_the_larger_spread_is_called_noise() {
        let close = comparison(spread(2.108, 0.004), spread(2.105, 0.003));
        assert!(close.within_spread());
        assert_eq!(
            close.words(1.0, 3),
            "2.108 ± 0.004 against top2's 2.105 ± 0.003 (+0.1%, within the seed spread)"
        );
        let apart = comparison(spread(2.20, 0.01), spread(2.10, 0.02));
        assert!(!apart.within_spread());
        assert!((apart.relative() - (2.20 / 2.10 - 1.0)).abs() < 1e-12);
        assert!(
            apart
                .words(1.0, 2)
                .ends_with("(+4.8%, more than the seed spread)")
        );
        let single = comparison(spread(2.0, 0.0), spread(2.0, 0.0));
        assert!(!single.within_spread(), "one seed says nothing of noise");
        assert!(single.words(100.0, 1).ends_with("one seed)"));
    }
}
