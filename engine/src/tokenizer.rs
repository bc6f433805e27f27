//! Text to token ids and back, from a model directory's `tokenizer.json`.

use std::path::{Path, PathBuf};

use crate::EngineError;

/// A Hugging Face tokenizer loaded from `tokenizer.json`.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer").field("path", &self.path).finish()
    }
}

impl Tokenizer {
    /// Load `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<Self, EngineError> {
        let inner = tokenizers::Tokenizer::from_file(path).map_err(|e| EngineError::Tokenizer {
            path: path.to_owned(),
            problem: if path.exists() {
                format!("not a valid tokenizer.json ({e})")
            } else {
                "missing".into()
            },
        })?;
        Ok(Tokenizer { inner, path: path.to_owned() })
    }

    /// Token ids of `text`, special tokens written in the text included (as HF does for chat
    /// templates), with no BOS added (Qwen3 has none).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, EngineError> {
        let encoding = self.inner.encode(text, false).map_err(|e| self.error(e))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Text of `ids`, special tokens left out.
    pub fn decode(&self, ids: &[u32]) -> Result<String, EngineError> {
        self.inner.decode(ids, true).map_err(|e| self.error(e))
    }

    /// Tokens in the vocabulary, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    fn error(&self, e: tokenizers::Error) -> EngineError {
        EngineError::Tokenizer { path: self.path.clone(), problem: e.to_string() }
    }
}

/// Turns a growing list of token ids into text pieces as they become complete (a multi-byte
/// character split across tokens is held back until its last byte arrives), with tokenizers' own
/// streaming decoder: each token decodes a short window of ids, not the whole sequence again.
/// It owns its state and borrows the tokenizer only for a push, so a request can keep one while
/// the tokenizer is shared.
#[derive(Debug, Default, Clone)]
pub struct StreamDecoder {
    ids: Vec<u32>,
    prefix: String,
    prefix_index: usize,
}

impl StreamDecoder {
    /// Add one token; returns the new text it completes, if any (special tokens left out).
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> Result<String, EngineError> {
        let piece = tokenizers::tokenizer::step_decode_stream(
            &tokenizer.inner,
            vec![id],
            true,
            &mut self.ids,
            &mut self.prefix,
            &mut self.prefix_index,
        )
        .map_err(|e| tokenizer.error(e))?;
        Ok(piece.unwrap_or_default())
    }

    /// The text of the tokens pushed but not yet shown (the bytes of an unfinished character,
    /// decoded lossily as U+FFFD, as decoding the whole sequence shows them); empty if none.
    pub fn flush(&mut self, tokenizer: &Tokenizer) -> Result<String, EngineError> {
        let text = tokenizer.decode(&self.ids)?;
        let rest = text.strip_prefix(self.prefix.as_str()).unwrap_or_default().to_owned();
        self.prefix_index = self.ids.len();
        self.prefix = text;
        Ok(rest)
    }
}
