//! The model on the GPU: weights in the int4 kernel layout ([`GpuModel`]), the per-stream
//! KV cache and activations ([`Session`], in `forward.rs`), the forward pass as launches
//! block by block (`launches.rs`), and the plain-Rust f32 reference forward the tests
//! hold it to (`reference.rs`).

pub mod forward;
mod launches;
pub mod reference;

pub use forward::{ForwardError, KernelProfile, SampledStep, Session, WarmUp};

use crate::gpu::GpuContext;
use crate::loader::{
    quantize_q4, quantize_q8, HostModel, HostTensor, LoadError, ModelConfig, TensorData,
};
use crate::ops::matmul_int4::{QuantGroups, QuantMatrix};
use std::sync::Arc;

/// One transformer block's weights. Q, K and V are one matrix (rows Q | K | V) and so are
/// gate and up (rows gate | up): one matmul each instead of three and two.
pub struct GpuLayer {
    pub attn_norm: wgpu::Buffer, // [n_embd]
    pub wqkv: QuantMatrix,       // [(n_head + 2·n_kv_head)·head_dim, n_embd]
    pub bqkv: Option<wgpu::Buffer>,
    pub wo: QuantMatrix,        // [n_embd, n_head·head_dim]
    pub ffn_norm: wgpu::Buffer, // [n_embd]
    pub w_gate_up: QuantMatrix, // [2·n_ff, n_embd]
    pub w_down: QuantMatrix,    // [n_embd, n_ff]
}

/// Model weights resident on one GPU.
pub struct GpuModel {
    pub ctx: Arc<GpuContext>,
    pub config: ModelConfig,
    pub token_embd: QuantMatrix, // [n_vocab, n_embd]
    /// LM head; `None` when tied to `token_embd`.
    pub output: Option<QuantMatrix>,
    pub output_norm: wgpu::Buffer,
    pub layers: Vec<GpuLayer>,
}

fn tensor<'a>(host: &'a HostModel, name: &str) -> Result<&'a HostTensor, LoadError> {
    host.tensors.get(name).ok_or_else(|| LoadError::Missing {
        path: host.source.clone(),
        what: format!("tensor '{name}'"),
    })
}

/// A matrix tensor checked to be [rows, cols] with cols a multiple of 32.
fn matrix_tensor<'a>(host: &'a HostModel, name: &str) -> Result<&'a HostTensor, LoadError> {
    let t = tensor(host, name)?;
    if t.shape.len() != 2 || t.shape[1] % 32 != 0 {
        return Err(LoadError::BadTensor {
            path: host.source.clone(),
            name: name.into(),
            what: format!(
                "shape {:?}: expected a matrix with a multiple of 32 columns",
                t.shape
            ),
        });
    }
    Ok(t)
}

/// Upload the row-concatenation of `names` as one matrix. Int8 if any part is stored at
/// int8 (a fused matrix has one format), else int4 (f32 parts are quantized here).
fn upload_matrix(
    ctx: &GpuContext,
    host: &HostModel,
    names: &[String],
) -> Result<QuantMatrix, LoadError> {
    let parts: Vec<&HostTensor> = names
        .iter()
        .map(|n| matrix_tensor(host, n))
        .collect::<Result<_, _>>()?;
    let k = parts[0].shape[1];
    let n: usize = parts.iter().map(|t| t.shape[0]).sum();
    let int8 = parts.iter().any(|t| matches!(t.data, TensorData::Q8(_)));
    let uploaded = if int8 {
        let mut g = Vec::with_capacity(n * k / 32);
        for t in &parts {
            match &t.data {
                TensorData::Q8(q) => g.extend_from_slice(q),
                _ => g.extend(quantize_q8(&t.to_f32())),
            }
        }
        QuantMatrix::upload(ctx, &names[0], n, k, QuantGroups::Int8(&g))
    } else {
        let mut g = Vec::with_capacity(n * k / 32);
        for t in &parts {
            match &t.data {
                TensorData::Q4(q) => g.extend_from_slice(q),
                _ => g.extend(t.to_f32().chunks(k).flat_map(quantize_q4)),
            }
        }
        QuantMatrix::upload(ctx, &names[0], n, k, QuantGroups::Int4(&g))
    };
    // Parts of one fused matrix whose shapes do not add up.
    uploaded.map_err(|e| LoadError::BadTensor {
        path: host.source.clone(),
        name: names.join(" + "),
        what: match e {
            crate::gpu::GpuError::Launch { what, .. } => what,
            e => e.to_string(),
        },
    })
}

fn vector(ctx: &GpuContext, host: &HostModel, name: &str) -> Result<wgpu::Buffer, LoadError> {
    Ok(ctx.storage_from(name, &tensor(host, name)?.to_f32()))
}

impl GpuModel {
    /// Upload `host` to the GPU (int4 for every matrix).
    pub fn upload(
        ctx: Arc<GpuContext>,
        host: &HostModel,
        mut progress: impl FnMut(usize, usize),
    ) -> Result<Self, LoadError> {
        let c = &host.config;
        if let Some(what) = c.unsupported() {
            return Err(LoadError::Unsupported {
                path: host.source.clone(),
                what,
            });
        }
        let matrix = |names: &[String]| upload_matrix(&ctx, host, names);
        let token_embd = matrix(&["token_embd.weight".into()])?;
        let output = if c.tied_embeddings {
            None
        } else {
            Some(matrix(&["output.weight".into()])?)
        };
        let output_norm = vector(&ctx, host, "output_norm.weight")?;
        let mut layers = Vec::with_capacity(c.n_layer);
        for l in 0..c.n_layer {
            let p = |s: &str| format!("blk.{l}.{s}");
            let bqkv = if host.tensors.contains_key(&p("attn_q.bias")) {
                let mut b = tensor(host, &p("attn_q.bias"))?.to_f32();
                b.extend(tensor(host, &p("attn_k.bias"))?.to_f32());
                b.extend(tensor(host, &p("attn_v.bias"))?.to_f32());
                Some(ctx.storage_from(&p("attn_qkv.bias"), &b))
            } else {
                None
            };
            layers.push(GpuLayer {
                attn_norm: vector(&ctx, host, &p("attn_norm.weight"))?,
                wqkv: matrix(&[p("attn_q.weight"), p("attn_k.weight"), p("attn_v.weight")])?,
                bqkv,
                wo: matrix(&[p("attn_output.weight")])?,
                ffn_norm: vector(&ctx, host, &p("ffn_norm.weight"))?,
                w_gate_up: matrix(&[p("ffn_gate.weight"), p("ffn_up.weight")])?,
                w_down: matrix(&[p("ffn_down.weight")])?,
            });
            progress(l + 1, c.n_layer);
        }
        Ok(GpuModel {
            ctx,
            config: c.clone(),
            token_embd,
            output,
            output_norm,
            layers,
        })
    }

    /// The LM head matrix (tied or not).
    pub fn lm_head(&self) -> &QuantMatrix {
        self.output.as_ref().unwrap_or(&self.token_embd)
    }

    /// Bytes of weights on the GPU.
    pub fn weight_bytes(&self) -> u64 {
        let l: u64 = self
            .layers
            .iter()
            .map(|l| l.wqkv.bytes() + l.wo.bytes() + l.w_gate_up.bytes() + l.w_down.bytes())
            .sum();
        l + self.token_embd.bytes() + self.output.as_ref().map_or(0, |o| o.bytes())
    }
}
