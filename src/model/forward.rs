//! The forward pass over a paged KV cache: activation buffers, the cache's blocks, and the
//! list of kernel launches that is the model's math, built once and replayed every step.
//! A [`Session`] holds one main stream; `fork` adds streams that share its prompt blocks,
//! and `forward_rows` advances several streams by one token each in one batched step
//! (`forward_rows_sampled` also samples their next tokens on the GPU, reading back 8 bytes
//! per row instead of the logits).

use super::GpuModel;
use crate::adapters::{LoraApply, LoraSet};
use crate::kv::{BlockCopy, BlockPool, KvError, StreamId};
use crate::ops::attention::{AttentionIo, BlockTables};
use crate::ops::lora::LoraRows;
use crate::ops::matmul_int4::{gemm, matmul_int4, MatmulIo, MatmulLora, MatmulRope, NormOut};
use crate::ops::sampling::{RowSampling, SampleRow, Sampled};
use crate::ops::{self, Dispatch, Step, When};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

/// Errors callers branch on while running a stream.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("context full: {needed} tokens needed, the KV cache holds {n_ctx} (raise --ctx, up to the model's {model_ctx})")]
    ContextFull {
        needed: usize,
        n_ctx: usize,
        model_ctx: usize,
    },
    #[error("token id {id} is outside the vocabulary ({n_vocab})")]
    BadToken { id: u32, n_vocab: usize },
    #[error("{rows} rows in one step; this session takes at most {max}")]
    TooManyRows { rows: usize, max: usize },
    #[error("adapter {index} is not in this session's adapter set ({loaded} loaded)")]
    NoSuchAdapter { index: usize, loaded: usize },
    #[error(transparent)]
    Kv(#[from] KvError),
    #[error(transparent)]
    Gpu(#[from] crate::gpu::GpuError),
}

/// Time per kernel kind over one or more steps (`bench`).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct KernelProfile {
    pub ms: BTreeMap<String, f64>,
    /// "timestamp queries" or "wall clock per launch".
    pub source: String,
}

/// Cache slots per KV block.
pub const BLOCK_SIZE: usize = 16;

/// Streams over one paged KV cache of `n_ctx` token slots, with activations for up to
/// `max_rows` rows per step. `pos` tokens are in the main stream.
pub struct Session {
    pub model: Arc<GpuModel>,
    pub n_ctx: usize,
    pub max_rows: usize,
    /// Rows of logits one LM-head launch produces (scoring reads them in batches).
    pub lm_rows: usize,
    pub pos: usize,
    /// The stream `forward` and `forward_all` extend.
    pub main: StreamId,
    pub pool: BlockPool,
    max_blocks: usize,
    tokens: wgpu::Buffer,    // [max_rows] u32
    positions: wgpu::Buffer, // [max_rows] u32
    slots: wgpu::Buffer,     // [max_rows] u32: cache slot each row's K/V is written to
    tables: wgpu::Buffer,    // [max_rows][max_blocks] u32: each row's block table
    logits: wgpu::Buffer,    // [lm_rows][n_vocab]
    k_cache: Vec<wgpu::Buffer>,
    v_cache: Vec<wgpu::Buffer>,
    block_scratch: wgpu::Buffer,
    _buffers: Vec<wgpu::Buffer>,
    /// Transformer body: embedding, then every layer.
    body: Vec<(usize, Dispatch)>,
    /// Final norm + LM head over a row range.
    head: Vec<Dispatch>,
    /// Final norm as f32 over every row of a step into `hidden` (switcher, verifier).
    final_hidden: Dispatch,
    hidden: wgpu::Buffer, // [max_rows][n_embd]
    /// Adapters this session's rows can use, and each stream's choice (index into the set).
    pub lora: Option<Arc<LoraSet>>,
    lora_rows: wgpu::Buffer, // [max_rows] (rank, rank offset)
    stream_adapter: std::collections::HashMap<StreamId, usize>,
    /// Timestamps bracketing each step's pass, and their resolve buffer (`time_steps`).
    step_timer: Option<(wgpu::QuerySet, wgpu::Buffer)>,
    /// Copy-on-write block copies for the next step's command buffer.
    pending_copies: std::cell::RefCell<Vec<BlockCopy>>,
    /// Token sampling over the logits rows ([`forward_rows_sampled`](Self::forward_rows_sampled)).
    sampling: Dispatch,
    sample_rows: wgpu::Buffer, // [lm_rows] ops::sampling::SampleRow
    sampled: wgpu::Buffer,     // [lm_rows] (id, log-prob)
}

impl Session {
    pub fn new(model: Arc<GpuModel>, n_ctx: usize, max_rows: usize) -> Self {
        Self::with_adapters(model, n_ctx, max_rows, None, LoraApply::Fused)
    }

    /// A session whose rows can use the adapters of `lora` (each stream picks one with
    /// [`set_adapter`](Self::set_adapter), or none), applied as `apply` says.
    pub fn with_adapters(
        model: Arc<GpuModel>,
        n_ctx: usize,
        max_rows: usize,
        lora: Option<Arc<LoraSet>>,
        apply: LoraApply,
    ) -> Self {
        let lora = lora.filter(|l| !l.adapters.is_empty());
        let ctx = model.ctx.clone();
        let c = &model.config;
        let (hd, q_dim, kv_dim) = (c.head_dim, c.n_head * c.head_dim, c.n_kv_head * c.head_dim);
        let qkv_dim = q_dim + 2 * kv_dim;
        let lm_rows = 16.min(max_rows);
        let max_k = c.n_embd.max(c.n_ff).max(q_dim);
        let f = 4u64;
        let mr = max_rows as u64;
        let tokens = ctx.storage("tokens", mr * 4);
        let positions = ctx.storage("positions", mr * 4);
        let slots = ctx.storage("slots", mr * 4);
        let n_blocks = n_ctx.div_ceil(BLOCK_SIZE);
        let max_blocks = n_blocks;
        let tables = ctx.storage("tables", mr * max_blocks as u64 * 4);
        let x = ctx.storage("x", mr * c.n_embd as u64 * f); // residual stream [m][n_embd]
        let xq = ctx.storage("xq", mr * max_k as u64); // int8 blocks [m][k/4] u32
        let xs = ctx.storage("xs", mr * (max_k / 32) as u64 * 16); // [m][k/32] (scale, Σx, Σx − Σx̂, 0)
        let qkv = ctx.storage("qkv", mr * qkv_dim as u64 * f);
        let attn = ctx.storage("attn", mr * q_dim as u64 * f);
        let gate_up = ctx.storage("gate_up", mr * 2 * c.n_ff as u64 * f);
        // Prefill GEMM path: the normalized x, then the SwiGLU output, as f32 rows.
        let xf = ctx.storage("xf", mr * c.n_embd.max(c.n_ff) as u64 * f);
        // h = silu(gate)·up as the down projection's int8 blocks (int8 path).
        let hq = ctx.storage("hq", mr * c.n_ff as u64);
        let hs = ctx.storage("hs", mr * (c.n_ff / 32) as u64 * 16);
        // Attention's output as Wo's int8 blocks: Wo's epilogue writes xq/xs meanwhile.
        let attn_q = ctx.storage("attn_q", mr * q_dim as u64);
        let attn_s = ctx.storage("attn_s", mr * (q_dim / 32) as u64 * 16);
        let logits = ctx.storage("logits", lm_rows as u64 * c.n_vocab as u64 * f);
        let unused = ctx.storage("unused", 16);
        let (po, pml) = ops::attention::partial_bytes(c.n_head, hd);
        let (part_o, part_ml) = (
            ctx.storage("attn.part_o", po),
            ctx.storage("attn.part_ml", pml),
        );
        let plan = ops::attention::AttentionPlan::for_device(&ctx);
        let gemm_tile = ops::matmul_int4::prefill_gemm(&ctx);
        let fused_quant = ops::attention::quantizes_output(hd);
        let rope_params = ops::matmul_int4::rope_params(&ctx, c.n_head, c.n_kv_head, c.rope_theta);
        let mm_part_bytes = model
            .layers
            .iter()
            .flat_map(|l| [&l.wqkv, &l.wo, &l.w_gate_up, &l.w_down])
            .chain([model.lm_head()])
            .map(|w| ops::matmul_int4::partial_bytes(&ctx, w))
            .max()
            .unwrap_or(0);
        let mm_part = ctx.storage("matmul.partials", mm_part_bytes);
        // Every matmul reads the shared int8 activation blocks; each call names its output.
        let io = MatmulIo::new(&xq, &xs, &x, c.n_embd, &mm_part);
        // LoRA: each row's adapter and its low-rank activations A·x.
        let u_stride = lora.as_ref().map_or(1, |l| l.u_stride());
        let lora_rows = ctx.storage("lora.rows", mr * 8);
        let lora_u = ctx.storage("lora.u", mr * u_stride as u64 * f);
        let rows_io = LoraRows {
            rows: &lora_rows,
            u: &lora_u,
            u_stride,
        };
        // Where the device takes the prefill GEMM, each matmul has two launch lists: the
        // int8 path (decode; steps with adapters) and the f32 GEMM (prefill-sized steps);
        // `When::Gemm` picks one per step.
        let int8_launch = |d: Dispatch| {
            if gemm_tile.is_some() {
                d.only(When::Gemm(false))
            } else {
                d
            }
        };
        // Matmul `f` of layer `l` with its LoRA (see adapters::FUSED): the low-rank shrink,
        // then the int4 matmul adding s·B·u in its output pass, or (Separate) a pass of its own.
        let with_lora = |l: usize,
                         f: usize,
                         label: &str,
                         w: &ops::matmul_int4::QuantMatrix,
                         io: MatmulIo,
                         push: &mut dyn FnMut(Dispatch)| {
            let int8_path = |ds: Vec<Dispatch>| ds.into_iter().map(int8_launch);
            let Some(set) = &lora else {
                return int8_path(matmul_int4(&ctx, label, w, &io)).for_each(push);
            };
            let m = &set.layers[l][f];
            push(ops::lora::shrink(
                &ctx,
                &format!("{label}.lora_a"),
                &m.a,
                m.k,
                m.segs,
                m.a_cols,
                set.max_rank,
                &rows_io,
                io.xq,
                io.xs,
                io.folded_norm,
            ));
            match apply {
                LoraApply::Fused => {
                    let fused = MatmulLora {
                        rows: rows_io,
                        b: &m.b,
                        segments: m.segments,
                    };
                    int8_path(matmul_int4(
                        &ctx,
                        label,
                        w,
                        &MatmulIo {
                            lora: Some(fused),
                            ..io
                        },
                    ))
                    .for_each(&mut *push);
                }
                LoraApply::Separate => {
                    int8_path(matmul_int4(&ctx, label, w, &io)).for_each(&mut *push);
                    push(ops::lora::expand(
                        &ctx,
                        &format!("{label}.lora_b"),
                        &m.b,
                        m.n,
                        m.segments,
                        &rows_io,
                        io.out,
                        io.out_stride,
                        io.xq,
                        io.xs,
                    ));
                }
            }
        };
        let kv_bytes = (n_blocks * BLOCK_SIZE * kv_dim * 2) as u64; // f16
        let block_scratch = ctx.storage("kv.block_copy", (BLOCK_SIZE * kv_dim * 2) as u64);
        let k_cache: Vec<_> = (0..c.n_layer)
            .map(|l| ctx.storage(&format!("k_cache.{l}"), kv_bytes))
            .collect();
        let v_cache: Vec<_> = (0..c.n_layer)
            .map(|l| ctx.storage(&format!("v_cache.{l}"), kv_bytes))
            .collect();

        let mut body: Vec<(usize, Dispatch)> = Vec::new();
        // x = embed(tokens)
        for d in ops::embedding::embedding(&ctx, "embedding", &model.token_embd, &tokens, &x) {
            body.push((0, d));
        }
        // `gemm_launches` is empty where the device keeps the int8 path for prefill.
        let gemm_launches =
            |label: &str, w: &ops::matmul_int4::QuantMatrix, x: &wgpu::Buffer, io: &MatmulIo| {
                gemm_tile.map_or(Vec::new(), |t| gemm(&ctx, label, w, x, io, t))
            };
        let norm = |label: &str, weight: &wgpu::Buffer| {
            let int8 = int8_launch(ops::rmsnorm::rmsnorm(
                &ctx, label, &x, weight, c.n_embd, c.rms_eps, &unused, &xq, &xs, true,
            ));
            let f32_rows = gemm_tile.map(|_| {
                ops::rmsnorm::rmsnorm(
                    &ctx, label, &x, weight, c.n_embd, c.rms_eps, &xf, &xq, &xs, false,
                )
                .only(When::Gemm(true))
            });
            std::iter::once(int8).chain(f32_rows)
        };
        // On the int8 path each residual matmul (Wo, down) also writes the next RMSNorm's
        // input blocks and the next matmul applies its 1/rms: no norm launches but the first.
        let fold_norms = std::env::var("EDGEREASON_FOLD_NORMS").map_or(true, |v| v != "0")
            && model.layers.iter().all(|l| {
                ops::matmul_int4::norm_foldable(&l.wo) && ops::matmul_int4::norm_foldable(&l.w_down)
            });
        let eps = fold_norms.then_some(c.rms_eps);
        let folded_into = |weight| {
            fold_norms.then_some(NormOut {
                weight,
                xq: &xq,
                xs: &xs,
            })
        };
        for (l, layer) in model.layers.iter().enumerate() {
            let mut push = |d: Dispatch| body.push((l, d));
            let norm_folded = fold_norms && l > 0;
            // x = x + Wo · attention(rope(Wqkv · norm(x)))
            norm("attn_norm", &layer.attn_norm)
                .skip(norm_folded as usize)
                .for_each(&mut push);
            let qkv_io = MatmulIo {
                out: &qkv,
                out_stride: qkv_dim,
                bias: layer.bqkv.as_ref(),
                ..io
            };
            // On the int8 path the QKV epilogue rotates Q and K and stores K and V in the
            // cache where the head size allows; else (and for the GEMM) a RoPE launch does.
            let fuse_rope = ops::matmul_int4::rope_fusable(&layer.wqkv, hd);
            let rope = fuse_rope.then_some(MatmulRope {
                params: &rope_params,
                head_dim: hd,
                positions: &positions,
                slots: &slots,
                k_cache: &k_cache[l],
                v_cache: &v_cache[l],
            });
            with_lora(
                l,
                0,
                "qkv",
                &layer.wqkv,
                MatmulIo {
                    rope,
                    folded_norm: eps.filter(|_| norm_folded),
                    ..qkv_io
                },
                &mut push,
            );
            gemm_launches("qkv", &layer.wqkv, &xf, &qkv_io)
                .into_iter()
                .for_each(&mut push);
            let rope_launch = ops::rope::rope_store_kv(
                &ctx,
                "rope",
                &qkv,
                &positions,
                &slots,
                &k_cache[l],
                &v_cache[l],
                c.n_head,
                c.n_kv_head,
                hd,
                c.rope_theta,
            );
            if !fuse_rope {
                push(rope_launch);
            } else if gemm_tile.is_some() {
                push(rope_launch.only(When::Gemm(true)));
            }
            let att = AttentionIo {
                qkv: &qkv,
                qkv_stride: qkv_dim,
                positions: &positions,
                k_cache: &k_cache[l],
                v_cache: &v_cache[l],
                tables: BlockTables {
                    tables: &tables,
                    block_size: BLOCK_SIZE as u32,
                    max_blocks: max_blocks as u32,
                },
                out: &attn,
                partials: (&part_o, &part_ml),
                quantized: fused_quant.then_some((&attn_q, &attn_s)),
            };
            ops::attention::attention(&ctx, "attention", &att, c.n_head, c.n_kv_head, hd, plan)
                .into_iter()
                .for_each(&mut push);
            // Attention writes Wo's int8 blocks itself where heads hold whole blocks.
            if !fused_quant {
                push(int8_launch(ops::quantize_act::quantize_act(
                    &ctx,
                    "attn_quant",
                    &attn,
                    q_dim,
                    q_dim,
                    &attn_q,
                    &attn_s,
                )));
            }
            with_lora(
                l,
                1,
                "wo",
                &layer.wo,
                MatmulIo {
                    xq: &attn_q,
                    xs: &attn_s,
                    accumulate: true,
                    norm_out: folded_into(&layer.ffn_norm),
                    ..io
                },
                &mut push,
            );
            gemm_launches(
                "wo",
                &layer.wo,
                &attn,
                &MatmulIo {
                    accumulate: true,
                    ..io
                },
            )
            .into_iter()
            .for_each(&mut push);
            // x = x + W_down · (silu(W_gate · norm(x)) ⊙ W_up · norm(x))
            norm("ffn_norm", &layer.ffn_norm)
                .skip(fold_norms as usize)
                .for_each(&mut push);
            let gate_up_io = MatmulIo {
                out: &gate_up,
                out_stride: 2 * c.n_ff,
                ..io
            };
            // On the int8 path gate|up's epilogue applies SwiGLU and writes h as the down
            // projection's int8 blocks (hq, hs) where the matrix allows; else a launch does.
            let fuse_swiglu = ops::matmul_int4::swiglu_fusable(&layer.w_gate_up);
            let swiglu = fuse_swiglu.then_some((&hq, &hs));
            with_lora(
                l,
                2,
                "gate_up",
                &layer.w_gate_up,
                MatmulIo {
                    swiglu,
                    folded_norm: eps,
                    ..gate_up_io
                },
                &mut push,
            );
            gemm_launches("gate_up", &layer.w_gate_up, &xf, &gate_up_io)
                .into_iter()
                .for_each(&mut push);
            if !fuse_swiglu {
                push(int8_launch(ops::swiglu::swiglu(
                    &ctx, "swiglu", &gate_up, c.n_ff, &hq, &hs,
                )));
            }
            if gemm_tile.is_some() {
                push(
                    ops::swiglu::swiglu_f32(&ctx, "swiglu", &gate_up, c.n_ff, &xf, &unused)
                        .only(When::Gemm(true)),
                );
            }
            with_lora(
                l,
                3,
                "down",
                &layer.w_down,
                MatmulIo {
                    xq: &hq,
                    xs: &hs,
                    accumulate: true,
                    norm_out: model
                        .layers
                        .get(l + 1)
                        .and_then(|next| folded_into(&next.attn_norm)),
                    ..io
                },
                &mut push,
            );
            gemm_launches(
                "down",
                &layer.w_down,
                &xf,
                &MatmulIo {
                    accumulate: true,
                    ..io
                },
            )
            .into_iter()
            .for_each(&mut push);
        }
        // logits = W_out · norm(x), for the rows asked for
        let mut head = vec![ops::rmsnorm::rmsnorm(
            &ctx,
            "output_norm",
            &x,
            &model.output_norm,
            c.n_embd,
            c.rms_eps,
            &unused,
            &xq,
            &xs,
            true,
        )];
        head.extend(matmul_int4(
            &ctx,
            "lm_head",
            model.lm_head(),
            &MatmulIo {
                out: &logits,
                out_stride: c.n_vocab,
                ..io
            },
        ));
        let hidden = ctx.storage("hidden", mr * c.n_embd as u64 * f);
        let final_hidden = ops::rmsnorm::rmsnorm(
            &ctx,
            "final_hidden",
            &x,
            &model.output_norm,
            c.n_embd,
            c.rms_eps,
            &hidden,
            &xq,
            &xs,
            false,
        );
        // next token of each logits row, sampled on the GPU: settings in, (id, log-prob) out
        let sample_rows = ctx.storage("sampling.rows", lm_rows as u64 * ops::sampling::ROW_BYTES);
        let sampled = ctx.storage("sampling.out", lm_rows as u64 * ops::sampling::OUT_BYTES);
        let sampling =
            ops::sampling::sampling(&ctx, "sampling", &logits, c.n_vocab, &sample_rows, &sampled);

        let mut pool = BlockPool::new(n_blocks, BLOCK_SIZE);
        let main = pool.create();
        Session {
            model,
            n_ctx,
            max_rows,
            lm_rows,
            pos: 0,
            main,
            pool,
            max_blocks,
            tokens,
            positions,
            slots,
            tables,
            logits,
            k_cache,
            v_cache,
            block_scratch,
            _buffers: vec![
                x, xq, xs, xf, hq, hs, attn_q, attn_s, qkv, attn, gate_up, unused, part_o, part_ml,
                mm_part, lora_u,
            ],
            body,
            head,
            final_hidden,
            hidden,
            lora,
            lora_rows,
            stream_adapter: Default::default(),
            step_timer: None,
            pending_copies: Default::default(),
            sampling,
            sample_rows,
            sampled,
        }
    }

    /// Let stream `s`'s next rows use adapter `index` of this session's set, or none.
    /// (Masked LoRA: a prompt is encoded with none, the generated tokens with the adapter,
    /// so the prompt's KV cache is the base model's whatever is decoded after it.)
    pub fn set_adapter(&mut self, s: StreamId, index: Option<usize>) -> Result<(), ForwardError> {
        match index {
            None => {
                self.stream_adapter.remove(&s);
            }
            Some(i) => {
                let loaded = self.lora.as_ref().map_or(0, |l| l.adapters.len());
                if i >= loaded {
                    return Err(ForwardError::NoSuchAdapter { index: i, loaded });
                }
                self.stream_adapter.insert(s, i);
            }
        }
        Ok(())
    }

    /// Layer `l`'s whole K and V cache as f16 bits (tests compare caches bit for bit).
    pub fn read_kv(&self, l: usize) -> Result<(Vec<u16>, Vec<u16>), ForwardError> {
        let ctx = &self.model.ctx;
        let n = (self.k_cache[l].size() / 2) as usize;
        Ok((
            ctx.read(&self.k_cache[l], 0, n)?,
            ctx.read(&self.v_cache[l], 0, n)?,
        ))
    }

    /// The adapter stream `s` uses, if any.
    pub fn adapter(&self, s: StreamId) -> Option<usize> {
        self.stream_adapter.get(&s).copied()
    }

    /// Bytes of activation buffers (residual, int8 blocks, qkv, ffn, logits, tables).
    pub fn activation_bytes(&self) -> u64 {
        self._buffers
            .iter()
            .chain([
                &self.logits,
                &self.tables,
                &self.tokens,
                &self.positions,
                &self.slots,
            ])
            .map(|b| b.size())
            .sum()
    }

    /// Bytes of the KV cache (all blocks, used or not).
    pub fn kv_bytes(&self) -> u64 {
        self.k_cache
            .iter()
            .chain(&self.v_cache)
            .map(|b| b.size())
            .sum()
    }

    /// Bytes of KV cache one token slot takes (all layers, K and V).
    pub fn kv_bytes_per_token(&self) -> u64 {
        let c = &self.model.config;
        (2 * c.n_layer * c.n_kv_head * c.head_dim * 2) as u64
    }

    /// `n` streams sharing every block of `s` (its prompt): no KV is copied. They start
    /// with `s`'s adapter choice.
    pub fn fork(&mut self, s: StreamId, n: usize) -> Result<Vec<StreamId>, ForwardError> {
        let kids = self.pool.fork(s, n)?;
        if let Some(a) = self.adapter(s) {
            kids.iter().for_each(|&k| {
                self.stream_adapter.insert(k, a);
            });
        }
        Ok(kids)
    }

    /// End stream `s`, returning the blocks only it held.
    pub fn release(&mut self, s: StreamId) -> Result<(), ForwardError> {
        self.stream_adapter.remove(&s);
        Ok(self.pool.release(s)?)
    }

    fn check(&self, tokens: &[u32]) -> Result<(), ForwardError> {
        let c = &self.model.config;
        if let Some(&id) = tokens.iter().find(|&&t| t as usize >= c.n_vocab) {
            return Err(ForwardError::BadToken {
                id,
                n_vocab: c.n_vocab,
            });
        }
        if self.pos + tokens.len() > self.n_ctx {
            return Err(ForwardError::ContextFull {
                needed: self.pos + tokens.len(),
                n_ctx: self.n_ctx,
                model_ctx: c.n_ctx,
            });
        }
        Ok(())
    }

    /// Reserve cache slots for `rows` (stream, token) pairs — consecutive rows of one stream
    /// take consecutive positions — copy any shared block that is about to be written
    /// (copy-on-write), and upload tokens, positions, slots and block tables. Returns the
    /// step: its rows, longest key count and shared-prefix length.
    fn prepare_rows(&mut self, rows: &[(StreamId, u32)]) -> Result<Step, ForwardError> {
        let started = Instant::now();
        let step = self.upload_rows(rows)?;
        self.model.ctx.stats.host_encode(started.elapsed());
        Ok(step)
    }

    fn upload_rows(&mut self, rows: &[(StreamId, u32)]) -> Result<Step, ForwardError> {
        let mut positions = Vec::with_capacity(rows.len());
        let mut copies: Vec<BlockCopy> = Vec::new();
        // Count per stream first so a stream's rows are appended in one go.
        let mut counts: Vec<(StreamId, usize)> = Vec::new();
        for &(s, _) in rows {
            match counts.iter_mut().find(|(t, _)| *t == s) {
                Some((_, n)) => *n += 1,
                None => counts.push((s, 1)),
            }
        }
        let mut start = std::collections::HashMap::new();
        for &(s, n) in &counts {
            start.insert(s, self.pool.len(s)?);
            copies.extend(self.pool.append(s, n)?);
        }
        let mut slots = Vec::with_capacity(rows.len());
        let mut tables = vec![0u32; rows.len() * self.max_blocks];
        for (i, &(s, _)) in rows.iter().enumerate() {
            let p = start.get_mut(&s).unwrap();
            positions.push(*p as u32);
            slots.push(self.pool.slot(s, *p)?);
            *p += 1;
            let t = self.pool.table(s)?;
            tables[i * self.max_blocks..i * self.max_blocks + t.len()].copy_from_slice(t);
        }
        let ctx = &self.model.ctx;
        // Copied at the head of the step's own command buffer (no submission of their own).
        self.pending_copies.borrow_mut().extend(copies);
        let toks: Vec<u32> = rows.iter().map(|r| r.1).collect();
        ctx.queue
            .write_buffer(&self.tokens, 0, bytemuck::cast_slice(&toks));
        ctx.queue
            .write_buffer(&self.positions, 0, bytemuck::cast_slice(&positions));
        ctx.queue
            .write_buffer(&self.slots, 0, bytemuck::cast_slice(&slots));
        ctx.queue
            .write_buffer(&self.tables, 0, bytemuck::cast_slice(&tables));
        // Each row's adapter as the LoRA kernels read it: (rank, rank offset), rank 0 = none.
        let mut adapters = false;
        if let Some(set) = &self.lora {
            let per_row: Vec<[u32; 2]> = rows
                .iter()
                .map(|(s, _)| match self.stream_adapter.get(s) {
                    Some(&a) => {
                        adapters = true;
                        [set.slots[a].0, set.slots[a].1]
                    }
                    None => [0, 0],
                })
                .collect();
            ctx.queue
                .write_buffer(&self.lora_rows, 0, bytemuck::cast_slice(&per_row));
        }
        // Keys all rows read from the very same blocks (a forked prompt), and attend to.
        let first = self.pool.table(rows[0].0)?;
        let mut shared_blocks = first.len();
        for &(s, _) in &rows[1..] {
            let t = self.pool.table(s)?;
            shared_blocks =
                shared_blocks.min(first.iter().zip(t).take_while(|(a, b)| a == b).count());
        }
        let min_keys = positions.iter().min().map_or(0, |p| p + 1);
        let shared_len = ((shared_blocks * BLOCK_SIZE) as u32).min(min_keys);
        let one_stream = rows.iter().all(|r| r.0 == rows[0].0);
        Ok(Step {
            rows: rows.len() as u32,
            row0: 0,
            kv_len: positions.iter().max().map_or(0, |p| p + 1),
            shared_len,
            adapters,
            one_stream,
        })
    }

    fn main_rows(&self, tokens: &[u32]) -> Vec<(StreamId, u32)> {
        tokens.iter().map(|&t| (self.main, t)).collect()
    }

    /// Append `tokens` to the stream and return the logits after the last one.
    pub fn forward(&mut self, tokens: &[u32]) -> Result<Vec<f32>, ForwardError> {
        Ok(self
            .forward_chunks(tokens, None::<fn(Option<Vec<f32>>, &[f32]) -> Vec<f32>>)?
            .0)
    }

    /// As [`forward`](Self::forward), also pooling the final-norm hidden states of the
    /// tokens: each prefill chunk's mean folded in by `pool(pooled so far, chunk mean)` (the
    /// switcher's moving average). Costs one f32 norm and a read-back per chunk.
    pub fn forward_pooled(
        &mut self,
        tokens: &[u32],
        pool: impl Fn(Option<Vec<f32>>, &[f32]) -> Vec<f32>,
    ) -> Result<(Vec<f32>, Vec<f32>), ForwardError> {
        let (logits, pooled) = self.forward_chunks(tokens, Some(pool))?;
        Ok((logits, pooled.unwrap_or_default()))
    }

    fn forward_chunks(
        &mut self,
        tokens: &[u32],
        pool: Option<impl Fn(Option<Vec<f32>>, &[f32]) -> Vec<f32>>,
    ) -> Result<(Vec<f32>, Option<Vec<f32>>), ForwardError> {
        self.check(tokens)?;
        let ctx = self.model.ctx.clone();
        let d = self.model.config.n_embd;
        let n_chunks = tokens.len().div_ceil(self.max_rows);
        let mut pooled = None;
        for (i, chunk) in tokens.chunks(self.max_rows).enumerate() {
            let step = self.prepare_rows(&self.main_rows(chunk))?;
            let rows = chunk.len() as u32;
            let last = i + 1 == n_chunks;
            self.record_submit(|pass, ctx| {
                self.body
                    .iter()
                    .for_each(|(_, d)| d.record_step(ctx, pass, &step));
                if pool.is_some() {
                    self.final_hidden.record(ctx, pass, rows, 0);
                }
                if last {
                    self.head
                        .iter()
                        .for_each(|d| d.record(ctx, pass, 1, rows - 1));
                }
            });
            self.pos += chunk.len();
            if let Some(pool) = &pool {
                let h: Vec<f32> = ctx.read(&self.hidden, 0, chunk.len() * d)?;
                let mut mean = vec![0f32; d];
                h.chunks(d)
                    .for_each(|row| mean.iter_mut().zip(row).for_each(|(m, v)| *m += v));
                mean.iter_mut().for_each(|m| *m /= chunk.len() as f32);
                pooled = Some(pool(pooled, &mean));
            }
        }
        Ok((
            ctx.read(&self.logits, 0, self.model.config.n_vocab)?,
            pooled,
        ))
    }

    /// Advance streams by `rows` (a stream may take several consecutive rows) and return
    /// every row's final-norm hidden state instead of logits (the verifier's features).
    pub fn hidden_rows(&mut self, rows: &[(StreamId, u32)]) -> Result<Vec<Vec<f32>>, ForwardError> {
        let n_vocab = self.model.config.n_vocab;
        if let Some(&(_, id)) = rows.iter().find(|r| r.1 as usize >= n_vocab) {
            return Err(ForwardError::BadToken { id, n_vocab });
        }
        if rows.len() > self.max_rows {
            return Err(ForwardError::TooManyRows {
                rows: rows.len(),
                max: self.max_rows,
            });
        }
        let step = self.prepare_rows(rows)?;
        self.record_submit(|pass, ctx| {
            self.body
                .iter()
                .for_each(|(_, d)| d.record_step(ctx, pass, &step));
            self.final_hidden.record(ctx, pass, step.rows, 0);
        });
        if rows.iter().any(|r| r.0 == self.main) {
            self.pos = self.pool.len(self.main)?;
        }
        let d = self.model.config.n_embd;
        let h: Vec<f32> = self.model.ctx.read(&self.hidden, 0, rows.len() * d)?;
        Ok(h.chunks(d).map(|r| r.to_vec()).collect())
    }

    /// Append `tokens` and hand the logits after every one of them to `each(i, logits)`
    /// (teacher-forced scoring).
    pub fn forward_all(
        &mut self,
        tokens: &[u32],
        mut each: impl FnMut(usize, &[f32]),
    ) -> Result<(), ForwardError> {
        self.check(tokens)?;
        let ctx = self.model.ctx.clone();
        let n_vocab = self.model.config.n_vocab;
        for (ci, chunk) in tokens.chunks(self.max_rows).enumerate() {
            let step = self.prepare_rows(&self.main_rows(chunk))?;
            self.record_submit(|pass, ctx| {
                self.body
                    .iter()
                    .for_each(|(_, d)| d.record_step(ctx, pass, &step))
            });
            let mut r0 = 0;
            while r0 < chunk.len() {
                let n = (chunk.len() - r0).min(self.lm_rows);
                self.record_submit(|pass, ctx| {
                    self.head
                        .iter()
                        .for_each(|d| d.record(ctx, pass, n as u32, r0 as u32))
                });
                let logits: Vec<f32> = ctx.read(&self.logits, 0, n * n_vocab)?;
                for j in 0..n {
                    each(
                        ci * self.max_rows + r0 + j,
                        &logits[j * n_vocab..(j + 1) * n_vocab],
                    );
                }
                r0 += n;
            }
            self.pos += chunk.len();
        }
        Ok(())
    }

    /// Record one compute pass with `f` and submit it; its host time goes to the context's
    /// stats, and with [`time_steps`](Self::time_steps) on, the pass is bracketed by GPU
    /// timestamps.
    fn record_submit(&self, f: impl FnOnce(&mut wgpu::ComputePass<'_>, &crate::gpu::GpuContext)) {
        let ctx = &self.model.ctx;
        let t = Instant::now();
        let mut enc = ctx.device.create_command_encoder(&Default::default());
        self.encode_block_copies(&mut enc);
        {
            let mut pass = match &self.step_timer {
                Some((set, _)) => {
                    ctx.stats.pass();
                    enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: None,
                        timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                            query_set: set,
                            beginning_of_pass_write_index: Some(0),
                            end_of_pass_write_index: Some(1),
                        }),
                    })
                }
                None => ctx.compute_pass(&mut enc),
            };
            f(&mut pass, ctx);
        }
        if let Some((set, resolved)) = &self.step_timer {
            enc.resolve_query_set(set, 0..2, resolved, 0);
        }
        ctx.submit(enc);
        ctx.stats.host_encode(t.elapsed());
    }

    /// Encode the copy-on-write block copies `prepare_rows` queued (before the step's pass).
    fn encode_block_copies(&self, enc: &mut wgpu::CommandEncoder) {
        let c = &self.model.config;
        let row_bytes = (BLOCK_SIZE * c.n_kv_head * c.head_dim * 2) as u64;
        for copy in self.pending_copies.borrow_mut().drain(..) {
            // A buffer cannot be both source and destination of one copy: go through scratch.
            for cache in self.k_cache.iter().chain(&self.v_cache) {
                enc.copy_buffer_to_buffer(
                    cache,
                    copy.src as u64 * row_bytes,
                    &self.block_scratch,
                    0,
                    row_bytes,
                );
                enc.copy_buffer_to_buffer(
                    &self.block_scratch,
                    0,
                    cache,
                    copy.dst as u64 * row_bytes,
                    row_bytes,
                );
            }
        }
    }

    /// Bracket every step's pass with GPU timestamps (where the adapter has them) so
    /// [`last_step_gpu_ms`](Self::last_step_gpu_ms) can report it (`bench`).
    pub fn time_steps(&mut self, on: bool) {
        let ctx = &self.model.ctx;
        self.step_timer =
            (on && ctx.features.contains(wgpu::Features::TIMESTAMP_QUERY)).then(|| {
                let set = ctx.device.create_query_set(&wgpu::QuerySetDescriptor {
                    label: Some("step.timestamps"),
                    ty: wgpu::QueryType::Timestamp,
                    count: 2,
                });
                let resolved = ctx.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("step.timestamps.resolve"),
                    size: 16,
                    usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                    mapped_at_creation: false,
                });
                (set, resolved)
            });
    }

    /// GPU time of the last step's pass, if [`time_steps`](Self::time_steps) is on and the
    /// adapter has timestamp queries.
    pub fn last_step_gpu_ms(&self) -> Result<Option<f64>, ForwardError> {
        let Some((_, resolved)) = &self.step_timer else {
            return Ok(None);
        };
        let ctx = &self.model.ctx;
        let ticks: Vec<u64> = ctx.read(resolved, 0, 2)?;
        Ok(Some(
            ticks[1].saturating_sub(ticks[0]) as f64 * ctx.queue.get_timestamp_period() as f64
                / 1e6,
        ))
    }

    /// Run one step of `tokens` (and the greedy GPU sampling launch a decode step ends
    /// with, unless `EDGEREASON_CPU_SAMPLING=1`) and add each kernel kind's time to
    /// `profile`. With timestamp queries (most adapters, lavapipe included) every launch
    /// gets its own pass with GPU timestamps at its start and end, all in one submission;
    /// without them each launch is submitted and waited for alone and wall time is taken
    /// (slower, and includes submission overhead). For `bench`.
    pub fn forward_profiled(
        &mut self,
        tokens: &[u32],
        profile: &mut KernelProfile,
    ) -> Result<Vec<f32>, ForwardError> {
        self.check(tokens)?;
        assert!(tokens.len() <= self.max_rows);
        let ctx = self.model.ctx.clone();
        let step = self.prepare_rows(&self.main_rows(tokens))?;
        let (rows, kv_len) = (step.rows, step.kv_len);
        // the GPU sampling launch too (greedy), as a decode step runs it
        self.write_sample_rows(std::iter::once(SampleRow::default()));
        let launches: Vec<(&Dispatch, Step)> = self
            .body
            .iter()
            .map(|(_, d)| (d, step))
            .chain(self.head.iter().map(|d| {
                (
                    d,
                    Step {
                        rows: 1,
                        row0: rows - 1,
                        kv_len,
                        ..Default::default()
                    },
                )
            }))
            .chain((!crate::sampling::cpu_sampling()).then_some((
                &self.sampling,
                Step {
                    rows: 1,
                    ..Default::default()
                },
            )))
            .collect();
        let kind = |d: &Dispatch| d.label.split('[').next().unwrap_or(&d.label).to_string();
        ctx.wait();
        if ctx.features.contains(wgpu::Features::TIMESTAMP_QUERY) {
            profile.source = "timestamp queries".into();
            let n = launches.len() as u32;
            let set = ctx.device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("profile"),
                ty: wgpu::QueryType::Timestamp,
                count: 2 * n,
            });
            let resolved = ctx.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("profile.resolve"),
                size: 16 * n as u64,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            });
            let mut enc = ctx.device.create_command_encoder(&Default::default());
            self.encode_block_copies(&mut enc);
            for (i, (d, step)) in launches.iter().enumerate() {
                let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: None,
                    timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                        query_set: &set,
                        beginning_of_pass_write_index: Some(2 * i as u32),
                        end_of_pass_write_index: Some(2 * i as u32 + 1),
                    }),
                });
                d.record_step(&ctx, &mut pass, step);
            }
            enc.resolve_query_set(&set, 0..2 * n, &resolved, 0);
            ctx.submit(enc);
            let ticks: Vec<u64> = ctx.read(&resolved, 0, 2 * n as usize)?;
            let ns_per_tick = ctx.queue.get_timestamp_period() as f64;
            for (i, (d, _)) in launches.iter().enumerate() {
                let ms = ticks[2 * i + 1].saturating_sub(ticks[2 * i]) as f64 * ns_per_tick / 1e6;
                *profile.ms.entry(kind(d)).or_default() += ms;
            }
        } else {
            profile.source = "wall clock per launch".into();
            for (d, step) in &launches {
                let t = Instant::now();
                self.record_submit(|pass, ctx| d.record_step(ctx, pass, step));
                ctx.wait();
                *profile.ms.entry(kind(d)).or_default() += t.elapsed().as_secs_f64() * 1e3;
            }
        }
        self.pos += tokens.len();
        Ok(ctx.read(&self.logits, 0, self.model.config.n_vocab)?)
    }

    /// Advance several streams by one token each in one batched step (every weight is
    /// read once for all rows) and return each row's logits, in row order.
    pub fn forward_rows(
        &mut self,
        rows: &[(StreamId, u32)],
    ) -> Result<Vec<Vec<f32>>, ForwardError> {
        let n_vocab = self.model.config.n_vocab;
        self.check_rows(rows)?;
        let step = self.prepare_rows(rows)?;
        self.record_submit(|pass, ctx| {
            self.body
                .iter()
                .for_each(|(_, d)| d.record_step(ctx, pass, &step));
            self.head
                .iter()
                .for_each(|d| d.record_step(ctx, pass, &step));
        });
        if rows.iter().any(|r| r.0 == self.main) {
            self.pos = self.pool.len(self.main)?;
        }
        let logits: Vec<f32> = self.model.ctx.read(&self.logits, 0, rows.len() * n_vocab)?;
        Ok(logits.chunks(n_vocab).map(|r| r.to_vec()).collect())
    }

    /// Checks of a decode step: known tokens, at most `lm_rows` rows, room in each stream.
    fn check_rows(&self, rows: &[(StreamId, u32)]) -> Result<(), ForwardError> {
        let n_vocab = self.model.config.n_vocab;
        if let Some(&(_, id)) = rows.iter().find(|r| r.1 as usize >= n_vocab) {
            return Err(ForwardError::BadToken { id, n_vocab });
        }
        if rows.len() > self.lm_rows {
            return Err(ForwardError::TooManyRows {
                rows: rows.len(),
                max: self.lm_rows,
            });
        }
        for &(s, _) in rows {
            let len = self.pool.len(s)?;
            if len + 1 > self.n_ctx {
                return Err(ForwardError::ContextFull {
                    needed: len + 1,
                    n_ctx: self.n_ctx,
                    model_ctx: self.model.config.n_ctx,
                });
            }
        }
        Ok(())
    }

    /// As [`forward_rows`](Self::forward_rows), then each row's next token sampled on the
    /// GPU in the same submission (`sampling[i]` for row i: its stream's settings and
    /// step, see [`ops::sampling`]); reads back only (id, log-prob) per row, 8 bytes
    /// instead of `n_vocab` floats.
    pub fn forward_rows_sampled(
        &mut self,
        rows: &[(StreamId, u32)],
        sampling: &[RowSampling],
    ) -> Result<Vec<(u32, f32)>, ForwardError> {
        assert_eq!(rows.len(), sampling.len(), "one sampling setting per row");
        self.check_rows(rows)?;
        let step = self.prepare_rows(rows)?;
        self.write_sample_rows(sampling.iter().enumerate().map(|(i, s)| s.row(i as u32)));
        self.record_submit(|pass, ctx| {
            self.body
                .iter()
                .for_each(|(_, d)| d.record_step(ctx, pass, &step));
            self.head
                .iter()
                .for_each(|d| d.record_step(ctx, pass, &step));
            self.sampling.record(ctx, pass, step.rows, 0);
        });
        if rows.iter().any(|r| r.0 == self.main) {
            self.pos = self.pool.len(self.main)?;
        }
        self.read_sampled(rows.len())
    }

    /// Sample `sampling.len()` tokens (at most `lm_rows`) on the GPU, all from the logits
    /// the last [`forward`](Self::forward) left (its last position): the first token of
    /// each stream forked from a prompt. Reads back only (id, log-prob) per row.
    pub fn sample_last_logits(
        &mut self,
        sampling: &[RowSampling],
    ) -> Result<Vec<(u32, f32)>, ForwardError> {
        if sampling.len() > self.lm_rows {
            return Err(ForwardError::TooManyRows {
                rows: sampling.len(),
                max: self.lm_rows,
            });
        }
        self.write_sample_rows(sampling.iter().map(|s| s.row(0)));
        self.record_submit(|pass, ctx| self.sampling.record(ctx, pass, sampling.len() as u32, 0));
        self.read_sampled(sampling.len())
    }

    fn write_sample_rows(&self, rows: impl Iterator<Item = SampleRow>) {
        let rows: Vec<SampleRow> = rows.collect();
        self.model
            .ctx
            .queue
            .write_buffer(&self.sample_rows, 0, bytemuck::cast_slice(&rows));
    }

    fn read_sampled(&self, rows: usize) -> Result<Vec<(u32, f32)>, ForwardError> {
        let out: Vec<Sampled> = self.model.ctx.read(&self.sampled, 0, rows)?;
        Ok(out.iter().map(|s| (s.id, s.logprob)).collect())
    }
}
