//! Tests of the corpus loader, the byte tokens, the split and the windows against plain
//! references (sha256 digests from `sha256sum`, published FNV-1a vectors, hand-built streams).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};

use super::corpus::{Corpus, CorpusConfig, CorpusError, Document, MANIFEST_HEADER};
use super::split::{fnv1a, split};
use super::tokens::{BOUNDARY, VOCAB_SIZE, decode, encode, token_stream};
use super::windows::{eval_windows, window_batch};

/// Texts of the tiny corpus with their sha256 as `sha256sum` prints them.
const ISHMAEL: (&str, &str) = (
    "Call me Ishmael.\n",
    "7376efceaacd85bc1d8dbfdaf8a17fb7c5ce4a31d2be652a52a8e834e09c4c7e",
);
const GENESIS: (&str, &str) = (
    "In the beginning\n",
    "e7dcaa9ea76759978d141b68181fa889dbf41031ec42022d7e7fff231bb6c037",
);
const HAMLET: (&str, &str) = (
    "To be, or not to be",
    "80ed7fc26bc0bbb12ef93ae6dbc4bdaae8262e83e65163626e57c24b8fc316a8",
);

/// A fresh empty directory under the system's temp directory.
fn temp_dir(test: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let dir = std::env::temp_dir().join(format!("lm-corpus-{test}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes a corpus as `scripts/corpus` lays it out: `(source, name, text, sha256)` documents.
fn write_corpus(dir: &Path, documents: &[(&str, &str, &str, &str)]) {
    let mut manifest = format!("{MANIFEST_HEADER}\n");
    for (source, name, text, sha256) in documents {
        std::fs::create_dir_all(dir.join(source)).unwrap();
        std::fs::write(dir.join(source).join(format!("{name}.txt")), text).unwrap();
        manifest.push_str(&format!(
            "{source}\tpkg\t1.0\tCC0-1.0\tsomeone\t{source}/{name}.txt\t{}\t{sha256}\n",
            text.len()
        ));
    }
    std::fs::write(dir.join("manifest.tsv"), manifest).unwrap();
}

fn tiny_corpus(test: &str) -> PathBuf {
    let dir = temp_dir(test);
    write_corpus(
        &dir,
        &[
            ("moby-dick", "chapter_1", ISHMAEL.0, ISHMAEL.1),
            ("bible", "01-Ge", GENESIS.0, GENESIS.1),
            ("shakespeare", "hamlet", HAMLET.0, HAMLET.1),
        ],
    );
    dir
}

fn strings(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn document(source: &str, name: &str, bytes: &[u8]) -> Document {
    Document {
        source: source.to_string(),
        name: name.to_string(),
        bytes: bytes.to_vec(),
    }
}

#[test]
fn loads_the_configured_sources_in_order_with_their_bytes() {
    let dir = tiny_corpus("load");
    let corpus = Corpus::load(&dir, &strings(&["shakespeare", "moby-dick"])).unwrap();
    assert_eq!(
        corpus.documents,
        vec![
            document("shakespeare", "hamlet", HAMLET.0.as_bytes()),
            document("moby-dick", "chapter_1", ISHMAEL.0.as_bytes()),
        ]
    );
    // A configured source the manifest lacks is left out (with a note); the others load.
    let corpus = Corpus::load(&dir, &strings(&["sotu", "bible"])).unwrap();
    assert_eq!(
        corpus.documents,
        vec![document("bible", "01-Ge", GENESIS.0.as_bytes())]
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn refuses_a_corpus_without_the_configured_sources() {
    let dir = tiny_corpus("no-source");
    let err = Corpus::load(&dir, &strings(&["sotu"])).unwrap_err();
    assert!(matches!(err, CorpusError::NoSource { .. }), "{err}");
    assert!(err.to_string().contains("just corpus"), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn refuses_an_unknown_source_naming_the_allowed_ones() {
    let dir = tiny_corpus("unknown");
    let err = Corpus::load(&dir, &strings(&["bible", "gutenberg"])).unwrap_err();
    assert!(
        matches!(&err, CorpusError::UnknownSource(s) if s == "gutenberg"),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("sotu, shakespeare, bible, moby-dick"),
        "{err}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_missing_manifest_points_at_just_corpus() {
    let dir = temp_dir("missing");
    let err = Corpus::load(&dir, &strings(&["bible"])).unwrap_err();
    assert!(matches!(err, CorpusError::MissingManifest(_)), "{err}");
    assert!(err.to_string().contains("run `just corpus`"), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn refuses_a_document_that_differs_from_the_manifest() {
    let dir = tiny_corpus("damaged");
    // Same size, one byte changed: only the sha256 can tell.
    std::fs::write(dir.join("bible/01-Ge.txt"), "In the Beginning\n").unwrap();
    let err = Corpus::load(&dir, &strings(&["bible"])).unwrap_err();
    assert!(matches!(err, CorpusError::DamagedDocument { .. }), "{err}");
    assert!(err.to_string().contains(GENESIS.1), "{err}");
    // A shorter file.
    std::fs::write(dir.join("bible/01-Ge.txt"), "In the").unwrap();
    let err = Corpus::load(&dir, &strings(&["bible"])).unwrap_err();
    assert!(
        err.to_string().contains("6 bytes, the manifest says 17"),
        "{err}"
    );
    // A missing one.
    std::fs::remove_file(dir.join("bible/01-Ge.txt")).unwrap();
    let err = Corpus::load(&dir, &strings(&["bible"])).unwrap_err();
    assert!(err.to_string().contains("missing"), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn refuses_a_manifest_file_outside_its_source() {
    let dir = temp_dir("traversal");
    let manifest = format!(
        "{MANIFEST_HEADER}\nbible\tpkg\t1\tPD\tx\tbible/../../secret.txt\t1\t{}\n",
        GENESIS.1
    );
    std::fs::write(dir.join("manifest.tsv"), manifest).unwrap();
    let err = Corpus::load(&dir, &strings(&["bible"])).unwrap_err();
    assert!(
        matches!(err, CorpusError::BadManifest { line: 2, .. }),
        "{err}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn byte_tokens_round_trip_exactly() {
    let mut rng = StdRng::seed_from_u64(7);
    let bytes: Vec<u8> = (0..10_000).map(|_| rng.random()).collect();
    let tokens = encode(&bytes);
    assert_eq!(tokens.len(), bytes.len());
    assert!(tokens.iter().zip(&bytes).all(|(&t, &b)| t == b as u16));
    assert_eq!(decode(&tokens, b""), bytes);
    assert_eq!(VOCAB_SIZE, BOUNDARY as usize + 1);
    assert_eq!(decode(&[104, BOUNDARY, 105], b"<|>"), b"h<|>i");
}

#[test]
fn a_stream_puts_a_boundary_before_each_document() {
    let documents = [
        document("bible", "a", b"ab"),
        document("sotu", "b", b""),
        document("sotu", "c", b"\xff"),
    ];
    assert_eq!(
        token_stream(&documents),
        vec![BOUNDARY, 97, 98, BOUNDARY, BOUNDARY, 255]
    );
}

#[test]
fn fnv1a_matches_the_published_vectors() {
    assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
    assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
}

/// 40 documents of three sources with distinct contents.
fn forty_documents() -> Vec<Document> {
    (0..40)
        .map(|i| {
            let source = ["sotu", "bible", "moby-dick"][i % 3];
            document(
                source,
                &format!("doc_{i:02}"),
                format!("text {i}").as_bytes(),
            )
        })
        .collect()
}

fn names(documents: &[Document]) -> Vec<(String, String)> {
    documents
        .iter()
        .map(|d| (d.source.clone(), d.name.clone()))
        .collect()
}

#[test]
fn the_split_is_disjoint_covers_every_document_and_ignores_file_order() {
    let documents = forty_documents();
    let splits = split(documents.clone(), 0.1, 0.2).unwrap();
    // round(40 * 0.1) = 4 valid, round(40 * 0.2) = 8 test, the rest train.
    assert_eq!(
        (splits.train.len(), splits.valid.len(), splits.test.len()),
        (28, 4, 8)
    );
    let mut seen = HashSet::new();
    for part in [&splits.train, &splits.valid, &splits.test] {
        for d in part.iter() {
            assert!(
                seen.insert((d.source.clone(), d.name.clone())),
                "{} in two splits",
                d.name
            );
            assert!(documents.contains(d), "{} changed", d.name);
        }
    }
    assert_eq!(seen.len(), documents.len());
    // The valid part is the 4 documents of smallest FNV-1a key, computed here from scratch.
    let mut by_key = documents.clone();
    by_key.sort_by_key(|d| fnv1a(format!("{}/{}", d.source, d.name).as_bytes()));
    let mut expected_valid = names(&by_key[..4]);
    expected_valid.sort();
    assert_eq!(names(&splits.valid), expected_valid);

    let mut rng = StdRng::seed_from_u64(3);
    for _ in 0..5 {
        let mut shuffled = documents.clone();
        shuffled.shuffle(&mut rng);
        let again = split(shuffled, 0.1, 0.2).unwrap();
        assert_eq!(names(&again.train), names(&splits.train));
        assert_eq!(names(&again.valid), names(&splits.valid));
        assert_eq!(names(&again.test), names(&splits.test));
    }
}

#[test]
fn every_split_is_non_empty_from_three_documents() {
    let documents = forty_documents();
    for n in 3..8 {
        for (valid, test) in [(0.05, 0.05), (0.45, 0.45), (0.9, 0.05)] {
            let splits = split(documents[..n].to_vec(), valid, test).unwrap();
            let sizes = [splits.train.len(), splits.valid.len(), splits.test.len()];
            assert!(sizes.iter().all(|&s| s >= 1), "n = {n}: {sizes:?}");
            assert_eq!(sizes.iter().sum::<usize>(), n);
        }
    }
    let err = split(documents[..2].to_vec(), 0.05, 0.05).unwrap_err();
    assert!(matches!(err, CorpusError::TooFewDocuments(2)), "{err}");
}

#[test]
fn random_windows_are_stream_slices_with_targets_shifted_by_one() {
    // Token i at position i: a window's first token is its start.
    let stream: Vec<u16> = (0..200).collect();
    let (context, batch) = (16, 500);
    let mut rng = StdRng::seed_from_u64(11);
    let (inputs, targets) = window_batch(&stream, context, batch, &mut rng).unwrap();
    assert_eq!(
        (inputs.len(), targets.len()),
        (batch * context, batch * context)
    );
    let mut starts = HashSet::new();
    for (row, target) in inputs.chunks(context).zip(targets.chunks(context)) {
        let start = row[0] as usize;
        assert_eq!(row, &stream[start..start + context]);
        assert_eq!(target, &stream[start + 1..start + 1 + context]);
        starts.insert(start);
    }
    // 500 draws over 184 starts reach both ends.
    assert!(
        starts.contains(&0) && starts.contains(&(200 - context - 1)),
        "{starts:?}"
    );
    assert!(starts.iter().all(|&s| s + context < stream.len()));
    // The same seed gives the same batch.
    let again = window_batch(&stream, context, batch, &mut StdRng::seed_from_u64(11)).unwrap();
    assert_eq!(again, (inputs, targets));
}

#[test]
fn windows_need_one_token_more_than_the_context() {
    let stream = [BOUNDARY, 1, 2, 3];
    let mut rng = StdRng::seed_from_u64(0);
    let (inputs, targets) = window_batch(&stream, 3, 2, &mut rng).unwrap();
    assert_eq!(
        (inputs, targets),
        (vec![BOUNDARY, 1, 2, BOUNDARY, 1, 2], vec![1, 2, 3, 1, 2, 3])
    );
    let err = window_batch(&stream, 4, 2, &mut rng).unwrap_err();
    assert!(
        matches!(
            err,
            CorpusError::StreamTooShort {
                tokens: 4,
                context: 4
            }
        ),
        "{err}"
    );
}

#[test]
fn eval_windows_predict_every_token_but_the_first_once() {
    let mut rng = StdRng::seed_from_u64(5);
    for (len, context) in [(101, 10), (100, 10), (2, 10), (1, 10), (0, 4), (57, 1)] {
        let stream: Vec<u16> = (0..len)
            .map(|_| rng.random_range(0..VOCAB_SIZE as u16))
            .collect();
        let windows: Vec<_> = eval_windows(&stream, context).collect();
        let inputs: Vec<u16> = windows.iter().flat_map(|w| w.0.iter().copied()).collect();
        let targets: Vec<u16> = windows.iter().flat_map(|w| w.1.iter().copied()).collect();
        let predicted = stream.len().saturating_sub(1);
        assert_eq!(inputs, stream[..predicted], "len {len}, context {context}");
        assert_eq!(
            targets,
            stream[stream.len().min(1)..],
            "len {len}, context {context}"
        );
        assert_eq!(windows.len(), predicted.div_ceil(context));
        for (i, (input, target)) in windows.iter().enumerate() {
            assert_eq!(input.len(), target.len());
            if i + 1 < windows.len() {
                assert_eq!(input.len(), context);
            }
        }
    }
}

#[test]
fn the_corpus_config_defaults_to_all_sources_and_names_a_bad_field() {
    let config: CorpusConfig = toml::from_str("test_fraction = 0.1").unwrap();
    assert_eq!(config.dir, Path::new("data/corpus"));
    assert_eq!(
        config.sources,
        strings(&["sotu", "shakespeare", "bible", "moby-dick"])
    );
    assert_eq!((config.valid_fraction, config.test_fraction), (0.05, 0.1));
    config.validate().unwrap();

    let bad = |text: &str| {
        toml::from_str::<CorpusConfig>(text)
            .unwrap()
            .validate()
            .unwrap_err()
    };
    assert_eq!(bad("valid_fraction = 0.0").field, "valid_fraction");
    assert_eq!(bad("test_fraction = 1.5").field, "test_fraction");
    assert_eq!(
        bad("valid_fraction = 0.6\ntest_fraction = 0.4").field,
        "test_fraction"
    );
    assert_eq!(bad("sources = []").field, "sources");
    assert_eq!(bad("sources = [\"bible\", \"bible\"]").field, "sources");
    let unknown = bad("sources = [\"bible\", \"gutenberg\"]");
    assert_eq!(unknown.field, "sources");
    assert!(unknown.to_string().contains("gutenberg"), "{unknown}");
}
