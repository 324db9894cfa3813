//! The corpus that `scripts/corpus` writes: `<dir>/manifest.tsv` and one text file per document,
//! checked against the manifest's sizes and sha256 when loaded.

use std::path::{Path, PathBuf};

use moe_model::InvalidValue;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The corpus's sources, as `scripts/corpus --only` and the manifest name them.
pub const SOURCES: [&str; 4] = ["sotu", "shakespeare", "bible", "moby-dick"];

/// The manifest's header line: one document per following line, tab-separated.
pub const MANIFEST_HEADER: &str = "source\tpackage\tversion\tlicence\tcredit\tfile\tbytes\tsha256";

/// The manifest's file name inside the corpus directory.
pub const MANIFEST: &str = "manifest.tsv";

/// Why the corpus could not be loaded or split.
#[derive(Debug, thiserror::Error)]
pub enum CorpusError {
    /// No manifest: the corpus was never fetched.
    #[error("{0}: no corpus here; run `just corpus` (or `bash scripts/corpus`) to fetch it")]
    MissingManifest(PathBuf),
    /// A source name that is not one of [`SOURCES`].
    #[error("unknown corpus source `{0}`; the sources are: sotu, shakespeare, bible, moby-dick")]
    UnknownSource(String),
    /// None of the configured sources is in the manifest.
    #[error(
        "{manifest}: holds none of the sources {wanted}; run `just corpus --force` (or `bash scripts/corpus --force`) to fetch them"
    )]
    NoSource {
        /// The manifest.
        manifest: PathBuf,
        /// The configured sources, comma-separated.
        wanted: String,
    },
    /// A line of the manifest that `scripts/corpus` would not have written.
    #[error("{path}: line {line}: {reason}; run `just corpus --force` to fetch the corpus again")]
    BadManifest {
        /// The manifest.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// A document file that is missing or differs from its manifest entry.
    #[error("{path}: {reason}; run `just corpus --force` to fetch the corpus again")]
    DamagedDocument {
        /// The document file.
        path: PathBuf,
        /// What differs, e.g. `1200 bytes, the manifest says 1204`.
        reason: String,
    },
    /// A file that exists but could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The system error.
        source: std::io::Error,
    },
    /// Fewer documents than splits.
    #[error(
        "the corpus has {0} document(s); train, valid and test need at least 3 (add sources to corpus.sources)"
    )]
    TooFewDocuments(usize),
    /// A token stream shorter than one window and its target.
    #[error(
        "a split of {tokens} tokens is too short for windows of {context} tokens; lower the context or add sources"
    )]
    StreamTooShort {
        /// Tokens in the stream.
        tokens: usize,
        /// Tokens per window.
        context: usize,
    },
}

/// One document of the corpus: a whole work, book, chapter or address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Document {
    /// Its source, one of [`SOURCES`].
    pub source: String,
    /// Its file name without `.txt`, unique within the source.
    pub name: String,
    /// Its text as stored (UTF-8 or ASCII; the model sees bytes).
    pub bytes: Vec<u8>,
}

/// The documents of the configured sources, in manifest order.
#[derive(Clone, Debug)]
pub struct Corpus {
    /// Every document of the loaded sources.
    pub documents: Vec<Document>,
}

impl Corpus {
    /// Reads `dir/manifest.tsv` and the documents of `sources`, checking each file's size and
    /// sha256. A source missing from the manifest is left out with a note on stderr; an error
    /// if none is there.
    pub fn load(dir: &Path, sources: &[String]) -> Result<Corpus, CorpusError> {
        if let Some(unknown) = sources.iter().find(|s| !SOURCES.contains(&s.as_str())) {
            return Err(CorpusError::UnknownSource(unknown.clone()));
        }
        let manifest = dir.join(MANIFEST);
        let text = match std::fs::read_to_string(&manifest) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(CorpusError::MissingManifest(manifest));
            }
            Err(source) => {
                return Err(CorpusError::Io {
                    path: manifest,
                    source,
                });
            }
        };
        let entries = parse_manifest(&text, &manifest)?;
        let mut documents = Vec::new();
        let mut found = Vec::new();
        for source in sources {
            let mut any = false;
            for entry in entries.iter().filter(|e| &e.source == source) {
                documents.push(read_document(dir, entry)?);
                any = true;
            }
            if any {
                found.push(source);
            } else {
                eprintln!(
                    "note: corpus source `{source}` is not in {}; going on without it (run `just corpus --force` to fetch it)",
                    manifest.display()
                );
            }
        }
        if found.is_empty() {
            return Err(CorpusError::NoSource {
                manifest,
                wanted: sources.join(", "),
            });
        }
        Ok(Corpus { documents })
    }
}

/// One document line of the manifest.
struct ManifestEntry {
    source: String,
    name: String,
    file: String,
    bytes: u64,
    sha256: String,
}

/// The document lines of `text`, checked for shape: eight columns, a known source, a file
/// `<source>/<name>.txt`, a byte count and a sha256 in hex.
fn parse_manifest(text: &str, path: &Path) -> Result<Vec<ManifestEntry>, CorpusError> {
    let bad = |line: usize, reason: String| CorpusError::BadManifest {
        path: path.to_path_buf(),
        line,
        reason,
    };
    let mut lines = text.lines().enumerate();
    match lines.next() {
        Some((_, header)) if header == MANIFEST_HEADER => {}
        _ => return Err(bad(1, format!("expected the header `{MANIFEST_HEADER}`"))),
    }
    let mut entries = Vec::new();
    for (index, line) in lines {
        let number = index + 1;
        let columns: Vec<&str> = line.split('\t').collect();
        let [
            source,
            _package,
            _version,
            _licence,
            _credit,
            file,
            bytes,
            sha256,
        ] = columns[..]
        else {
            return Err(bad(
                number,
                format!("{} columns, expected 8", columns.len()),
            ));
        };
        if !SOURCES.contains(&source) {
            return Err(bad(number, format!("unknown source `{source}`")));
        }
        let name = file
            .strip_prefix(source)
            .and_then(|rest| rest.strip_prefix('/'))
            .and_then(|rest| rest.strip_suffix(".txt"))
            .filter(|name| !name.is_empty() && !name.contains('/') && !name.starts_with('.'))
            .ok_or_else(|| bad(number, format!("file `{file}` is not {source}/<name>.txt")))?;
        let bytes = bytes
            .parse()
            .map_err(|_| bad(number, format!("bytes `{bytes}` is not a byte count")))?;
        if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad(
                number,
                format!("sha256 `{sha256}` is not 64 hex digits"),
            ));
        }
        entries.push(ManifestEntry {
            source: source.to_string(),
            name: name.to_string(),
            file: file.to_string(),
            bytes,
            sha256: sha256.to_ascii_lowercase(),
        });
    }
    Ok(entries)
}

/// Reads the document of `entry` and checks its size and sha256 against the manifest.
fn read_document(dir: &Path, entry: &ManifestEntry) -> Result<Document, CorpusError> {
    let path = dir.join(&entry.file);
    let damaged = |reason: String| CorpusError::DamagedDocument {
        path: path.clone(),
        reason,
    };
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(damaged("missing".to_string()));
        }
        Err(source) => return Err(CorpusError::Io { path, source }),
    };
    if bytes.len() as u64 != entry.bytes {
        return Err(damaged(format!(
            "{} bytes, the manifest says {}",
            bytes.len(),
            entry.bytes
        )));
    }
    let sha256 = hex(&Sha256::digest(&bytes));
    if sha256 != entry.sha256 {
        return Err(damaged(format!(
            "sha256 {sha256}, the manifest says {}",
            entry.sha256
        )));
    }
    Ok(Document {
        source: entry.source.clone(),
        name: entry.name.clone(),
        bytes,
    })
}

/// Lower-case hex digits of `bytes`.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The `[corpus]` table of a language-model config: where the corpus is, which sources to
/// train on and how much of it to hold out.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CorpusConfig {
    /// The directory `scripts/corpus --dir` wrote.
    pub dir: PathBuf,
    /// Sources to load, from [`SOURCES`].
    pub sources: Vec<String>,
    /// Fraction of the documents held out for validation.
    pub valid_fraction: f64,
    /// Fraction of the documents held out for the test.
    pub test_fraction: f64,
}

impl Default for CorpusConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("data/corpus"),
            sources: SOURCES.iter().map(|s| s.to_string()).collect(),
            valid_fraction: 0.05,
            test_fraction: 0.05,
        }
    }
}

impl CorpusConfig {
    /// Checks every field against its allowed range.
    pub fn validate(&self) -> Result<(), InvalidValue> {
        let allowed = "each must be one of sotu, shakespeare, bible, moby-dick, at most once";
        if self.sources.is_empty() {
            return Err(InvalidValue::new("sources", "[]", allowed));
        }
        for (i, source) in self.sources.iter().enumerate() {
            if !SOURCES.contains(&source.as_str()) || self.sources[..i].contains(source) {
                return Err(InvalidValue::new(
                    "sources",
                    format!("{:?}", self.sources),
                    allowed,
                ));
            }
        }
        for (field, value) in [
            ("valid_fraction", self.valid_fraction),
            ("test_fraction", self.test_fraction),
        ] {
            if !(value > 0.0 && value < 1.0) {
                return Err(InvalidValue::new(field, value, "must be in (0, 1)"));
            }
        }
        if self.valid_fraction + self.test_fraction >= 1.0 {
            return Err(InvalidValue::new(
                "test_fraction",
                self.test_fraction,
                format!(
                    "valid_fraction + test_fraction must be < 1 (valid_fraction = {})",
                    self.valid_fraction
                ),
            ));
        }
        Ok(())
    }
}
