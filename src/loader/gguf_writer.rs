//! GGUF v3 writing: a [`HostModel`] as other engines read it (llama.cpp's `llama-bench`, for
//! a comparison on the same weights), and the small builder the GGUF tests make files with.
//!
//! Tensors keep the engine's values exactly: int4 groups (scale·q + min) are GGUF's Q4_1,
//! int8 groups (scale·q) Q8_0, the rest F32. The vocabulary is the model's where its
//! BPE tokenizer has one per id, else placeholders (a synthetic model's), with the 256
//! byte-level symbols first so any text still tokenizes; no BPE merges are written, so the
//! file is for running engines on the same weights (benchmarks), not for chatting.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! let model = edgereason::loader::synthetic::synthetic_model("synthetic:smollm2-135m").unwrap();
//! edgereason::loader::gguf_writer::write_model(&model, std::path::Path::new("smollm2-random.gguf"))?;
//! # Ok(())
//! # }
//! ```

use super::gguf::permute_rows;
use super::{Arch, HostModel, HostTensor, TensorData};
use half::f16;
use std::io::Write;
use std::path::Path;

/// GGUF metadata value types and ggml tensor types used here.
const GGUF_U32: u32 = 4;
const GGUF_I32: u32 = 5;
const GGUF_F32: u32 = 6;
const GGUF_STRING: u32 = 8;
const GGUF_ARRAY: u32 = 9;
const GGML_F32: u32 = 0;
const GGML_Q4_1: u32 = 3;
const GGML_Q8_0: u32 = 8;
/// Tensor data offsets are multiples of this (`general.alignment`'s default).
const ALIGN: usize = 32;

/// Builds a GGUF v3 file: metadata in the order added, then tensors.
#[derive(Default)]
pub struct GgufWriter {
    pub(crate) kv: Vec<u8>,
    pub(crate) n_kv: u64,
    /// (name, dims with the contiguous one first, ggml type, data).
    pub(crate) tensors: Vec<(String, Vec<u64>, u32, Vec<u8>)>,
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    b.extend((s.len() as u64).to_le_bytes());
    b.extend(s.as_bytes());
}

impl GgufWriter {
    fn key(&mut self, k: &str, ty: u32) {
        put_str(&mut self.kv, k);
        self.kv.extend(ty.to_le_bytes());
        self.n_kv += 1;
    }
    pub fn u32(&mut self, k: &str, v: u32) {
        self.key(k, GGUF_U32);
        self.kv.extend(v.to_le_bytes());
    }
    pub fn f32(&mut self, k: &str, v: f32) {
        self.key(k, GGUF_F32);
        self.kv.extend(v.to_le_bytes());
    }
    pub fn str(&mut self, k: &str, v: &str) {
        self.key(k, GGUF_STRING);
        put_str(&mut self.kv, v);
    }
    pub fn strs<S: AsRef<str>>(&mut self, k: &str, v: &[S]) {
        self.key(k, GGUF_ARRAY);
        self.kv.extend(GGUF_STRING.to_le_bytes());
        self.kv.extend((v.len() as u64).to_le_bytes());
        v.iter().for_each(|s| put_str(&mut self.kv, s.as_ref()));
    }
    pub fn i32s(&mut self, k: &str, v: &[i32]) {
        self.key(k, GGUF_ARRAY);
        self.kv.extend(GGUF_I32.to_le_bytes());
        self.kv.extend((v.len() as u64).to_le_bytes());
        v.iter().for_each(|x| self.kv.extend(x.to_le_bytes()));
    }
    /// A tensor of ggml type `ty` with `dims` in GGUF order (contiguous dimension first).
    pub fn tensor(&mut self, name: &str, dims: &[u64], ty: u32, data: Vec<u8>) {
        self.tensors.push((name.into(), dims.to_vec(), ty, data));
    }
    /// An F32 tensor whose element i is `f(i)`.
    pub fn f32_tensor(&mut self, name: &str, dims: &[u64], f: impl Fn(usize) -> f32) {
        let n: u64 = dims.iter().product();
        let data = (0..n as usize).flat_map(|i| f(i).to_le_bytes()).collect();
        self.tensor(name, dims, GGML_F32, data);
    }

    /// Header, metadata and tensor infos (everything before the data).
    fn header(&self) -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend((self.tensors.len() as u64).to_le_bytes());
        b.extend(self.n_kv.to_le_bytes());
        b.extend(&self.kv);
        let mut off = 0u64;
        for (name, dims, ty, data) in &self.tensors {
            put_str(&mut b, name);
            b.extend((dims.len() as u32).to_le_bytes());
            dims.iter().for_each(|d| b.extend(d.to_le_bytes()));
            b.extend(ty.to_le_bytes());
            b.extend(off.to_le_bytes());
            off += data.len().next_multiple_of(ALIGN) as u64;
        }
        b
    }

    /// The whole file.
    pub fn write(&self, out: &mut impl Write) -> std::io::Result<()> {
        let header = self.header();
        out.write_all(&header)?;
        let mut at = header.len();
        for (_, _, _, data) in &self.tensors {
            let pad = at.next_multiple_of(ALIGN) - at;
            out.write_all(&[0u8; ALIGN][..pad])?;
            out.write_all(data)?;
            at += pad + data.len();
        }
        Ok(())
    }

    /// The whole file in memory (tests).
    pub fn bytes(&self) -> Vec<u8> {
        let mut b = Vec::new();
        // Writing to a Vec cannot fail.
        let _ = self.write(&mut b);
        b
    }
}

/// One tensor's ggml type and bytes: Q4_1 blocks (d, m, then byte j = element j in its low
/// nibble and element j + 16 in its high), Q8_0 blocks (d, 32 signed bytes) or F32.
fn tensor_bytes(t: &HostTensor) -> (u32, Vec<u8>) {
    match &t.data {
        TensorData::F32(v) => (GGML_F32, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        TensorData::Q4(groups) => {
            let mut b = Vec::with_capacity(groups.len() * 20);
            for g in groups {
                b.extend(f16::from_f32(g.scale).to_le_bytes());
                b.extend(f16::from_f32(g.min).to_le_bytes());
                b.extend((0..16).map(|j| g.q[j] | (g.q[j + 16] << 4)));
            }
            (GGML_Q4_1, b)
        }
        TensorData::Q8(groups) => {
            let mut b = Vec::with_capacity(groups.len() * 34);
            for g in groups {
                b.extend(f16::from_f32(g.scale).to_le_bytes());
                b.extend(g.q.iter().map(|&q| q as u8));
            }
            (GGML_Q8_0, b)
        }
    }
}

/// The model's hyper-parameters under llama.cpp's keys.
fn put_config(w: &mut GgufWriter, m: &HostModel) {
    let c = &m.config;
    let arch = match c.arch {
        Arch::Qwen2 => "qwen2",
        Arch::Llama => "llama",
    };
    w.str("general.architecture", arch);
    w.str("general.name", &m.source);
    w.u32(&format!("{arch}.context_length"), c.n_ctx as u32);
    w.u32(&format!("{arch}.embedding_length"), c.n_embd as u32);
    w.u32(&format!("{arch}.block_count"), c.n_layer as u32);
    w.u32(&format!("{arch}.feed_forward_length"), c.n_ff as u32);
    w.u32(&format!("{arch}.attention.head_count"), c.n_head as u32);
    w.u32(
        &format!("{arch}.attention.head_count_kv"),
        c.n_kv_head as u32,
    );
    w.u32(&format!("{arch}.attention.key_length"), c.head_dim as u32);
    w.u32(&format!("{arch}.attention.value_length"), c.head_dim as u32);
    w.f32(&format!("{arch}.rope.freq_base"), c.rope_theta);
    w.f32(
        &format!("{arch}.attention.layer_norm_rms_epsilon"),
        c.rms_eps,
    );
}

/// Byte-level BPE vocabulary: the tokenizer's tokens by id where it is a BPE with all
/// `n_vocab`, else (a synthetic model's word-level one) the 256 byte symbols and
/// placeholders; no merges (a placeholder vocabulary has none to give).
fn put_vocab(w: &mut GgufWriter, m: &HostModel) {
    let n = m.config.n_vocab;
    let own: Vec<Option<String>> = (0..n as u32).map(|i| m.tokenizer.id_to_token(i)).collect();
    let bpe = matches!(m.tokenizer.get_model(), tokenizers::ModelWrapper::BPE(_));
    let tokens: Vec<String> = if bpe && own.iter().all(Option::is_some) {
        own.into_iter().flatten().collect()
    } else {
        let mut bytes: Vec<char> = tokenizers::pre_tokenizers::byte_level::ByteLevel::alphabet()
            .into_iter()
            .collect();
        bytes.sort_unstable();
        let bytes = bytes.into_iter().map(String::from);
        bytes
            .chain((256..n).map(|i| format!("<t{i}>")))
            .take(n)
            .collect()
    };
    w.str("tokenizer.ggml.model", "gpt2");
    let pre = match m.config.arch {
        Arch::Qwen2 => "qwen2",
        Arch::Llama => "smollm",
    };
    w.str("tokenizer.ggml.pre", pre);
    w.strs("tokenizer.ggml.tokens", &tokens);
    w.i32s("tokenizer.ggml.token_type", &vec![1; n]);
    w.strs::<&str>("tokenizer.ggml.merges", &[]);
    let eos = m.eos_token_ids.first().copied().unwrap_or(n as u32 - 1);
    w.u32("tokenizer.ggml.eos_token_id", eos);
}

/// A llama Q/K matrix's rows in llama.cpp's interleaved RoPE order (the loader undoes it).
fn llama_qk_order(m: &HostModel, name: &str, t: &HostTensor) -> Option<HostTensor> {
    let c = &m.config;
    let n_head = match name {
        _ if c.arch != Arch::Llama => return None,
        n if n.ends_with(".attn_q.weight") => c.n_head,
        n if n.ends_with(".attn_k.weight") => c.n_kv_head,
        _ => return None,
    };
    let rows = t.shape[0];
    let data = match &t.data {
        TensorData::F32(v) => TensorData::F32(permute_rows(v, rows, n_head)),
        TensorData::Q4(v) => TensorData::Q4(permute_rows(v, rows, n_head)),
        TensorData::Q8(v) => TensorData::Q8(permute_rows(v, rows, n_head)),
    };
    Some(HostTensor {
        shape: t.shape.clone(),
        data,
    })
}

/// Write `m` as a GGUF file at `path` (tensors in name order).
pub fn write_model(m: &HostModel, path: &Path) -> anyhow::Result<()> {
    let mut w = GgufWriter::default();
    put_config(&mut w, m);
    put_vocab(&mut w, m);
    let mut names: Vec<&String> = m.tensors.keys().collect();
    names.sort();
    for name in names {
        let permuted = llama_qk_order(m, name, &m.tensors[name]);
        let t = permuted.as_ref().unwrap_or(&m.tensors[name]);
        let (ty, data) = tensor_bytes(t);
        let dims: Vec<u64> = t.shape.iter().rev().map(|&d| d as u64).collect();
        w.tensor(name, &dims, ty, data);
    }
    let file = std::fs::File::create(path)
        .map_err(|e| anyhow::anyhow!("{}: cannot create: {e}", path.display()))?;
    let mut out = std::io::BufWriter::new(file);
    w.write(&mut out)
        .and_then(|_| out.flush())
        .map_err(|e| anyhow::anyhow!("{}: write failed: {e}", path.display()))
}
