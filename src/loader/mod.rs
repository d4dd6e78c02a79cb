//! Model files → one host-side weight set.
//!
//! Every format (GGUF, an HF safetensors directory, the engine's own pre-quantized
//! safetensors) is read into a [`HostModel`]: a [`ModelConfig`], tensors under
//! GGUF-style canonical names, a tokenizer and a chat template. Tensors are in the HF
//! convention whatever the file: llama Q/K rows are un-permuted on GGUF load, so the
//! engine has one RoPE convention (rotate-half).
//!
//! Canonical names (`N` = layer):
//! `token_embd.weight` [n_vocab, n_embd], `output_norm.weight` `[n_embd]`,
//! `output.weight` [n_vocab, n_embd] (absent when tied),
//! `blk.N.attn_norm.weight`, `blk.N.ffn_norm.weight` `[n_embd]`,
//! `blk.N.attn_q.weight` [n_head*head_dim, n_embd], `blk.N.attn_k.weight` / `attn_v.weight`
//! [n_kv_head*head_dim, n_embd], `blk.N.attn_{q,k,v}.bias` (qwen2), `blk.N.attn_output.weight`
//! [n_embd, n_head*head_dim], `blk.N.ffn_gate.weight` / `ffn_up.weight` [n_ff, n_embd],
//! `blk.N.ffn_down.weight` [n_embd, n_ff].

pub mod chat_template;
pub mod ggml_quants;
pub mod gguf;
pub mod gguf_model;
pub mod gguf_writer;
pub mod hf_dir;
pub mod prequant;
pub mod synthetic;
pub mod tokenizer;

use std::collections::HashMap;
use std::path::Path;

/// One group of 32 weights in the engine's int4 layout: `w[i] = scale * q[i] + min`,
/// `q[i]` in 0..=15. GGUF Q4_0, Q4_1 and Q4_K map onto it exactly.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Q4Group {
    pub scale: f32,
    pub min: f32,
    pub q: [u8; 32],
}

/// One group of 32 weights in the engine's int8 layout: `w[i] = scale * q[i]`. GGUF Q8_0
/// maps onto it exactly; Q5_0, Q5_1, Q5_K and Q6_K tensors are re-quantized to it (an
/// error well under their own step size), so they keep (nearly) their precision.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Q8Group {
    pub scale: f32,
    pub q: [i8; 32],
}

/// Host tensor payload: plain floats, or int4/int8 groups.
#[derive(Clone, Debug)]
pub enum TensorData {
    F32(Vec<f32>),
    /// Row-major groups: row r holds groups `r * cols/32 .. (r+1) * cols/32`.
    Q4(Vec<Q4Group>),
    /// Row-major int8 groups, as `Q4`.
    Q8(Vec<Q8Group>),
}

/// A tensor as loaded. `shape` is row-major, last dimension contiguous (`[rows, cols]`).
#[derive(Clone, Debug)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: TensorData,
}

impl HostTensor {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Plain f32 values (dequantizing int4 groups).
    pub fn to_f32(&self) -> Vec<f32> {
        match &self.data {
            TensorData::F32(v) => v.clone(),
            TensorData::Q4(groups) => groups
                .iter()
                .flat_map(|g| g.q.iter().map(move |&q| g.scale * q as f32 + g.min))
                .collect(),
            TensorData::Q8(groups) => groups
                .iter()
                .flat_map(|g| g.q.iter().map(move |&q| g.scale * q as f32))
                .collect(),
        }
    }
}

/// Which forward pass a model needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// Qwen2 / Qwen2.5: Llama plus biases on Q, K, V.
    Qwen2,
    /// Llama family (SmolLM2).
    Llama,
}

/// Hyper-parameters of a decoder-only transformer, named as in llama.cpp.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ModelConfig {
    pub arch: Arch,
    pub n_vocab: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
    pub n_ff: usize,
    pub rope_theta: f32,
    pub rms_eps: f32,
    /// Trained context length.
    pub n_ctx: usize,
    /// LM head shares `token_embd.weight`.
    pub tied_embeddings: bool,
}

/// Everything the engine needs from model files, on the host.
pub struct HostModel {
    pub config: ModelConfig,
    pub tensors: HashMap<String, HostTensor>,
    pub tokenizer: tokenizers::Tokenizer,
    /// Jinja chat template (tokenizer_config.json `chat_template` or GGUF
    /// `tokenizer.chat_template`).
    pub chat_template: Option<String>,
    pub bos_token_id: Option<u32>,
    /// Tokens that end generation (EOS plus e.g. `<|im_end|>` / `<|endoftext|>`).
    pub eos_token_ids: Vec<u32>,
    /// Whether the tokenizer expects BOS prepended to a prompt.
    pub add_bos: bool,
    /// Human-readable source description (path, format, file types).
    pub source: String,
}

/// Errors callers branch on when loading model files.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The file is not what it claims, or is cut short. `what` names the field.
    #[error("{path}: malformed file: {what}")]
    Malformed { path: String, what: String },
    #[error("{path}: unsupported architecture '{arch}' (supported: qwen2, llama)")]
    UnknownArch { path: String, arch: String },
    #[error("{path}: tensor '{name}': {what}")]
    BadTensor {
        path: String,
        name: String,
        what: String,
    },
    #[error("{path}: missing {what}")]
    Missing { path: String, what: String },
    #[error("{path}: tokenizer: {what}")]
    Tokenizer { path: String, what: String },
    /// A valid model the kernels cannot run.
    #[error("{path}: unsupported: {what}")]
    Unsupported { path: String, what: String },
}

/// Head sizes the attention kernels take: ≤ 256 dims and a multiple of 8 (the cache is
/// then read four words, eight dims, per load), or ≤ 128 and a multiple of 4 (a word per
/// load; one lane per word covers the head).
pub fn head_dim_supported(head_dim: usize) -> bool {
    let quads = head_dim > 0 && head_dim.is_multiple_of(8);
    (head_dim <= 256 && quads) || (head_dim > 0 && head_dim <= 128 && head_dim.is_multiple_of(4))
}

impl ModelConfig {
    /// What in this configuration the GPU kernels cannot run, if anything (checked when a
    /// model is uploaded: a file can claim any shape, and the launchers assume these).
    pub fn unsupported(&self) -> Option<String> {
        let hd = self.head_dim;
        if !head_dim_supported(hd) {
            return Some(format!(
                "head_dim {hd} (attention takes a multiple of 8 up to 256, or of 4 up to 128)"
            ));
        }
        if self.n_vocab == 0 || self.n_vocab >= 1 << 24 {
            return Some(format!(
                "vocabulary of {} tokens (the GPU sampler takes 1 to 2^24 - 1)",
                self.n_vocab
            ));
        }
        for (name, v) in [("n_embd", self.n_embd), ("n_ff", self.n_ff)] {
            if v == 0 || !v.is_multiple_of(32) {
                return Some(format!("{name} {v} (int4 groups need a multiple of 32)"));
            }
        }
        None
    }
}

/// Quantize one row of f32 weights (length a multiple of 32) to int4 groups:
/// asymmetric min/max per group, scale and min rounded to f16 (what the GPU stores), so
/// quantizing already-quantized values gives them back.
///
/// # Panics
/// If the row's length is not a multiple of 32 (callers check the shape first).
pub fn quantize_q4(row: &[f32]) -> Vec<Q4Group> {
    assert!(
        row.len().is_multiple_of(32),
        "row length {} is not a multiple of 32",
        row.len()
    );
    row.chunks_exact(32)
        .map(|g| {
            let (mn, mx) = g
                .iter()
                .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &w| {
                    (a.min(w), b.max(w))
                });
            let min = half::f16::from_f32(mn).to_f32();
            let scale = half::f16::from_f32((mx - min) / 15.0).to_f32();
            let mut q = [0u8; 32];
            if scale > 0.0 {
                for (qi, &w) in q.iter_mut().zip(g) {
                    *qi = ((w - min) / scale).round().clamp(0.0, 15.0) as u8;
                }
            }
            Q4Group { scale, min, q }
        })
        .collect()
}

/// Quantize one row (length a multiple of 32) to symmetric int8 groups, scale rounded to
/// f16 as the GPU stores it.
///
/// # Panics
/// If the row's length is not a multiple of 32 (callers check the shape first).
pub fn quantize_q8(row: &[f32]) -> Vec<Q8Group> {
    assert!(
        row.len().is_multiple_of(32),
        "row length {} is not a multiple of 32",
        row.len()
    );
    row.chunks_exact(32)
        .map(|g| {
            let absmax = g.iter().fold(0f32, |a, w| a.max(w.abs()));
            let mut scale = half::f16::from_f32(absmax / 127.0).to_f32();
            if scale == 0.0 {
                scale = 1.0;
            }
            let q = std::array::from_fn(|i| (g[i] / scale).round().clamp(-127.0, 127.0) as i8);
            Q8Group { scale, q }
        })
        .collect()
}

impl HostModel {
    /// Re-quantize every int8 matrix to int4 (`--int4-only`: the smallest, fastest-on-GPU
    /// model, at the accuracy cost the closing notes measure).
    pub fn requantize_int8_to_int4(&mut self) {
        for t in self.tensors.values_mut() {
            if let TensorData::Q8(_) = &t.data {
                let cols = t.shape[1];
                let v = t.to_f32();
                t.data = TensorData::Q4(v.chunks_exact(cols).flat_map(quantize_q4).collect());
            }
        }
    }

    /// Whether a tensor is a matrix the engine runs in int4 (every 2-D weight).
    pub fn is_quantized_matrix(name: &str, t: &HostTensor) -> bool {
        name.ends_with(".weight") && t.shape.len() == 2
    }

    /// Quantize every f32 matrix to int4 in place (on load of an f32/f16 checkpoint, and
    /// before writing the engine's pre-quantized file). Tensors already in int4 are kept,
    /// and so are matrices whose rows are not whole int4 groups (the upload refuses those,
    /// naming the tensor).
    pub fn quantize_matrices(&mut self, mut progress: impl FnMut(&str)) {
        let mut tensors: Vec<_> = self.tensors.iter_mut().collect();
        tensors.sort_by(|a, b| a.0.cmp(b.0));
        for (name, t) in tensors {
            if !Self::is_quantized_matrix(name, t) {
                continue;
            }
            let cols = t.shape[1];
            let whole_groups = cols > 0 && cols.is_multiple_of(32);
            match &t.data {
                TensorData::F32(v) if whole_groups => {
                    t.data = TensorData::Q4(v.chunks_exact(cols).flat_map(quantize_q4).collect());
                }
                _ => {}
            }
            progress(name);
        }
    }
}

/// Load a model from any supported source: an HF checkpoint directory (f32, not yet
/// quantized), a `.gguf` file (or any file starting with the GGUF magic), or the engine's
/// pre-quantized `.safetensors` file.
pub fn load_model(path: &Path) -> anyhow::Result<HostModel> {
    if path.is_dir() {
        return Ok(hf_dir::load_hf_dir(path)?);
    }
    if !path.exists() {
        anyhow::bail!("{}: no such file or directory", path.display());
    }
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    if ext.as_deref() == Some("gguf") || has_gguf_magic(path) {
        return Ok(gguf_model::load_gguf(path)?);
    }
    if prequant::is_prequantized(path) {
        return Ok(prequant::load_prequantized(path)?);
    }
    if ext.as_deref() == Some("safetensors") {
        anyhow::bail!(
            "{}: safetensors file without '{}' metadata: pass the HF checkpoint directory that holds it instead",
            path.display(),
            prequant::FORMAT_KEY
        );
    }
    anyhow::bail!(
        "{}: unrecognized model file (expected a directory, .gguf or edgereason .safetensors)",
        path.display()
    )
}

/// Whether a file starts with the GGUF magic (so misnamed GGUF files still load).
fn has_gguf_magic(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
        .is_ok()
        && &magic == b"GGUF"
}
