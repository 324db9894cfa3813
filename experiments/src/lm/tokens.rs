//! Byte-level tokens: the 256 byte values and one document boundary.

use super::corpus::Document;

/// One token: a byte value `0..=255`, or [`BOUNDARY`].
pub type Token = u16;

/// The token that precedes every document in a stream.
pub const BOUNDARY: Token = 256;

/// Number of distinct tokens: 256 bytes and [`BOUNDARY`].
pub const VOCAB_SIZE: usize = 257;

/// The tokens of `bytes`, one per byte.
pub fn encode(bytes: &[u8]) -> Vec<Token> {
    bytes.iter().map(|&b| Token::from(b)).collect()
}

/// The bytes of `tokens`, with each [`BOUNDARY`] written as `boundary` (e.g. `b"\n\n"`, or `b""`
/// to drop it); `decode(&encode(b), b"") == b`.
pub fn decode(tokens: &[Token], boundary: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(tokens.len());
    for &token in tokens {
        match u8::try_from(token) {
            Ok(byte) => bytes.push(byte),
            Err(_) => bytes.extend_from_slice(boundary),
        }
    }
    bytes
}

/// Tokens as the integer ids a Burn tensor is made from.
pub fn as_ids(tokens: &[Token]) -> Vec<i64> {
    tokens.iter().map(|&t| i64::from(t)).collect()
}

/// One stream of `documents`: each document's bytes preceded by [`BOUNDARY`].
pub fn token_stream(documents: &[Document]) -> Vec<Token> {
    let total: usize = documents.iter().map(|d| d.bytes.len() + 1).sum();
    let mut stream = Vec::with_capacity(total);
    for document in documents {
        stream.push(BOUNDARY);
        stream.extend(document.bytes.iter().map(|&b| Token::from(b)));
    }
    stream
}
