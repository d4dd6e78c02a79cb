//! Quantized matmul (`shaders/matmul_int4.wgsl`): `out[m, n] (+)= Σ_k W[n, k]·x[m, k] (+ bias[n])`
//! with W in int4 (the base format) or int8 (tensors the model file keeps at 5-8 bits).
//!
//! [`QuantMatrix`] holds W on the GPU in the kernel's word-major layout, split by rows into
//! chunks that each fit one storage binding (a 151936×896 LM head is one chunk at 4 bits on
//! lavapipe's 128 MiB, but a bigger vocabulary or a phone's smaller limit is not).

use super::{Dispatch, DispatchSpec, Dyn, Grid, KernelParams};
use crate::gpu::{ensure_launch, Binding, GpuContext, GpuError, ShaderDefines};
use crate::loader::{Q4Group, Q8Group};

crate::kernel_params!(
    /// `struct Params` of shaders/matmul_int4.wgsl.
    MatmulParams for "matmul_int4"::Params {
        /// Output features of this matrix chunk.
        n: u32,
        /// Input features (a multiple of 32).
        k: u32,
        /// Activation rows (set per step).
        m: u32,
        /// Bit 0: add bias; bit 1: accumulate into out (residual); bit 2: folded RMSNorm.
        flags: u32,
        /// Floats between output rows.
        out_stride: u32,
        /// First output column of this chunk.
        out_offset: u32,
        /// K splits (set per step); > 1 writes partials for `reduce`.
        splits: u32,
        /// Eps of the RMSNorm folded into the input blocks.
        rms_eps: f32,
        /// Fused LoRA: output columns [0, seg1) take segment 0, [seg1, seg2) segment 1.
        seg1: u32,
        seg2: u32,
        /// Floats per row of the low-rank activations.
        u_stride: u32,
        _pad2: u32,
    }
);

crate::kernel_params!(
    /// `struct Rope` of shaders/matmul_int4.wgsl: the RoPE epilogue's uniform.
    RopeEpilogue for "matmul_int4"::Rope {
        n_head: u32,
        n_kv_head: u32,
        theta: f32,
        _pad: u32,
    }
);

/// How a matrix's weights are stored on the GPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightFormat {
    /// `w = scale · q + min`, q in 0..15, group 32.
    Int4,
    /// `w = scale · q`, q in -127..127, group 32.
    Int8,
}

impl WeightFormat {
    /// Shader entry point for this format (matmul and embedding kernels).
    pub fn entry(self) -> &'static str {
        match self {
            Self::Int4 => "int4",
            Self::Int8 => "int8",
        }
    }
    fn bits(self) -> usize {
        match self {
            Self::Int4 => 4,
            Self::Int8 => 8,
        }
    }
}

/// Host weights of one matrix in either format (row-major groups of 32).
pub enum QuantGroups<'a> {
    Int4(&'a [Q4Group]),
    Int8(&'a [Q8Group]),
}

/// Flags word of the kernel's params.
pub const ADD_BIAS: u32 = 1;
pub const ACCUMULATE: u32 = 2;
/// The input blocks carry a folded RMSNorm (see [`NormOut`]): scale by each row's 1/rms.
pub const FOLDED_NORM: u32 = 4;

/// Rows `n0..n0+n` of a matrix, packed for the kernel.
pub struct QuantChunk {
    pub n0: usize,
    pub n: usize,
    /// int4: `[k/8][n]` u32; int8: `[k/4][n]` u32
    pub qweight: wgpu::Buffer,
    /// `[k/32][n]` u32 = pack2x16float(scale, min) (min 0 for int8)
    pub scales: wgpu::Buffer,
}

/// A quantized weight matrix W [n, k] on the GPU.
pub struct QuantMatrix {
    pub n: usize,
    pub k: usize,
    pub format: WeightFormat,
    pub chunks: Vec<QuantChunk>,
}

fn pack_scale(scale: f32, min: f32) -> u32 {
    half::f16::from_f32(scale).to_bits() as u32
        | ((half::f16::from_f32(min).to_bits() as u32) << 16)
}

/// Pack rows `n0..n1` of row-major int8 groups into the kernel layout.
pub fn pack_rows_int8(groups: &[Q8Group], k: usize, n0: usize, n1: usize) -> (Vec<u32>, Vec<u32>) {
    let gpr = k / 32;
    let n = n1 - n0;
    let mut qweight = vec![0u32; k / 4 * n];
    let mut scales = vec![0u32; gpr * n];
    for r in 0..n {
        for g in 0..gpr {
            let grp = &groups[(n0 + r) * gpr + g];
            scales[g * n + r] = pack_scale(grp.scale, 0.0);
            for j in 0..8 {
                let b = &grp.q[j * 4..j * 4 + 4];
                qweight[(g * 8 + j) * n + r] =
                    u32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8]);
            }
        }
    }
    (qweight, scales)
}

/// Pack rows `n0..n1` of row-major groups (`k/32` groups per row) into the kernel layout.
pub fn pack_rows(groups: &[Q4Group], k: usize, n0: usize, n1: usize) -> (Vec<u32>, Vec<u32>) {
    let gpr = k / 32;
    let n = n1 - n0;
    let mut qweight = vec![0u32; k / 8 * n];
    let mut scales = vec![0u32; gpr * n];
    for r in 0..n {
        for g in 0..gpr {
            let grp = &groups[(n0 + r) * gpr + g];
            scales[g * n + r] = pack_scale(grp.scale, grp.min);
            for j in 0..4 {
                let q = &grp.q[j * 8..j * 8 + 8];
                let mut w = 0u32;
                for b in 0..4 {
                    w |= ((q[b] as u32) & 0xF) << (8 * b);
                    w |= ((q[b + 4] as u32) & 0xF) << (8 * b + 4);
                }
                qweight[(g * 4 + j) * n + r] = w;
            }
        }
    }
    (qweight, scales)
}

impl QuantMatrix {
    /// Upload W [n, k] given as row-major groups, chunked to fit `ctx.max_binding()`; a
    /// group count other than n·k/32 is an error.
    pub fn upload(
        ctx: &GpuContext,
        label: &str,
        n: usize,
        k: usize,
        groups: QuantGroups,
    ) -> Result<Self, GpuError> {
        Self::upload_with_limit(ctx, label, n, k, groups, ctx.max_binding())
    }

    /// As [`upload`](Self::upload) with an explicit per-binding byte limit (tests force
    /// several chunks with a small one).
    pub fn upload_with_limit(
        ctx: &GpuContext,
        label: &str,
        n: usize,
        k: usize,
        groups: QuantGroups,
        max_binding: u64,
    ) -> Result<Self, GpuError> {
        let (format, len) = match groups {
            QuantGroups::Int4(g) => (WeightFormat::Int4, g.len()),
            QuantGroups::Int8(g) => (WeightFormat::Int8, g.len()),
        };
        ensure_launch(k.is_multiple_of(32) && len * 32 == n * k, label, || {
            format!("{len} groups of 32 for a [{n}, {k}] matrix (k must be a multiple of 32)")
        })?;
        // qweight is the larger buffer. Chunks are whole column quads where a binding holds
        // four rows (the prefill GEMM reads four columns at a time).
        let bytes_per_row = (k * format.bits() / 8) as u64;
        let fit = (max_binding / bytes_per_row.max(1)) as usize;
        let rows_per_chunk = if fit >= 4 { fit / 4 * 4 } else { fit }.clamp(1, n.max(1));
        let mut chunks = Vec::new();
        let mut n0 = 0;
        while n0 < n {
            let n1 = (n0 + rows_per_chunk).min(n);
            let (q, s) = match groups {
                QuantGroups::Int4(g) => pack_rows(g, k, n0, n1),
                QuantGroups::Int8(g) => pack_rows_int8(g, k, n0, n1),
            };
            chunks.push(QuantChunk {
                n0,
                n: n1 - n0,
                qweight: ctx.storage_from(&format!("{label}.q[{n0}..]"), &q),
                scales: ctx.storage_from(&format!("{label}.s[{n0}..]"), &s),
            });
            n0 = n1;
        }
        Ok(QuantMatrix {
            n,
            k,
            format,
            chunks,
        })
    }

    /// GPU bytes of the weights (for bandwidth figures).
    pub fn bytes(&self) -> u64 {
        (self.n * self.k * self.format.bits() / 8 + self.n * self.k / 32 * 4) as u64
    }
}

const KINDS: &[Binding] = &[
    Binding::Uniform,
    Binding::Read,
    Binding::Read,
    Binding::Read,
    Binding::Read,
    Binding::Read,
    Binding::ReadWrite,
    Binding::ReadWrite,
];

/// The LoRA variant adds the rows' adapters, the low-rank activations and B.
const KINDS_LORA: &[Binding] = &[
    Binding::Uniform,
    Binding::Read,
    Binding::Read,
    Binding::Read,
    Binding::Read,
    Binding::Read,
    Binding::ReadWrite,
    Binding::ReadWrite,
    Binding::Read,
    Binding::Read,
    Binding::Read,
];

/// Fused LoRA for one matmul: y += s·B·u with u = A·x from [`super::lora::shrink`].
#[derive(Clone, Copy)]
pub struct MatmulLora<'a> {
    pub rows: super::lora::LoraRows<'a>,
    /// `[total rank / 2][n]` u32, f16 pairs along the rank, pre-scaled.
    pub b: &'a wgpu::Buffer,
    /// Output columns where the stacked projections' segments 1 and 2 begin.
    pub segments: (usize, usize),
}

/// Whether a [gate; up] matrix can take SwiGLU in its epilogue: one chunk, and each
/// half a whole number of 32-column blocks (a workgroup takes 32 gate and 32 up columns).
pub fn swiglu_fusable(w: &QuantMatrix) -> bool {
    w.chunks.len() == 1 && w.n.is_multiple_of(64)
}

/// The SwiGLU epilogue's bindings: LoRA's three (bound or not) and the int8 output blocks.
const KINDS_SWIGLU: &[Binding] = &[
    Binding::Uniform,
    Binding::Read,
    Binding::Read,
    Binding::Read,
    Binding::Read,
    Binding::Read,
    Binding::ReadWrite,
    Binding::ReadWrite,
    Binding::Read,
    Binding::Read,
    Binding::Read,
    Binding::ReadWrite,
    Binding::ReadWrite,
];

/// Workgroups a decode matmul should launch to keep a GPU busy, and the fewest 32-k groups
/// each split keeps: (1024, 4). H200 through Vulkan, Qwen2.5-0.5B decode after 512 tokens
/// (`tools/gpu_check.sh`, 2026-12-04): 1024:4 257-272 tok/s, 512:4 278, 4096:4 256,
/// 2048:2 235, 4096:1 219, no splits 186. EDGEREASON_SPLIT_TARGET and
/// EDGEREASON_SPLIT_MIN_GROUPS override (`bench` A/B runs).
fn split_policy() -> (usize, usize) {
    static POLICY: std::sync::OnceLock<(usize, usize)> = std::sync::OnceLock::new();
    *POLICY.get_or_init(|| {
        let env = |name: &str, default: usize| {
            crate::gpu::tuning::knob(name)
                .and_then(|v| v.parse().ok())
                .filter(|&v: &usize| v > 0)
                .unwrap_or(default)
        };
        (
            env("EDGEREASON_SPLIT_TARGET", 1024),
            env("EDGEREASON_SPLIT_MIN_GROUPS", 4),
        )
    })
}

/// k splits for decode-sized steps of an `n`×`k` chunk on this device: enough for about
/// the target count of workgroups on GPUs (`split_policy`), each split keeping its
/// minimum of groups of 32; CPU adapters (lavapipe) already have more workgroups than
/// cores and never split. EDGEREASON_K_SPLITS=0 turns splitting off (one pass, no reduce
/// launch: for measuring one against the other on a GPU).
pub fn k_splits(ctx: &GpuContext, n: usize, k: usize) -> u32 {
    static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let off = *OFF
        .get_or_init(|| crate::gpu::tuning::knob("EDGEREASON_K_SPLITS").is_some_and(|v| v == "0"));
    if off || ctx.is_cpu() {
        return 1;
    }
    let (target, min_groups) = split_policy();
    let wgs = n.div_ceil(64);
    (target.div_ceil(wgs)).clamp(1, (k / 32 / min_groups).max(1)) as u32
}

/// Slices of k inside one workgroup of a `k`-deep matmul on this device (the kernel's
/// SLICES: 64 columns × SLICES invocations, summed in workgroup memory before the
/// epilogue). A slice does the work of a k split without the reduce launch, so a decode
/// step that splits k in slices alone has one launch per matmul instead of two. Default
/// 1 everywhere until a GPU measures it (tools/gpu_check.sh runs the A/B);
/// EDGEREASON_K_SLICES=S asks for S, capped by the device's workgroup size and by one
/// 32-k group per slice.
pub fn k_slices(ctx: &GpuContext, k: usize) -> u32 {
    static ASKED: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let asked = *ASKED.get_or_init(|| {
        crate::gpu::tuning::knob("EDGEREASON_K_SLICES")
            .and_then(|v| v.parse().ok())
            .unwrap_or(1)
    });
    let limits = ctx.device.limits();
    let fit = limits
        .max_compute_invocations_per_workgroup
        .min(limits.max_compute_workgroup_size_x)
        / 64;
    asked.clamp(1, fit.max(1)).min((k / 32).max(1) as u32)
}

/// k splits across workgroups (each summed by a reduce launch) for decode-sized steps of
/// an `n`×`k` chunk: what [`k_splits`] asks for, less what `slices` inside each workgroup
/// already give.
pub fn workgroup_splits(ctx: &GpuContext, n: usize, k: usize, slices: u32) -> u32 {
    k_splits(ctx, n, k).div_ceil(slices)
}

/// Bytes of split-K partials `w` needs for decode steps (≤ 16 rows) on this device.
pub fn partial_bytes(ctx: &GpuContext, w: &QuantMatrix) -> u64 {
    let slices = k_slices(ctx, w.k);
    w.chunks
        .iter()
        .map(|c| workgroup_splits(ctx, c.n, w.k, slices) as u64 * 16 * c.n as u64 * 4)
        .max()
        .unwrap_or(0)
}

/// Buffers one matmul reads and writes.
#[derive(Clone, Copy)]
pub struct MatmulIo<'a> {
    /// Activations as int8 blocks (`quantize_act` or a fused norm): `[m][k/4]`, `[m][k/32]`.
    pub xq: &'a wgpu::Buffer,
    pub xs: &'a wgpu::Buffer,
    /// Output `[m][out_stride]`; this matrix fills columns `out_offset..out_offset + n`.
    pub out: &'a wgpu::Buffer,
    pub out_stride: usize,
    pub out_offset: usize,
    pub bias: Option<&'a wgpu::Buffer>,
    /// Add into `out` (the residual stream) instead of overwriting it.
    pub accumulate: bool,
    /// Split-K scratch, at least [`partial_bytes`] (any buffer when the device never splits).
    pub partials: &'a wgpu::Buffer,
    /// Fused LoRA, if any adapter applies to this matrix.
    pub lora: Option<MatmulLora<'a>>,
    /// For a [gate; up] matrix: write h = silu(gate)·up as the down projection's int8
    /// blocks (`hq` `[m][n/8]` u32, `hs` `[m][n/64]` stats) instead of `out` (see
    /// [`swiglu_fusable`]).
    pub swiglu: Option<(&'a wgpu::Buffer, &'a wgpu::Buffer)>,
    /// For a [Q | K | V] matrix: rotate Q in place and store rotated K and V in the cache
    /// (see [`rope_fusable`]).
    pub rope: Option<MatmulRope<'a>>,
    /// For a matmul accumulating into the residual stream: also write the next RMSNorm's
    /// input blocks (see [`NormOut`] and [`norm_foldable`]).
    pub norm_out: Option<NormOut<'a>>,
    /// The input blocks are a [`NormOut`]'s (x ⊙ g with Σx² per block): the RMSNorm of
    /// this eps is applied here, by scaling each row's product by its 1/rms.
    pub folded_norm: Option<f32>,
}

/// The next RMSNorm folded into a residual matmul's epilogue: it writes x ⊙ `weight` as
/// int8 blocks (`xq` `[m][n/4]`, `xs` `[m][n/32]`, Σx² of each block in the stats' fourth
/// lane) for a consumer with [`MatmulIo::folded_norm`], which applies 1/rms (a per-row
/// scalar, so it commutes with the matmul). Saves the norm's launch.
#[derive(Clone, Copy)]
pub struct NormOut<'a> {
    pub weight: &'a wgpu::Buffer,
    pub xq: &'a wgpu::Buffer,
    pub xs: &'a wgpu::Buffer,
}

/// Whether a residual matmul can write the next norm's blocks: one chunk, and n a
/// multiple of 64 (a workgroup's 64 columns are two whole blocks).
pub fn norm_foldable(w: &QuantMatrix) -> bool {
    w.chunks.len() == 1 && w.n.is_multiple_of(64)
}

/// The norm epilogue's bindings: LoRA's three (bound or not), the norm weight and the
/// int8 blocks it writes.
const KINDS_NORM: &[Binding] = &[
    Binding::Uniform,
    Binding::Read,
    Binding::Read,
    Binding::Read,
    Binding::Read,
    Binding::Read,
    Binding::ReadWrite,
    Binding::ReadWrite,
    Binding::Read,
    Binding::Read,
    Binding::Read,
    Binding::Read,
    Binding::ReadWrite,
    Binding::ReadWrite,
];

impl<'a> MatmulIo<'a> {
    /// `out[m, 0..n] = W·x` from the int8 blocks `xq`/`xs`: no bias, no residual, no LoRA
    /// and no epilogue variant (set those fields with struct update syntax).
    pub fn new(
        xq: &'a wgpu::Buffer,
        xs: &'a wgpu::Buffer,
        out: &'a wgpu::Buffer,
        out_stride: usize,
        partials: &'a wgpu::Buffer,
    ) -> Self {
        MatmulIo {
            xq,
            xs,
            out,
            out_stride,
            out_offset: 0,
            bias: None,
            accumulate: false,
            partials,
            lora: None,
            swiglu: None,
            rope: None,
            norm_out: None,
            folded_norm: None,
        }
    }

    /// The flags word of the kernel's params (bias, residual, folded norm).
    pub(crate) fn flags(&self) -> u32 {
        let bit = |on: bool, flag: u32| if on { flag } else { 0 };
        bit(self.bias.is_some(), ADD_BIAS)
            | bit(self.accumulate, ACCUMULATE)
            | bit(self.folded_norm.is_some(), FOLDED_NORM)
    }
}

/// RoPE and the KV-cache store in the QKV epilogue: what `rope::rope_store_kv` takes.
#[derive(Clone, Copy)]
pub struct MatmulRope<'a> {
    /// Uniform (n_head, n_kv_head, theta, 0), see [`rope_params`].
    pub params: &'a wgpu::Buffer,
    pub head_dim: usize,
    pub positions: &'a wgpu::Buffer,
    pub slots: &'a wgpu::Buffer,
    pub k_cache: &'a wgpu::Buffer,
    pub v_cache: &'a wgpu::Buffer,
}

/// The RoPE epilogue's uniform: (n_head, n_kv_head, theta, 0) as the shader's `Rope`.
pub fn rope_params(ctx: &GpuContext, n_head: usize, n_kv_head: usize, theta: f32) -> wgpu::Buffer {
    let rope = RopeEpilogue {
        n_head: n_head as u32,
        n_kv_head: n_kv_head as u32,
        theta,
        _pad: 0,
    };
    ctx.uniform_words("rope.params", &rope.words())
}

/// Whether a [Q | K | V] matrix can take RoPE in its epilogue: one chunk, and head_dim a
/// multiple of 64 (a workgroup takes 32 dims of a head and their 32 rotation partners).
pub fn rope_fusable(w: &QuantMatrix, head_dim: usize) -> bool {
    w.chunks.len() == 1 && head_dim.is_multiple_of(64) && w.n.is_multiple_of(head_dim)
}

/// The RoPE epilogue's bindings: LoRA's three (bound or not), its uniform, positions,
/// slots and the layer's K and V cache.
const KINDS_ROPE: &[Binding] = &[
    Binding::Uniform,
    Binding::Read,
    Binding::Read,
    Binding::Read,
    Binding::Read,
    Binding::Read,
    Binding::ReadWrite,
    Binding::ReadWrite,
    Binding::Read,
    Binding::Read,
    Binding::Read,
    Binding::Uniform,
    Binding::Read,
    Binding::Read,
    Binding::ReadWrite,
    Binding::ReadWrite,
];

/// Dispatches (one per chunk, plus a reduce pass where decode steps split k) computing
/// `out[m, out_offset + n] (+)= W·x + bias`.
pub fn matmul_int4(
    ctx: &GpuContext,
    label: &str,
    w: &QuantMatrix,
    io: &MatmulIo,
) -> Result<Vec<Dispatch>, GpuError> {
    let slices = k_slices(ctx, w.k);
    let splits = w
        .chunks
        .iter()
        .map(|c| workgroup_splits(ctx, c.n, w.k, slices))
        .collect::<Vec<_>>();
    matmul_dispatches(ctx, label, w, io, &splits, slices)
}

/// As [`matmul_int4`] with fixed k splits for decode steps: `splits` across workgroups
/// (reduce launch) and `slices` inside each (tests force both paths on devices that would
/// not take them).
pub fn matmul_int4_with_splits(
    ctx: &GpuContext,
    label: &str,
    w: &QuantMatrix,
    io: &MatmulIo,
    splits: u32,
    slices: u32,
) -> Result<Vec<Dispatch>, GpuError> {
    matmul_dispatches(ctx, label, w, io, &vec![splits; w.chunks.len()], slices)
}

/// The kernel variant `io` asks for — fused LoRA and at most one epilogue (SwiGLU,
/// RoPE + KV store, the next norm's blocks) — as its binding kinds, defines and the
/// buffers bound after the seven every variant has. Unused LoRA slots take a read-only
/// buffer (the activations' scales).
fn variant<'a>(
    ctx: &GpuContext,
    label: &str,
    w: &QuantMatrix,
    io: &MatmulIo<'a>,
) -> Result<(&'static [Binding], ShaderDefines, Vec<&'a wgpu::Buffer>), GpuError> {
    let out_offset = io.out_offset;
    let mut defines = ShaderDefines::new().with("SUBGROUPS", shares_blocks(ctx) as u32);
    let mut kinds = KINDS;
    let mut extra = Vec::new();
    if let Some(l) = &io.lora {
        // B is laid out over the whole output: LoRA matrices are one chunk, written from column 0.
        ensure_launch(w.chunks.len() == 1 && out_offset == 0, label, || {
            "fused LoRA needs a one-chunk matrix at output column 0".into()
        })?;
        extra.extend([l.rows.rows, l.rows.u, l.b]);
        (kinds, defines) = (KINDS_LORA, defines.with("LORA", 1));
    }
    let lora_slots = |extra: &mut Vec<&'a wgpu::Buffer>| {
        if io.lora.is_none() {
            extra.extend([io.xs, io.xs, io.xs]);
        }
    };
    if let Some((hq, hs)) = io.swiglu {
        ensure_launch(swiglu_fusable(w) && out_offset == 0, label, || {
            "the SwiGLU epilogue needs a one-chunk [gate; up] matrix of 64-column halves".into()
        })?;
        lora_slots(&mut extra);
        extra.extend([hq, hs]);
        (kinds, defines) = (KINDS_SWIGLU, defines.with("SWIGLU", 1));
    }
    if let Some(r) = io.rope {
        ensure_launch(
            rope_fusable(w, r.head_dim) && out_offset == 0,
            label,
            || {
                "the RoPE epilogue needs a one-chunk [Q | K | V] matrix with head_dim a multiple of 64"
                .into()
            },
        )?;
        lora_slots(&mut extra);
        extra.extend([r.params, r.positions, r.slots, r.k_cache, r.v_cache]);
        let defines_rope = defines.with("ROPE", 1).with("HEAD_DIM", r.head_dim as u32);
        (kinds, defines) = (KINDS_ROPE, defines_rope);
    }
    if let Some(norm) = io.norm_out {
        let foldable = norm_foldable(w)
            && out_offset == 0
            && io.accumulate
            && io.swiglu.is_none()
            && io.rope.is_none();
        ensure_launch(foldable, label, || {
            "the norm epilogue needs a one-chunk residual matmul of 64-column blocks".into()
        })?;
        lora_slots(&mut extra);
        extra.extend([norm.weight, norm.xq, norm.xs]);
        (kinds, defines) = (KINDS_NORM, defines.with("NORM", 1));
    }
    Ok((kinds, defines, extra))
}

fn matmul_dispatches(
    ctx: &GpuContext,
    label: &str,
    w: &QuantMatrix,
    io: &MatmulIo,
    chunk_splits: &[u32],
    slices: u32,
) -> Result<Vec<Dispatch>, GpuError> {
    // Without a bias any read-only buffer fills the binding: the activations' scales.
    let bias = io.bias.unwrap_or(io.xs);
    let (kinds, defines, extra) = variant(ctx, label, w, io)?;
    let defines = defines.with("SLICES", slices.max(1));
    let mut out_list = Vec::new();
    for (c, &splits) in w.chunks.iter().zip(chunk_splits) {
        let mut params = MatmulParams {
            n: c.n as u32,
            k: w.k as u32,
            flags: io.flags(),
            out_stride: io.out_stride as u32,
            out_offset: (io.out_offset + c.n0) as u32,
            splits: 1,
            rms_eps: io.folded_norm.unwrap_or(0.0),
            ..Default::default()
        };
        if let Some(l) = &io.lora {
            params.seg1 = l.segments.0 as u32;
            params.seg2 = l.segments.1 as u32;
            params.u_stride = l.rows.u_stride as u32;
        }
        let mut buffers = vec![
            &c.qweight,
            &c.scales,
            io.xq,
            io.xs,
            bias,
            io.out,
            io.partials,
        ];
        buffers.extend(extra.iter().copied());
        let spec = |entry: &'static str, grid: Grid| DispatchSpec {
            label: format!("{label}[{}..]", c.n0),
            shader: "matmul_int4",
            entry,
            kinds,
            words: params.words(),
            dynamic: vec![
                (crate::params_word!(MatmulParams, m), Dyn::Rows),
                (crate::params_word!(MatmulParams, splits), Dyn::KSplits),
            ],
            buffers: buffers.clone(),
            grid,
            defines: defines.clone(),
        };
        let x = super::wg64(c.n);
        let tiles = Grid::RowTiles {
            x,
            k_splits: splits,
        };
        out_list.push(Dispatch::new(ctx, spec(w.format.entry(), tiles)));
        if splits > 1 {
            let reduce = Grid::IfKSplit {
                x,
                k_splits: splits,
            };
            out_list.push(Dispatch::new(ctx, spec("reduce", reduce)));
        }
    }
    Ok(out_list)
}

/// Whether the int8 path's SUBGROUPS variant runs here: each lane of a subgroup (of at
/// least 8) loads one word of a row's activation block and broadcasts it to the others.
/// CPU adapters take it, where every storage load is a loop over the lanes (see
/// shaders/prefill_gemm.wgsl); GPUs keep plain loads, which are broadcasts there, until
/// measured. EDGEREASON_SHARE_BLOCKS=0|1 overrides (for measuring).
pub fn shares_blocks(ctx: &GpuContext) -> bool {
    let forced = crate::gpu::tuning::knob("EDGEREASON_SHARE_BLOCKS").map(|v| v != "0");
    let able = ctx.subgroups && ctx.adapter.subgroup_size[0] >= 8;
    able && forced.unwrap_or(ctx.is_cpu())
}

/// Plain f32 reference: `out[m, n] = Σ_k W[n, k]·x[m, k] + bias[n]` with W dequantized.
pub fn reference(
    w: &[f32],
    n: usize,
    k: usize,
    x: &[f32],
    m: usize,
    bias: Option<&[f32]>,
) -> Vec<f32> {
    let mut out = vec![0f32; m * n];
    for r in 0..m {
        let xr = &x[r * k..(r + 1) * k];
        for c in 0..n {
            let wr = &w[c * k..(c + 1) * k];
            let mut acc = 0f32;
            for i in 0..k {
                acc += wr[i] * xr[i];
            }
            out[r * n + c] = acc + bias.map_or(0.0, |b| b[c]);
        }
    }
    out
}
