//! The verifier head: scores a finished candidate for the weighted vote.
//!
//! File `verifier.safetensors` (written by `tools/train/verifier.py`): f32 `linear.weight`
//! [1, d], `linear.bias` `[1]`; metadata `format` = "edgereason-verifier-v1", `hidden_size`,
//! `prompt` (the verification text). The candidate's stream is continued with the tokens
//! of `prompt` (after its generated tokens, without its EOS; the reasoning adapter on as
//! while decoding) and the final-norm hidden state at the last token gives
//! score = σ(w·h + b).

use super::switcher::HeadFile;
use super::AdapterError;
use std::path::Path;

/// Default verification text appended to each candidate.
pub const DEFAULT_PROMPT: &str = "\nIs this solution correct? Answer yes or no:";

#[derive(Clone, Debug)]
pub struct Verifier {
    pub hidden_size: usize,
    weight: Vec<f32>,
    bias: f32,
    /// Text appended to each candidate before scoring.
    pub prompt: String,
}

impl Verifier {
    /// Load and check against the model's hidden size `d`.
    pub fn load(path: &Path, d: usize) -> Result<Self, AdapterError> {
        let f = HeadFile::read(path, "edgereason-verifier-v1")?;
        let hidden = f.number("hidden_size", Some(d as f32))? as usize;
        if hidden != d {
            return Err(AdapterError::Malformed { path: f.path.clone(), what: format!("metadata 'hidden_size' is {hidden}, the model's is {d} (a head for another model?)") });
        }
        Ok(Verifier {
            hidden_size: d,
            weight: f.tensor("linear.weight", &[1, d])?,
            bias: f.tensor("linear.bias", &[1])?[0],
            prompt: f
                .meta
                .get("prompt")
                .cloned()
                .unwrap_or_else(|| DEFAULT_PROMPT.into()),
        })
    }

    /// A verifier from weights in memory (tests).
    pub fn from_weights(weight: Vec<f32>, bias: f32, prompt: &str) -> Self {
        Verifier {
            hidden_size: weight.len(),
            weight,
            bias,
            prompt: prompt.into(),
        }
    }

    /// σ(w·h + b) for the final-norm hidden state `h` at the verification prompt's end.
    pub fn score(&self, h: &[f32]) -> f32 {
        let z = self.weight.iter().zip(h).map(|(w, v)| w * v).sum::<f32>() + self.bias;
        1.0 / (1.0 + (-z).exp())
    }
}
