//! Plain-Rust f32 forward pass over the host weights (int4 tensors dequantized): the
//! yardstick for the GPU forward in tests. Slow and simple on purpose: it reads like the
//! model's math, with no cache, no quantized activations and no f16 anywhere.

use crate::adapters::LoraAdapter;
use crate::loader::HostModel;
use crate::ops::{attention, rmsnorm, rope, swiglu};

/// Dequantized weights, by canonical name.
pub struct ReferenceModel<'a> {
    host: &'a HostModel,
    w: std::collections::HashMap<String, Vec<f32>>,
}

/// y [m][n] = x [m][k] · Wᵀ, W [n][k].
fn linear(x: &[f32], w: &[f32], k: usize) -> Vec<f32> {
    x.chunks(k)
        .flat_map(|xr| {
            w.chunks(k)
                .map(move |wr| wr.iter().zip(xr).map(|(a, b)| a * b).sum::<f32>())
        })
        .collect()
}

impl<'a> ReferenceModel<'a> {
    pub fn new(host: &'a HostModel) -> Self {
        let w = host
            .tensors
            .iter()
            .map(|(k, t)| (k.clone(), t.to_f32()))
            .collect();
        Self { host, w }
    }

    fn linear(&self, x: &[f32], w: &str, k: usize) -> Vec<f32> {
        linear(x, self.t(w), k)
    }

    #[expect(
        clippy::panic,
        reason = "a test oracle over models the loader has checked for every tensor"
    )]
    fn t(&self, name: &str) -> &[f32] {
        self.w
            .get(name)
            .unwrap_or_else(|| panic!("reference: missing tensor {name}"))
    }

    /// Logits `[tokens.len()][n_vocab]` for every position (causal).
    pub fn forward(&self, tokens: &[u32]) -> Vec<Vec<f32>> {
        self.forward_with(tokens, None).0
    }

    /// Logits and final-norm hidden states for every position, with `lora` = (adapter,
    /// first position it applies to): positions before it are the base model's (masked LoRA).
    pub fn forward_with(
        &self,
        tokens: &[u32],
        lora: Option<(&LoraAdapter, usize)>,
    ) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
        let c = &self.host.config;
        let m = tokens.len();
        let mut x = self.embed(tokens);
        for l in 0..c.n_layer {
            let lora = LayerLora { lora, layer: l, m };
            self.attention_block(&mut x, l, lora);
            self.ffn_block(&mut x, l, lora);
        }
        let h = rmsnorm::reference(&x, self.t("output_norm.weight"), c.rms_eps);
        let logits = self.lm_head(&h);
        (logits, h.chunks(c.n_embd).map(|r| r.to_vec()).collect())
    }

    /// The embedding row of every token, [m][n_embd].
    fn embed(&self, tokens: &[u32]) -> Vec<f32> {
        let d = self.host.config.n_embd;
        let emb = self.t("token_embd.weight");
        tokens
            .iter()
            .flat_map(|&t| emb[t as usize * d..(t as usize + 1) * d].to_vec())
            .collect()
    }

    /// x += Wo·attention(h), h = rmsnorm(x): layer `l`'s attention over every position.
    fn attention_block(&self, x: &mut [f32], l: usize, lora: LayerLora) {
        let c = &self.host.config;
        let q_dim = c.n_head * c.head_dim;
        let h = rmsnorm::reference(x, self.t(&blk(l, "attn_norm.weight")), c.rms_eps);
        let (mut q, mut k, v) = self.qkv(&h, l, lora);
        self.rope(&mut q, &mut k, lora.m);
        let att = self.causal_attention(&q, &k, &v, lora.m);
        let mut o = self.linear(&att, &blk(l, "attn_output.weight"), q_dim);
        lora.add(3, &att, &mut o, q_dim);
        x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
    }

    /// Q, K and V of every position: the projections, the adapter's share, any biases.
    fn qkv(&self, h: &[f32], l: usize, lora: LayerLora) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let c = &self.host.config;
        let d = c.n_embd;
        let (q_dim, kv_dim) = (c.n_head * c.head_dim, c.n_kv_head * c.head_dim);
        let mut q = self.linear(h, &blk(l, "attn_q.weight"), d);
        lora.add(0, h, &mut q, d);
        let mut k = self.linear(h, &blk(l, "attn_k.weight"), d);
        lora.add(1, h, &mut k, d);
        let mut v = self.linear(h, &blk(l, "attn_v.weight"), d);
        lora.add(2, h, &mut v, d);
        self.add_bias(&mut v, &blk(l, "attn_v.bias"), kv_dim);
        self.add_bias(&mut q, &blk(l, "attn_q.bias"), q_dim);
        self.add_bias(&mut k, &blk(l, "attn_k.bias"), kv_dim);
        (q, k, v)
    }

    /// Add tensor `name` to every `width`-wide row of `y`, if the model has it.
    fn add_bias(&self, y: &mut [f32], name: &str, width: usize) {
        if let Some(b) = self.w.get(name) {
            y.chunks_mut(width)
                .for_each(|r| r.iter_mut().zip(b).for_each(|(a, b)| *a += b));
        }
    }

    /// Rotate every Q and K head of the `m` positions by its position.
    fn rope(&self, q: &mut [f32], k: &mut [f32], m: usize) {
        let c = &self.host.config;
        let hd = c.head_dim;
        let (q_dim, kv_dim) = (c.n_head * hd, c.n_kv_head * hd);
        for t in 0..m {
            q[t * q_dim..(t + 1) * q_dim]
                .chunks_mut(hd)
                .for_each(|head| rope::reference(head, t, c.rope_theta));
            k[t * kv_dim..(t + 1) * kv_dim]
                .chunks_mut(hd)
                .for_each(|head| rope::reference(head, t, c.rope_theta));
        }
    }

    /// Each head of each of the `m` positions attending to the keys up to its own, its
    /// query heads grouped over the KV heads (GQA): [m][n_head·head_dim].
    fn causal_attention(&self, q: &[f32], k: &[f32], v: &[f32], m: usize) -> Vec<f32> {
        let c = &self.host.config;
        let hd = c.head_dim;
        let (q_dim, kv_dim) = (c.n_head * hd, c.n_kv_head * hd);
        let mut att = vec![0f32; m * q_dim];
        for t in 0..m {
            for hh in 0..c.n_head {
                let kvh = hh / (c.n_head / c.n_kv_head);
                let gather = |src: &[f32]| {
                    (0..=t)
                        .flat_map(|s| {
                            src[s * kv_dim + kvh * hd..s * kv_dim + (kvh + 1) * hd].to_vec()
                        })
                        .collect::<Vec<_>>()
                };
                let o = attention::reference(
                    &q[t * q_dim + hh * hd..t * q_dim + (hh + 1) * hd],
                    &gather(k),
                    &gather(v),
                    hd,
                );
                att[t * q_dim + hh * hd..t * q_dim + (hh + 1) * hd].copy_from_slice(&o);
            }
        }
        att
    }

    /// x += W2·(silu(W1·h) ⊙ W3·h), h = rmsnorm(x): layer `l`'s feed-forward block.
    fn ffn_block(&self, x: &mut [f32], l: usize, lora: LayerLora) {
        let c = &self.host.config;
        let d = c.n_embd;
        let h = rmsnorm::reference(x, self.t(&blk(l, "ffn_norm.weight")), c.rms_eps);
        let mut g = self.linear(&h, &blk(l, "ffn_gate.weight"), d);
        lora.add(4, &h, &mut g, d);
        let mut u = self.linear(&h, &blk(l, "ffn_up.weight"), d);
        lora.add(5, &h, &mut u, d);
        let a: Vec<f32> = g
            .iter()
            .zip(&u)
            .map(|(g, u)| swiglu::silu(*g) * u)
            .collect();
        let mut o = self.linear(&a, &blk(l, "ffn_down.weight"), c.n_ff);
        lora.add(6, &a, &mut o, c.n_ff);
        x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
    }

    /// Logits `[m][n_vocab]` of the final-norm rows `h` (the embedding when tied).
    fn lm_head(&self, h: &[f32]) -> Vec<Vec<f32>> {
        let c = &self.host.config;
        let w = if c.tied_embeddings {
            "token_embd.weight"
        } else {
            "output.weight"
        };
        self.linear(h, w, c.n_embd)
            .chunks(c.n_vocab)
            .map(|r| r.to_vec())
            .collect()
    }
}

/// Layer `l`'s tensor `name`.
fn blk(l: usize, name: &str) -> String {
    format!("blk.{l}.{name}")
}

/// The adapter at one layer of a forward over `m` positions: (adapter, first position it
/// applies to), if any.
#[derive(Clone, Copy)]
struct LayerLora<'a> {
    lora: Option<(&'a LoraAdapter, usize)>,
    layer: usize,
    m: usize,
}

impl LayerLora<'_> {
    /// y += s·B·A·x for projection `proj` on the positions the adapter covers.
    fn add(&self, proj: usize, x: &[f32], y: &mut [f32], k: usize) {
        if let Some((ad, from)) = self.lora {
            let n = y.len() / self.m;
            for t in from..self.m {
                ad.apply(
                    self.layer,
                    proj,
                    &x[t * k..(t + 1) * k],
                    &mut y[t * n..(t + 1) * n],
                );
            }
        }
    }
}
