//! Classes of bytes, the language model's counterpart of the task's easy and hard points: loss
//! and mean k are reported per class of the byte a position predicts, so a reader sees where the
//! router spends its second expert.

use serde::{Deserialize, Serialize};

/// What kind of byte a position predicts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ByteClass {
    /// ASCII letters.
    Letter,
    /// ASCII digits.
    Digit,
    /// Space, tab, newline and the other ASCII whitespace.
    Whitespace,
    /// ASCII punctuation and symbols.
    Punctuation,
    /// Bytes of non-ASCII characters, control bytes and the document boundary.
    Other,
}

impl ByteClass {
    /// Every class, in report order.
    pub const ALL: [ByteClass; 5] = [
        ByteClass::Letter,
        ByteClass::Digit,
        ByteClass::Whitespace,
        ByteClass::Punctuation,
        ByteClass::Other,
    ];

    /// The class of `token` (a byte, or a token past 255 such as the document boundary).
    pub fn of(token: u16) -> Self {
        match u8::try_from(token) {
            Ok(byte) if byte.is_ascii_alphabetic() => ByteClass::Letter,
            Ok(byte) if byte.is_ascii_digit() => ByteClass::Digit,
            Ok(byte) if byte.is_ascii_whitespace() => ByteClass::Whitespace,
            Ok(byte) if byte.is_ascii_punctuation() => ByteClass::Punctuation,
            _ => ByteClass::Other,
        }
    }

    /// The name used in tables and `metrics.json`.
    pub fn name(self) -> &'static str {
        match self {
            ByteClass::Letter => "letter",
            ByteClass::Digit => "digit",
            ByteClass::Whitespace => "whitespace",
            ByteClass::Punctuation => "punctuation",
            ByteClass::Other => "other",
        }
    }
}

/// Where a predicted byte sits in a word (a run of letters and digits).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WordPosition {
    /// The first letter or digit after anything else: the hardest byte of a word to predict.
    WordStart,
    /// A letter or digit after another one.
    WithinWord,
    /// Not a letter or digit.
    Outside,
}

impl WordPosition {
    /// Every position, in report order.
    pub const ALL: [WordPosition; 3] = [
        WordPosition::WordStart,
        WordPosition::WithinWord,
        WordPosition::Outside,
    ];

    /// The position of `token`, predicted after `previous` (the byte the model saw last).
    pub fn of(previous: u16, token: u16) -> Self {
        let in_word = |t: u16| matches!(ByteClass::of(t), ByteClass::Letter | ByteClass::Digit);
        match (in_word(previous), in_word(token)) {
            (_, false) => WordPosition::Outside,
            (false, true) => WordPosition::WordStart,
            (true, true) => WordPosition::WithinWord,
        }
    }

    /// The name used in tables and `metrics.json`.
    pub fn name(self) -> &'static str {
        match self {
            WordPosition::WordStart => "word-start",
            WordPosition::WithinWord => "within-word",
            WordPosition::Outside => "outside-word",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every byte against sets written out by hand (the ASCII table), not the std predicates.
    #[test]
    fn classes_match_the_ascii_table() {
        let letters = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
        let digits = b"0123456789";
        let whitespace = b" \t\n\x0c\r";
        let punctuation = b"!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";
        for token in 0u16..=256 {
            let byte = token as u8;
            let expected = if token > 255 {
                ByteClass::Other
            } else if letters.contains(&byte) {
                ByteClass::Letter
            } else if digits.contains(&byte) {
                ByteClass::Digit
            } else if whitespace.contains(&byte) {
                ByteClass::Whitespace
            } else if punctuation.contains(&byte) {
                ByteClass::Punctuation
            } else {
                ByteClass::Other
            };
            assert_eq!(ByteClass::of(token), expected, "token {token}");
        }
    }

    #[test]
    fn word_positions_follow_the_previous_byte() {
        let text = b"In 1776, a new-born nation";
        let positions: Vec<WordPosition> = text
            .windows(2)
            .map(|pair| WordPosition::of(pair[0] as u16, pair[1] as u16))
            .collect();
        let (s, w, o) = (
            WordPosition::WordStart,
            WordPosition::WithinWord,
            WordPosition::Outside,
        );
        // "n 1776, a new-born nation" predicted after "In 1776, a new-born natio"
        let expected = [
            w, o, s, w, w, w, o, o, s, o, s, w, w, o, s, w, w, w, o, s, w, w, w, w, w,
        ];
        assert_eq!(positions, expected);
        assert_eq!(WordPosition::of(256, b'T' as u16), s);
    }
}
