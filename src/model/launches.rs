//! The forward pass as a list of launches, built once per [`Session`](super::Session) and
//! replayed every step: the buffers a step works in ([`Activations`], [`StepInputs`], the
//! paged [`KvCache`]) and [`Launches`], which writes the model's math block by block.
//!
//! Each matmul may have two launch lists where the device takes the prefill GEMM: the int8
//! path (decode, and steps with adapters) and the f32 GEMM (prefill-sized steps without
//! adapters); `When::Gemm` picks one per step.

use super::GpuModel;
use crate::adapters::{LoraApply, LoraSet};
use crate::gpu::{GpuContext, GpuError};
use crate::ops::attention::{AttentionIo, AttentionPlan, BlockTables};
use crate::ops::lora::LoraRows;
use crate::ops::matmul_int4::{
    matmul_int4, MatmulIo, MatmulLora, MatmulRope, NormOut, QuantMatrix,
};
use crate::ops::{self, Dispatch, When};

/// Per-row inputs every step uploads.
pub(super) struct StepInputs {
    pub tokens: wgpu::Buffer,    // [max_rows] u32
    pub positions: wgpu::Buffer, // [max_rows] u32
    pub slots: wgpu::Buffer,     // [max_rows] u32: cache slot each row's K/V is written to
    pub tables: wgpu::Buffer,    // [max_rows][max_blocks] u32: each row's block table
    pub max_blocks: usize,
}

/// The paged KV cache: per layer, [slot][n_kv_head·head_dim] f16.
pub(super) struct KvCache {
    pub k: Vec<wgpu::Buffer>,
    pub v: Vec<wgpu::Buffer>,
}

/// The activations of one step of up to `max_rows` rows.
pub(super) struct Activations {
    /// Residual stream [m][n_embd].
    pub x: wgpu::Buffer,
    /// int8 blocks of the next matmul's input: [m][k/4] words, [m][k/32] stats.
    pub xq: wgpu::Buffer,
    pub xs: wgpu::Buffer,
    /// Attention's output as Wo's int8 blocks (Wo's epilogue writes xq/xs meanwhile).
    pub attn_q: wgpu::Buffer,
    pub attn_s: wgpu::Buffer,
    /// h = silu(gate)·up as the down projection's int8 blocks.
    pub hq: wgpu::Buffer,
    pub hs: wgpu::Buffer,
    pub qkv: wgpu::Buffer,     // [m][q_dim + 2·kv_dim]
    pub attn: wgpu::Buffer,    // [m][q_dim]
    pub gate_up: wgpu::Buffer, // [m][2·n_ff]
    /// Prefill GEMM path: the normalized x, then the SwiGLU output, as f32 rows.
    pub xf: wgpu::Buffer,
    /// Split-K scratch of attention (o, (max, sum)) and of the matmuls.
    pub part_o: wgpu::Buffer,
    pub part_ml: wgpu::Buffer,
    pub mm_part: wgpu::Buffer,
    /// LoRA: each row's (rank, rank offset), and its low-rank activations A·x.
    pub lora_rows: wgpu::Buffer,
    pub lora_u: wgpu::Buffer,
    pub u_stride: usize,
    /// Binds where a launch needs a buffer it does not use.
    pub unused: wgpu::Buffer,
}

impl Activations {
    pub fn new(model: &GpuModel, max_rows: usize, lora: Option<&LoraSet>) -> Self {
        let (ctx, c) = (&model.ctx, &model.config);
        let (q_dim, kv_dim) = (c.n_head * c.head_dim, c.n_kv_head * c.head_dim);
        let max_k = c.n_embd.max(c.n_ff).max(q_dim);
        let (mr, f) = (max_rows as u64, 4u64);
        // int8 blocks of `k` features per row: the words, then 16 bytes of stats per 32.
        let blocks = |name: &str, k: usize| {
            (
                ctx.storage(&format!("{name}.q"), mr * k as u64),
                ctx.storage(&format!("{name}.s"), mr * (k / 32) as u64 * 16),
            )
        };
        let ((xq, xs), (attn_q, attn_s), (hq, hs)) = (
            blocks("x", max_k),
            blocks("attn", q_dim),
            blocks("h", c.n_ff),
        );
        let (po, pml) = ops::attention::partial_bytes(c.n_head, c.head_dim);
        let mm_part_bytes = model
            .layers
            .iter()
            .flat_map(|l| [&l.wqkv, &l.wo, &l.w_gate_up, &l.w_down])
            .chain([model.lm_head()])
            .map(|w| ops::matmul_int4::partial_bytes(ctx, w))
            .max()
            .unwrap_or(0);
        let u_stride = lora.map_or(1, |l| l.u_stride());
        Activations {
            x: ctx.storage("x", mr * c.n_embd as u64 * f),
            xq,
            xs,
            attn_q,
            attn_s,
            hq,
            hs,
            qkv: ctx.storage("qkv", mr * (q_dim + 2 * kv_dim) as u64 * f),
            attn: ctx.storage("attn", mr * q_dim as u64 * f),
            gate_up: ctx.storage("gate_up", mr * 2 * c.n_ff as u64 * f),
            xf: ctx.storage("xf", mr * c.n_embd.max(c.n_ff) as u64 * f),
            part_o: ctx.storage("attn.part_o", po),
            part_ml: ctx.storage("attn.part_ml", pml),
            mm_part: ctx.storage("matmul.partials", mm_part_bytes),
            lora_rows: ctx.storage("lora.rows", mr * 8),
            lora_u: ctx.storage("lora.u", mr * u_stride as u64 * f),
            u_stride,
            unused: ctx.storage("unused", 16),
        }
    }

    /// Bytes of every activation buffer.
    pub fn bytes(&self) -> u64 {
        [
            &self.x,
            &self.xq,
            &self.xs,
            &self.attn_q,
            &self.attn_s,
            &self.hq,
            &self.hs,
            &self.qkv,
            &self.attn,
            &self.gate_up,
            &self.xf,
            &self.part_o,
            &self.part_ml,
            &self.mm_part,
            &self.lora_rows,
            &self.lora_u,
        ]
        .iter()
        .map(|b| b.size())
        .sum()
    }
}

/// The GEMM kernel of prefill-sized steps (f32 activation rows, many rows per weight).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum PrefillGemm {
    /// shaders/prefill_gemm.wgsl with this register tile (ROWS, COLS quads).
    Tiled((u32, u32)),
    /// shaders/prefill_coop.wgsl on the matrix units.
    Cooperative(ops::prefill_coop::CoopShape),
}

impl PrefillGemm {
    /// The tensor-core GEMM where chosen ([`ops::prefill_coop::shape_for_prefill`]), else
    /// the tiled one where the device takes it and every layer matrix fits it.
    fn for_device(ctx: &GpuContext, model: &GpuModel) -> Option<Self> {
        if let Some(s) = ops::prefill_coop::shape_for_prefill(ctx) {
            return Some(Self::Cooperative(s));
        }
        let fits = model.layers.iter().all(|l| {
            [&l.wqkv, &l.wo, &l.w_gate_up, &l.w_down]
                .into_iter()
                .all(ops::prefill_gemm::fits)
        });
        ops::prefill_gemm::tile_for_device(ctx)
            .filter(|_| fits)
            .map(Self::Tiled)
    }
}

/// Builds the launch lists of one session's forward pass.
pub(super) struct Launches<'a> {
    pub ctx: &'a GpuContext,
    pub model: &'a GpuModel,
    pub a: &'a Activations,
    pub inputs: &'a StepInputs,
    pub kv: &'a KvCache,
    pub lora: Option<&'a LoraSet>,
    pub apply: LoraApply,
    /// The GEMM prefill-sized steps take, where the device takes one (else they stay on
    /// the int8 path).
    pub gemm: Option<PrefillGemm>,
    pub plan: AttentionPlan,
    /// Residual matmuls write the next RMSNorm's blocks (see [`NormOut`]).
    pub fold_norms: bool,
    pub rope_params: wgpu::Buffer,
}

impl<'a> Launches<'a> {
    /// This device's choices for `model` (EDGEREASON_FOLD_NORMS=0 keeps the norm launches).
    pub fn new(
        model: &'a GpuModel,
        a: &'a Activations,
        inputs: &'a StepInputs,
        kv: &'a KvCache,
        lora: Option<&'a LoraSet>,
        apply: LoraApply,
    ) -> Self {
        let (ctx, c) = (model.ctx.as_ref(), &model.config);
        let fold_norms = crate::gpu::tuning::knob("EDGEREASON_FOLD_NORMS").is_none_or(|v| v != "0")
            && model.layers.iter().all(|l| {
                ops::matmul_int4::norm_foldable(&l.wo) && ops::matmul_int4::norm_foldable(&l.w_down)
            });
        Launches {
            ctx,
            model,
            a,
            inputs,
            kv,
            lora,
            apply,
            gemm: PrefillGemm::for_device(ctx, model),
            plan: AttentionPlan::for_device(ctx),
            fold_norms,
            rope_params: ops::matmul_int4::rope_params(ctx, c.n_head, c.n_kv_head, c.rope_theta),
        }
    }

    /// The transformer body: the embedding, then every layer's two residual blocks.
    pub fn body(&self) -> Result<Vec<(usize, Dispatch)>, GpuError> {
        let a = self.a;
        let mut body: Vec<(usize, Dispatch)> = ops::embedding::embedding(
            self.ctx,
            "embedding",
            &self.model.token_embd,
            &self.inputs.tokens,
            &a.x,
        )
        .into_iter()
        .map(|d| (0, d))
        .collect();
        for l in 0..self.model.layers.len() {
            let mut push = |d: Dispatch| body.push((l, d));
            self.attention_block(l, &mut push)?;
            self.ffn_block(l, &mut push)?;
        }
        Ok(body)
    }

    /// x = x + Wo · attention(rope(Wqkv · norm(x)))
    fn attention_block(&self, l: usize, push: &mut dyn FnMut(Dispatch)) -> Result<(), GpuError> {
        let (a, c, layer) = (self.a, &self.model.config, &self.model.layers[l]);
        let (hd, q_dim) = (c.head_dim, c.n_head * c.head_dim);
        let qkv_dim = q_dim + 2 * c.n_kv_head * hd;
        // After the first layer, the previous down projection wrote this norm's blocks.
        let folded = self.fold_norms && l > 0;
        self.norm("attn_norm", &layer.attn_norm, folded)
            .into_iter()
            .for_each(&mut *push);
        let qkv_io = MatmulIo {
            bias: layer.bqkv.as_ref(),
            ..self.io(&a.qkv, qkv_dim)
        };
        // On the int8 path the QKV epilogue rotates Q and K and stores K and V in the cache
        // where the head size allows; else (and for the GEMM) a RoPE launch does.
        let fuse_rope = ops::matmul_int4::rope_fusable(&layer.wqkv, hd);
        let rope = fuse_rope.then_some(MatmulRope {
            params: &self.rope_params,
            head_dim: hd,
            positions: &self.inputs.positions,
            slots: &self.inputs.slots,
            k_cache: &self.kv.k[l],
            v_cache: &self.kv.v[l],
        });
        let folded_norm = folded.then_some(c.rms_eps);
        let io = MatmulIo {
            rope,
            folded_norm,
            ..qkv_io
        };
        self.matmul(l, 0, "qkv", &layer.wqkv, io, push)?;
        self.gemm("qkv", &layer.wqkv, &a.xf, &qkv_io)?
            .into_iter()
            .for_each(&mut *push);
        let rope_launch = self.rope(l);
        if !fuse_rope {
            push(rope_launch);
        } else if self.gemm.is_some() {
            push(rope_launch.only(When::Gemm(true)));
        }
        self.attention(l)?.into_iter().for_each(&mut *push);
        let wo_io = MatmulIo {
            xq: &a.attn_q,
            xs: &a.attn_s,
            accumulate: true,
            norm_out: self.norm_out(&layer.ffn_norm),
            ..self.io(&a.x, c.n_embd)
        };
        self.matmul(l, 1, "wo", &layer.wo, wo_io, push)?;
        self.gemm("wo", &layer.wo, &a.attn, &wo_io)?
            .into_iter()
            .for_each(&mut *push);
        Ok(())
    }

    /// x = x + W_down · (silu(W_gate · norm(x)) ⊙ W_up · norm(x))
    fn ffn_block(&self, l: usize, push: &mut dyn FnMut(Dispatch)) -> Result<(), GpuError> {
        let (a, c, layer) = (self.a, &self.model.config, &self.model.layers[l]);
        self.norm("ffn_norm", &layer.ffn_norm, self.fold_norms)
            .into_iter()
            .for_each(&mut *push);
        let gate_up_io = self.io(&a.gate_up, 2 * c.n_ff);
        // On the int8 path gate|up's epilogue applies SwiGLU and writes h as the down
        // projection's int8 blocks where the matrix allows; else a launch does.
        let fuse_swiglu = ops::matmul_int4::swiglu_fusable(&layer.w_gate_up);
        let io = MatmulIo {
            swiglu: fuse_swiglu.then_some((&a.hq, &a.hs)),
            folded_norm: self.fold_norms.then_some(c.rms_eps),
            ..gate_up_io
        };
        self.matmul(l, 2, "gate_up", &layer.w_gate_up, io, push)?;
        self.gemm("gate_up", &layer.w_gate_up, &a.xf, &gate_up_io)?
            .into_iter()
            .for_each(&mut *push);
        if !fuse_swiglu {
            push(self.int8(ops::swiglu::swiglu(
                self.ctx, "swiglu", &a.gate_up, c.n_ff, &a.hq, &a.hs,
            )));
        }
        if self.gemm.is_some() {
            let f32_rows =
                ops::swiglu::swiglu_f32(self.ctx, "swiglu", &a.gate_up, c.n_ff, &a.xf, &a.unused);
            push(f32_rows.only(When::Gemm(true)));
        }
        // The last layer's output norm is the head's own launch (it runs on a row range).
        let next_norm = self.model.layers.get(l + 1).map(|n| &n.attn_norm);
        let down_io = MatmulIo {
            xq: &a.hq,
            xs: &a.hs,
            accumulate: true,
            norm_out: next_norm.and_then(|g| self.norm_out(g)),
            ..self.io(&a.x, c.n_embd)
        };
        self.matmul(l, 3, "down", &layer.w_down, down_io, push)?;
        let gemm_io = MatmulIo {
            accumulate: true,
            ..self.io(&a.x, c.n_embd)
        };
        self.gemm("down", &layer.w_down, &a.xf, &gemm_io)?
            .into_iter()
            .for_each(&mut *push);
        Ok(())
    }

    /// logits = W_out · norm(x), for the rows of a range.
    pub fn head(&self, logits: &wgpu::Buffer) -> Result<Vec<Dispatch>, GpuError> {
        let (a, c) = (self.a, &self.model.config);
        let norm = ops::rmsnorm::rmsnorm(
            self.ctx,
            "output_norm",
            &a.x,
            &self.model.output_norm,
            c.n_embd,
            c.rms_eps,
            &a.unused,
            &a.xq,
            &a.xs,
            true,
        );
        let io = self.io(logits, c.n_vocab);
        let lm_head = matmul_int4(self.ctx, "lm_head", self.model.lm_head(), &io)?;
        Ok(std::iter::once(norm).chain(lm_head).collect())
    }

    /// The int8 path's matmuls read the shared blocks xq/xs; each call names its output.
    fn io(&self, out: &'a wgpu::Buffer, out_stride: usize) -> MatmulIo<'a> {
        MatmulIo::new(&self.a.xq, &self.a.xs, out, out_stride, &self.a.mm_part)
    }

    /// The next RMSNorm (weight `g`) folded into a residual matmul's epilogue, if folding.
    fn norm_out(&self, g: &'a wgpu::Buffer) -> Option<NormOut<'a>> {
        self.fold_norms.then_some(NormOut {
            weight: g,
            xq: &self.a.xq,
            xs: &self.a.xs,
        })
    }

    /// A launch of the int8 path: only in non-GEMM steps where the device has the GEMM.
    fn int8(&self, d: Dispatch) -> Dispatch {
        if self.gemm.is_some() {
            d.only(When::Gemm(false))
        } else {
            d
        }
    }

    /// An RMSNorm: into int8 blocks for the int8 path (unless `folded` into the previous
    /// epilogue), and into f32 rows for the GEMM path where the device has one.
    fn norm(&self, label: &str, weight: &wgpu::Buffer, folded: bool) -> Vec<Dispatch> {
        let (a, c) = (self.a, &self.model.config);
        let launch = |out: &wgpu::Buffer, quantized| {
            ops::rmsnorm::rmsnorm(
                self.ctx, label, &a.x, weight, c.n_embd, c.rms_eps, out, &a.xq, &a.xs, quantized,
            )
        };
        let int8 = (!folded).then(|| self.int8(launch(&a.unused, true)));
        let f32_rows = self
            .gemm
            .map(|_| launch(&a.xf, false).only(When::Gemm(true)));
        int8.into_iter().chain(f32_rows).collect()
    }

    /// Matmul `f` of layer `l` on the int8 path with its LoRA (see adapters::FUSED): the
    /// low-rank shrink, then the int4 matmul adding s·B·u in its output pass, or
    /// (Separate) a pass of its own.
    fn matmul(
        &self,
        l: usize,
        f: usize,
        label: &str,
        w: &QuantMatrix,
        io: MatmulIo,
        push: &mut dyn FnMut(Dispatch),
    ) -> Result<(), GpuError> {
        let ctx = self.ctx;
        let Some(set) = self.lora else {
            matmul_int4(ctx, label, w, &io)?
                .into_iter()
                .for_each(|d| push(self.int8(d)));
            return Ok(());
        };
        let m = &set.layers[l][f];
        let rows = LoraRows {
            rows: &self.a.lora_rows,
            u: &self.a.lora_u,
            u_stride: self.a.u_stride,
        };
        let shrink_label = format!("{label}.lora_a");
        push(ops::lora::shrink(
            ctx,
            &shrink_label,
            &m.a,
            m.k,
            m.segs,
            m.a_cols,
            set.max_rank,
            &rows,
            io.xq,
            io.xs,
            io.folded_norm,
            ops::lora::split_for_device(ctx),
        ));
        let fused = MatmulLora {
            rows,
            b: &m.b,
            segments: m.segments,
        };
        let lora = (self.apply == LoraApply::Fused).then_some(fused);
        for d in matmul_int4(ctx, label, w, &MatmulIo { lora, ..io })? {
            push(self.int8(d));
        }
        if self.apply == LoraApply::Separate {
            push(ops::lora::expand(
                ctx,
                &format!("{label}.lora_b"),
                &m.b,
                m.n,
                m.segments,
                &rows,
                io.out,
                io.out_stride,
                io.xq,
                io.xs,
            ));
        }
        Ok(())
    }

    /// The GEMM path's launches of a matmul over f32 rows `x` (none where the device keeps
    /// the int8 path for prefill).
    fn gemm(
        &self,
        label: &str,
        w: &QuantMatrix,
        x: &wgpu::Buffer,
        io: &MatmulIo,
    ) -> Result<Vec<Dispatch>, GpuError> {
        match self.gemm {
            Some(PrefillGemm::Tiled(t)) => ops::prefill_gemm::gemm(self.ctx, label, w, x, io, t),
            Some(PrefillGemm::Cooperative(s)) => {
                Ok(ops::prefill_coop::gemm(self.ctx, label, w, x, io, s))
            }
            None => Ok(Vec::new()),
        }
    }

    /// RoPE on Q and K of `qkv` and the store of K and V into layer `l`'s cache.
    fn rope(&self, l: usize) -> Dispatch {
        let c = &self.model.config;
        ops::rope::rope_store_kv(
            self.ctx,
            "rope",
            &self.a.qkv,
            &self.inputs.positions,
            &self.inputs.slots,
            &self.kv.k[l],
            &self.kv.v[l],
            c.n_head,
            c.n_kv_head,
            c.head_dim,
            c.rope_theta,
        )
    }

    /// Attention of layer `l`, writing Wo's int8 blocks itself where heads hold whole
    /// blocks (else a quantization launch follows).
    fn attention(&self, l: usize) -> Result<Vec<Dispatch>, GpuError> {
        let (a, c) = (self.a, &self.model.config);
        let (hd, q_dim) = (c.head_dim, c.n_head * c.head_dim);
        let fused_quant = ops::attention::quantizes_output(hd);
        let io = AttentionIo {
            qkv: &a.qkv,
            qkv_stride: q_dim + 2 * c.n_kv_head * hd,
            positions: &self.inputs.positions,
            k_cache: &self.kv.k[l],
            v_cache: &self.kv.v[l],
            tables: BlockTables {
                tables: &self.inputs.tables,
                block_size: super::forward::BLOCK_SIZE as u32,
                max_blocks: self.inputs.max_blocks as u32,
            },
            out: &a.attn,
            partials: (&a.part_o, &a.part_ml),
            quantized: fused_quant.then_some((&a.attn_q, &a.attn_s)),
        };
        let mut out = ops::attention::attention(
            self.ctx,
            "attention",
            &io,
            c.n_head,
            c.n_kv_head,
            hd,
            self.plan,
        )?;
        if !fused_quant {
            out.push(self.int8(ops::quantize_act::quantize_act(
                self.ctx,
                "attn_quant",
                &a.attn,
                q_dim,
                q_dim,
                &a.attn_q,
                &a.attn_s,
            )));
        }
        Ok(out)
    }
}
