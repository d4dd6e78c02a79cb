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
        let (d, hd, m) = (c.n_embd, c.head_dim, tokens.len());
        let (q_dim, kv_dim) = (c.n_head * hd, c.n_kv_head * hd);
        let emb = self.t("token_embd.weight");
        let mut x: Vec<f32> = tokens
            .iter()
            .flat_map(|&t| emb[t as usize * d..(t as usize + 1) * d].to_vec())
            .collect();
        for l in 0..c.n_layer {
            let p = |s: &str| format!("blk.{l}.{s}");
            // y += s·B·A·x for projection `proj` on the positions the adapter covers.
            let lora_add = |proj: usize, x: &[f32], y: &mut [f32], k: usize| {
                if let Some((ad, from)) = lora {
                    let n = y.len() / m;
                    for t in from..m {
                        ad.apply(l, proj, &x[t * k..(t + 1) * k], &mut y[t * n..(t + 1) * n]);
                    }
                }
            };
            // attention block
            let h = rmsnorm::reference(&x, self.t(&p("attn_norm.weight")), c.rms_eps);
            let mut q = self.linear(&h, &p("attn_q.weight"), d);
            lora_add(0, &h, &mut q, d);
            let mut k = self.linear(&h, &p("attn_k.weight"), d);
            lora_add(1, &h, &mut k, d);
            let v = {
                let mut v = self.linear(&h, &p("attn_v.weight"), d);
                lora_add(2, &h, &mut v, d);
                if let Some(b) = self.w.get(&p("attn_v.bias")) {
                    v.chunks_mut(kv_dim)
                        .for_each(|r| r.iter_mut().zip(b).for_each(|(a, b)| *a += b));
                }
                v
            };
            if let Some(b) = self.w.get(&p("attn_q.bias")) {
                q.chunks_mut(q_dim)
                    .for_each(|r| r.iter_mut().zip(b).for_each(|(a, b)| *a += b));
            }
            if let Some(b) = self.w.get(&p("attn_k.bias")) {
                k.chunks_mut(kv_dim)
                    .for_each(|r| r.iter_mut().zip(b).for_each(|(a, b)| *a += b));
            }
            for t in 0..m {
                q[t * q_dim..(t + 1) * q_dim]
                    .chunks_mut(hd)
                    .for_each(|head| rope::reference(head, t, c.rope_theta));
                k[t * kv_dim..(t + 1) * kv_dim]
                    .chunks_mut(hd)
                    .for_each(|head| rope::reference(head, t, c.rope_theta));
            }
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
                        &gather(&k),
                        &gather(&v),
                        hd,
                    );
                    att[t * q_dim + hh * hd..t * q_dim + (hh + 1) * hd].copy_from_slice(&o);
                }
            }
            let mut o = self.linear(&att, &p("attn_output.weight"), q_dim);
            lora_add(3, &att, &mut o, q_dim);
            x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
            // feed-forward block
            let h = rmsnorm::reference(&x, self.t(&p("ffn_norm.weight")), c.rms_eps);
            let mut g = self.linear(&h, &p("ffn_gate.weight"), d);
            lora_add(4, &h, &mut g, d);
            let mut u = self.linear(&h, &p("ffn_up.weight"), d);
            lora_add(5, &h, &mut u, d);
            let a: Vec<f32> = g
                .iter()
                .zip(&u)
                .map(|(g, u)| swiglu::silu(*g) * u)
                .collect();
            let mut o = self.linear(&a, &p("ffn_down.weight"), c.n_ff);
            lora_add(6, &a, &mut o, c.n_ff);
            x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
        }
        let h = rmsnorm::reference(&x, self.t("output_norm.weight"), c.rms_eps);
        let logits = self
            .linear(
                &h,
                if c.tied_embeddings {
                    "token_embd.weight"
                } else {
                    "output.weight"
                },
                d,
            )
            .chunks(c.n_vocab)
            .map(|r| r.to_vec())
            .collect();
        (logits, h.chunks(d).map(|r| r.to_vec()).collect())
    }
}
