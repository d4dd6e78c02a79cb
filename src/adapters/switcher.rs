//! The switcher head: decides per prompt whether the reasoning adapter decodes it.
//!
//! File `switcher.safetensors` (written by `tools/train/switcher.py`): f32 tensors
//! `fc1.weight` [8, d], `fc1.bias` `[8]`, `fc2.weight` [1, 8], `fc2.bias` `[1]`; metadata
//! `format` = "edgereason-switcher-v1", `hidden_size` = d, `threshold` (probability),
//! `ema_alpha` (0.5). Input: the mean over the prompt's tokens of the base model's
//! final-norm hidden state, computed during the base prefill; over several prefill chunks,
//! an exponential moving average of the chunk means. p = σ(fc2·relu(fc1·x + b1) + b2);
//! reasoning on iff p ≥ threshold.

use super::AdapterError;
use std::path::Path;

/// A small MLP head read from a safetensors file with string metadata.
pub(crate) struct HeadFile {
    pub path: String,
    pub tensors: std::collections::HashMap<String, (Vec<usize>, Vec<f32>)>,
    pub meta: std::collections::HashMap<String, String>,
}

impl HeadFile {
    pub fn read(path: &Path, format: &str) -> Result<Self, AdapterError> {
        let shown = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|e| AdapterError::Io {
            path: shown.clone(),
            source: e,
        })?;
        let malformed = |what: String| AdapterError::Malformed {
            path: shown.clone(),
            what,
        };
        let (_, md) = safetensors::SafeTensors::read_metadata(&bytes)
            .map_err(|e| malformed(format!("safetensors header: {e}")))?;
        let meta = md.metadata().clone().unwrap_or_default();
        match meta.get("format") {
            Some(f) if f == format => {}
            other => {
                return Err(malformed(format!(
                    "metadata 'format' is {other:?}, expected \"{format}\""
                )))
            }
        }
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| malformed(format!("safetensors data: {e}")))?;
        let mut tensors = std::collections::HashMap::new();
        for (name, view) in st.tensors() {
            let data =
                crate::loader::hf_dir::to_f32(view.dtype(), view.data()).map_err(|what| {
                    AdapterError::BadTensor {
                        path: shown.clone(),
                        name: name.clone(),
                        what,
                    }
                })?;
            tensors.insert(name, (view.shape().to_vec(), data));
        }
        Ok(HeadFile {
            path: shown,
            tensors,
            meta: meta.into_iter().collect(),
        })
    }

    /// Tensor `name`, checked to have `shape`.
    pub fn tensor(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, AdapterError> {
        let (s, data) = self
            .tensors
            .get(name)
            .ok_or_else(|| AdapterError::Missing {
                path: self.path.clone(),
                what: format!("tensor '{name}'"),
            })?;
        if s != shape {
            return Err(AdapterError::BadTensor {
                path: self.path.clone(),
                name: name.into(),
                what: format!("shape {s:?}, expected {shape:?} (a head for another model?)"),
            });
        }
        Ok(data.clone())
    }

    /// Numeric metadata field, or `default` when absent.
    pub fn number(&self, field: &str, default: Option<f32>) -> Result<f32, AdapterError> {
        match self.meta.get(field) {
            Some(v) => v.trim().parse().map_err(|_| AdapterError::Malformed {
                path: self.path.clone(),
                what: format!("metadata '{field}': '{v}' is not a number"),
            }),
            None => default.ok_or_else(|| AdapterError::Missing {
                path: self.path.clone(),
                what: format!("metadata '{field}'"),
            }),
        }
    }
}

/// The switcher MLP d → 8 → 1 with its threshold.
#[derive(Clone, Debug)]
pub struct Switcher {
    pub hidden_size: usize,
    fc1_w: Vec<f32>,
    fc1_b: Vec<f32>,
    fc2_w: Vec<f32>,
    fc2_b: f32,
    /// Reasoning on iff the probability is at least this.
    pub threshold: f32,
    /// Weight of each new chunk mean in the pooled state.
    pub ema_alpha: f32,
}

/// Hidden width of the switcher MLP.
pub const SWITCHER_HIDDEN: usize = 8;

impl Switcher {
    /// Load and check against the model's hidden size `d`.
    pub fn load(path: &Path, d: usize) -> Result<Self, AdapterError> {
        let f = HeadFile::read(path, "edgereason-switcher-v1")?;
        let hidden = f.number("hidden_size", Some(d as f32))? as usize;
        if hidden != d {
            return Err(AdapterError::Malformed { path: f.path.clone(), what: format!("metadata 'hidden_size' is {hidden}, the model's is {d} (a head for another model?)") });
        }
        Ok(Switcher {
            hidden_size: d,
            fc1_w: f.tensor("fc1.weight", &[SWITCHER_HIDDEN, d])?,
            fc1_b: f.tensor("fc1.bias", &[SWITCHER_HIDDEN])?,
            fc2_w: f.tensor("fc2.weight", &[1, SWITCHER_HIDDEN])?,
            fc2_b: f.tensor("fc2.bias", &[1])?[0],
            threshold: f.number("threshold", Some(0.5))?,
            ema_alpha: f.number("ema_alpha", Some(0.5))?,
        })
    }

    /// A switcher from weights in memory (tests).
    pub fn from_weights(
        fc1_w: Vec<f32>,
        fc1_b: Vec<f32>,
        fc2_w: Vec<f32>,
        fc2_b: f32,
        threshold: f32,
    ) -> Self {
        Switcher {
            hidden_size: fc1_w.len() / SWITCHER_HIDDEN,
            fc1_w,
            fc1_b,
            fc2_w,
            fc2_b,
            threshold,
            ema_alpha: 0.5,
        }
    }

    /// Probability that the prompt whose pooled hidden state is `x` needs reasoning.
    pub fn probability(&self, x: &[f32]) -> f32 {
        let d = self.hidden_size;
        let z: f32 = (0..SWITCHER_HIDDEN)
            .map(|i| {
                let h = self.fc1_w[i * d..(i + 1) * d]
                    .iter()
                    .zip(x)
                    .map(|(w, v)| w * v)
                    .sum::<f32>()
                    + self.fc1_b[i];
                self.fc2_w[i] * h.max(0.0)
            })
            .sum::<f32>()
            + self.fc2_b;
        1.0 / (1.0 + (-z).exp())
    }

    /// Fold one prefill chunk's mean into the pooled state (the first chunk is taken as is).
    pub fn pool(&self, pooled: Option<Vec<f32>>, chunk_mean: &[f32]) -> Vec<f32> {
        match pooled {
            None => chunk_mean.to_vec(),
            Some(p) => p
                .iter()
                .zip(chunk_mean)
                .map(|(old, new)| self.ema_alpha * new + (1.0 - self.ema_alpha) * old)
                .collect(),
        }
    }
}
