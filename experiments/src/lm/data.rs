//! The token streams a language-model run reads: its corpus loaded, split by document and turned
//! into one stream per split.

use crate::error::ExperimentError;
use crate::lm::corpus::{Corpus, CorpusConfig};
use crate::lm::split::split;
use crate::lm::tokens::{Token, token_stream};

/// One token stream per split, and the sources they hold.
#[derive(Clone, Debug)]
pub struct TokenSplits {
    /// The training split's documents, each preceded by a boundary token.
    pub train: Vec<Token>,
    /// The validation split's.
    pub valid: Vec<Token>,
    /// The test split's.
    pub test: Vec<Token>,
    /// The sources that were loaded (a configured source that is not fetched is left out).
    pub sources: Vec<String>,
}

impl TokenSplits {
    /// Loads the corpus `config` names and splits it.
    pub fn load(config: &CorpusConfig) -> Result<Self, ExperimentError> {
        let corpus = Corpus::load(&config.dir, &config.sources)?;
        let mut sources: Vec<String> = Vec::new();
        for document in &corpus.documents {
            if !sources.contains(&document.source) {
                sources.push(document.source.clone());
            }
        }
        let splits = split(
            corpus.documents,
            config.valid_fraction,
            config.test_fraction,
        )?;
        Ok(Self {
            train: token_stream(&splits.train),
            valid: token_stream(&splits.valid),
            test: token_stream(&splits.test),
            sources,
        })
    }
}
