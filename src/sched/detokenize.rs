//! Incremental detokenization: each new token's text comes from decoding a short window of
//! the latest tokens, not the whole stream (the method of HF's `DecodeStream` and vLLM), so
//! a step's host cost does not grow with the reply.
//!
//! The window starts at the last token whose text was settled (`prefix`): decoding
//! `tokens[prefix..read]` and `tokens[prefix..]` and taking the difference keeps whatever
//! context the tokenizer's decoder needs (a leading space, a byte-level merge) and holds a
//! token back while it ends inside a UTF-8 character.

use anyhow::{anyhow, Result};

/// The text of a growing token sequence.
#[derive(Clone, Debug, Default)]
pub struct IncrementalText {
    skip_special: bool,
    /// Start of the decoding window.
    prefix: usize,
    /// Tokens before this are in `text`.
    read: usize,
    /// Everything settled so far.
    pub text: String,
}

impl IncrementalText {
    /// `skip_special`: leave special tokens (`<|im_end|>`) out of the text, as
    /// `Engine::decode` does.
    pub fn new(skip_special: bool) -> Self {
        IncrementalText {
            skip_special,
            ..Default::default()
        }
    }

    /// `tokens` is the whole sequence so far (it only grows); returns the text the new
    /// tokens add, "" while the last one ends inside a UTF-8 character.
    ///
    /// ```no_run
    /// # fn main() -> anyhow::Result<()> {
    /// # let engine = edgereason::engine::Engine::load("smollm2-135m", &Default::default())?;
    /// use edgereason::sched::detokenize::IncrementalText;
    /// let ids = engine.encode("naïve café ☕")?;
    /// let mut text = IncrementalText::new(true);
    /// for n in 1..=ids.len() {
    ///     print!("{}", text.push(&engine.tokenizer, &ids[..n])?);
    /// }
    /// assert_eq!(text.text, engine.decode(&ids)?);
    /// # Ok(()) }
    /// ```
    pub fn push(&mut self, tokenizer: &tokenizers::Tokenizer, tokens: &[u32]) -> Result<&str> {
        let decode = |ids: &[u32]| {
            tokenizer
                .decode(ids, self.skip_special)
                .map_err(|e| anyhow!("tokenizer: {e}"))
        };
        let before = decode(&tokens[self.prefix..self.read])?;
        let now = decode(&tokens[self.prefix..])?;
        if now.len() <= before.len() || now.ends_with('\u{FFFD}') {
            return Ok("");
        }
        // The window's earlier text does not change in practice; if a decoder ever rewrote
        // it, keep what was already given out and add what follows it.
        let Some(delta) = now.get(before.len()..) else {
            return Ok("");
        };
        let start = self.text.len();
        self.text.push_str(delta);
        self.prefix = self.read;
        self.read = tokens.len();
        Ok(&self.text[start..])
    }
}
