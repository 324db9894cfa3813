//! Small Markdown pieces the sweep's and the report's tables are made of.

use std::path::{Component, Path, PathBuf};

use crate::sweep::Spread;

/// A Markdown table with `headers` and `rows` (each as many cells as headers).
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut lines = vec![
        format!("| {} |", headers.join(" | ")),
        format!("|{}", " --- |".repeat(headers.len())),
    ];
    lines.extend(rows.iter().map(|row| format!("| {} |", row.join(" | "))));
    lines.join("\n")
}

/// `mean ± std` with `digits` decimals after scaling by `scale`; `-` when missing.
pub fn pm(spread: Option<Spread>, scale: f64, digits: usize) -> String {
    spread.map_or("-".into(), |s| {
        format!(
            "{:.*} ± {:.*}",
            digits,
            scale * s.mean,
            digits,
            scale * s.std
        )
    })
}

/// A number with `digits` decimals, `-` when missing.
pub fn number(value: Option<f64>, digits: usize) -> String {
    value.map_or("-".into(), |v| format!("{v:.digits$}"))
}

/// `target` as a link path from the directory of `document` (both relative to the same
/// directory, e.g. the repository): `docs/REPORT.md` links `results/x` as `../results/x`.
pub fn link_from(document: &Path, target: &Path) -> PathBuf {
    let base: Vec<Component> = document
        .parent()
        .map(|p| p.components().collect())
        .unwrap_or_default();
    let target_parts: Vec<Component> = target.components().collect();
    let common = base
        .iter()
        .zip(&target_parts)
        .take_while(|(a, b)| a == b)
        .count();
    let mut link = PathBuf::new();
    for _ in common..base.len() {
        link.push("..");
    }
    for part in &target_parts[common..] {
        link.push(part);
    }
    link
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_climb_out_of_the_document_directory_only_as_far_as_needed() {
        let doc = Path::new("docs/REPORT.md");
        assert_eq!(
            link_from(doc, Path::new("results/sweep-lm/pareto.png")),
            Path::new("../results/sweep-lm/pareto.png")
        );
        assert_eq!(
            link_from(doc, Path::new("docs/results/sweep-lm/pareto.png")),
            Path::new("results/sweep-lm/pareto.png")
        );
        assert_eq!(
            link_from(Path::new("REPORT.md"), Path::new("results/a.png")),
            Path::new("results/a.png")
        );
    }

    #[test]
    fn tables_and_spreads_print_as_markdown() {
        let rows = vec![vec!["a".to_string(), "1".to_string()]];
        assert_eq!(
            table(&["x", "y"], &rows),
            "| x | y |\n| --- | --- |\n| a | 1 |"
        );
        let spread = Spread {
            mean: 0.123,
            std: 0.0046,
        };
        assert_eq!(pm(Some(spread), 100.0, 1), "12.3 ± 0.5");
        assert_eq!(pm(None, 1.0, 3), "-");
        assert_eq!(number(Some(2.0), 2), "2.00");
    }
}
