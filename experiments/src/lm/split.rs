//! The split of the corpus into train, valid and test, by whole documents.
//!
//! Each document gets a key, the 64-bit FNV-1a hash of `<source>/<name>`; documents in key order
//! (ties by source and name) are cut by document count: the first `round(n * valid_fraction)`
//! go to valid, the next `round(n * test_fraction)` to test (each at least 1, leaving train at
//! least 1), the rest to train. The split depends only on the documents' names and the fractions,
//! never on the order they were read in.

use super::corpus::{CorpusError, Document};

/// The corpus's documents by split, each part in (source, name) order.
#[derive(Clone, Debug)]
pub struct Splits {
    /// Documents to train on.
    pub train: Vec<Document>,
    /// Documents for validation during training.
    pub valid: Vec<Document>,
    /// Documents for the final evaluation.
    pub test: Vec<Document>,
}

/// Splits `documents` as the module docs describe; at least 3 documents are needed.
pub fn split(
    mut documents: Vec<Document>,
    valid_fraction: f64,
    test_fraction: f64,
) -> Result<Splits, CorpusError> {
    let n = documents.len();
    if n < 3 {
        return Err(CorpusError::TooFewDocuments(n));
    }
    let valid_count = share(n, valid_fraction).clamp(1, n - 2);
    let test_count = share(n, test_fraction).clamp(1, n - 1 - valid_count);
    documents.sort_by_cached_key(|d| (split_key(d), d.source.clone(), d.name.clone()));
    let mut test: Vec<Document> = documents.split_off(valid_count);
    let mut train = test.split_off(test_count);
    let mut valid = documents;
    for part in [&mut train, &mut valid, &mut test] {
        part.sort_by(|a, b| (&a.source, &a.name).cmp(&(&b.source, &b.name)));
    }
    Ok(Splits { train, valid, test })
}

/// `round(n * fraction)`, 0 for a fraction that is not a positive number.
fn share(n: usize, fraction: f64) -> usize {
    (n as f64 * fraction).round() as usize
}

/// The document's place in the split order: the FNV-1a hash of `<source>/<name>`.
fn split_key(document: &Document) -> u64 {
    fnv1a(format!("{}/{}", document.source, document.name).as_bytes())
}

/// 64-bit FNV-1a hash of `bytes`: fixed across platforms and Rust versions.
pub(super) fn fnv1a(bytes: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0100_0000_01b3;
    bytes.iter().fold(OFFSET_BASIS, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(PRIME)
    })
}
