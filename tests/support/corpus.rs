//! A small generated corpus for the language-model tests (CI has no `data/corpus`).

use std::path::Path;

use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{RngExt, SeedableRng};
use sha2::{Digest, Sha256};

/// Writes a corpus laid out as `scripts/corpus` writes it: a few documents per source of
/// seeded pseudo-English sentences, with their sizes and sha256 in `manifest.tsv`.
pub fn write_corpus(dir: &Path) {
    let words = [
        "the", "of", "and", "to", "in", "a", "that", "he", "shall", "unto", "for", "his", "i",
        "with", "not", "all", "they", "be", "is", "him", "whale", "ship", "sea", "nation",
        "people", "congress", "lord", "king", "love", "night", "day", "upon", "great", "men",
    ];
    let mut rng = StdRng::seed_from_u64(11);
    let mut manifest =
        String::from("source\tpackage\tversion\tlicence\tcredit\tfile\tbytes\tsha256\n");
    for source in ["sotu", "shakespeare", "bible", "moby-dick"] {
        std::fs::create_dir_all(dir.join(source)).unwrap();
        for doc in 0..3 {
            let mut text = String::new();
            while text.len() < 3000 {
                let length = rng.random_range(4..12);
                let sentence: Vec<&str> = (0..length)
                    .map(|_| *words.choose(&mut rng).unwrap())
                    .collect();
                let sentence = sentence.join(" ");
                let mut chars = sentence.chars();
                let first = chars.next().unwrap().to_ascii_uppercase();
                text.push_str(&format!("{first}{}. ", chars.as_str()));
                if rng.random_range(0..5) == 0 {
                    text.push_str(&format!("{}\n", rng.random_range(1..2000)));
                }
            }
            let file = format!("{source}/doc-{doc}.txt");
            std::fs::write(dir.join(&file), &text).unwrap();
            let digest: String = Sha256::digest(text.as_bytes())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            manifest.push_str(&format!(
                "{source}\tpkg\t1.0\tCC0-1.0\tthe tests\t{file}\t{}\t{digest}\n",
                text.len()
            ));
        }
    }
    std::fs::write(dir.join("manifest.tsv"), manifest).unwrap();
}
