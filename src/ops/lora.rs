//! LoRA's low-rank half (`shaders/lora.wgsl`): `shrink` computes u = A·x per row from the
//! int8 activation blocks the matmul reads; the int4 matmul then adds s·B·u in its own
//! output pass ([`MatmulLora`](super::matmul_int4::MatmulLora)). `expand` adds s·B·u as a
//! separate pass over y — the unfused path, for comparison.

use super::{Dispatch, DispatchSpec, Dyn, Grid, KernelParams};
use crate::gpu::{Binding, GpuContext, ShaderDefines};

crate::kernel_params!(
    /// `struct Params` of shaders/lora.wgsl (both entries).
    LoraParams for "lora"::Params {
        /// Input features (a multiple of 32).
        k: u32,
        /// Rows (set per step).
        m: u32,
        /// Output features (expand); A's columns, segs × total rank (shrink).
        n: u32,
        /// Projections stacked in this matrix (1..3).
        segs: u32,
        u_stride: u32,
        /// Expand: segment boundaries over the output columns.
        seg1: u32,
        seg2: u32,
        out_stride: u32,
        /// Shrink: xs carries a folded RMSNorm's sum of squares.
        folded_norm: u32,
        rms_eps: f32,
        _pad0: u32,
        _pad1: u32,
    }
);

const KINDS: &[Binding] = &[
    Binding::Uniform,
    Binding::Read,
    Binding::Read,
    Binding::Read,
    Binding::Read,
    Binding::ReadWrite,
    Binding::ReadWrite,
];

/// Per-step LoRA state every launch shares: which adapter each row uses and the low-rank
/// activations.
#[derive(Clone, Copy)]
pub struct LoraRows<'a> {
    /// `[rows]` (rank, rank offset) u32 pairs; rank 0 = no adapter for that row.
    pub rows: &'a wgpu::Buffer,
    /// `[rows][u_stride]` f32.
    pub u: &'a wgpu::Buffer,
    pub u_stride: usize,
}

/// u`[m][j]` = A·x̂`[m]` for a matrix of `segs` stacked projections with input width `k`;
/// `a` holds `a_cols` = segs · (total rank) columns ([`pack_a_transposed`]); `max_rank`
/// (even) is the largest adapter rank in it. With `rms_eps`, the blocks hold a folded
/// RMSNorm's x ⊙ g (see [`NormOut`](super::matmul_int4::NormOut)) and u is scaled by
/// each row's 1/rms, so it is A·norm(x) as without the fold. `split` picks the kernel that
/// splits each dot product over a workgroup ([`split_for_device`]).
#[allow(clippy::too_many_arguments)]
pub fn shrink(
    ctx: &GpuContext,
    label: &str,
    a: &wgpu::Buffer,
    k: usize,
    segs: usize,
    a_cols: usize,
    max_rank: usize,
    lora: &LoraRows,
    xq: &wgpu::Buffer,
    xs: &wgpu::Buffer,
    rms_eps: Option<f32>,
    split: bool,
) -> Dispatch {
    // (the serial kernel's row tile comes with RowTiles; the split one takes one row)
    let (entry, grid, defines) = if split {
        let x = (segs * max_rank) as u32;
        let defines = ShaderDefines::new().with("ROWS", 1);
        ("shrink_split", Grid::PerRow { x }, defines)
    } else {
        let x = super::wg64(segs * max_rank);
        let grid = Grid::RowTiles { x, k_splits: 1 };
        ("shrink", grid, ShaderDefines::new())
    };
    Dispatch::new(
        ctx,
        DispatchSpec {
            label: label.into(),
            shader: "lora",
            entry,
            kinds: KINDS,
            words: LoraParams {
                k: k as u32,
                n: a_cols as u32,
                segs: segs as u32,
                u_stride: lora.u_stride as u32,
                folded_norm: rms_eps.is_some() as u32,
                rms_eps: rms_eps.unwrap_or(0.0),
                ..Default::default()
            }
            .words(),
            dynamic: vec![(crate::params_word!(LoraParams, m), Dyn::Rows)],
            buffers: vec![xq, xs, lora.rows, a, lora.u, lora.u],
            grid,
            defines,
        },
    )
    .only_with_adapters()
}

/// Whether [`shrink`] should split each dot product over a workgroup here: on GPUs (one
/// invocation per dot product is a serial chain of k/4 loads that leaves them idle: on an
/// H200 it made a rank-8 decode step 6x slower), not on CPU drivers, where the workgroup
/// reduction costs more than the arithmetic. EDGEREASON_LORA_SPLIT=0|1 overrides.
pub fn split_for_device(ctx: &GpuContext) -> bool {
    crate::gpu::tuning::knob("EDGEREASON_LORA_SPLIT")
        .map(|v| v != "0")
        .unwrap_or(!ctx.is_cpu())
}

/// out`[m][n]` += s·B·u`[m]` as its own pass (the unfused path). `seg1`/`seg2` split the
/// output columns into the stacked projections.
#[allow(clippy::too_many_arguments)]
pub fn expand(
    ctx: &GpuContext,
    label: &str,
    b: &wgpu::Buffer,
    n: usize,
    (seg1, seg2): (usize, usize),
    lora: &LoraRows,
    out: &wgpu::Buffer,
    out_stride: usize,
    xq: &wgpu::Buffer,
    xs: &wgpu::Buffer,
) -> Dispatch {
    Dispatch::new(
        ctx,
        DispatchSpec {
            label: label.into(),
            shader: "lora",
            entry: "expand",
            kinds: KINDS,
            words: LoraParams {
                n: n as u32,
                u_stride: lora.u_stride as u32,
                seg1: seg1 as u32,
                seg2: seg2 as u32,
                out_stride: out_stride as u32,
                ..Default::default()
            }
            .words(),
            dynamic: vec![(crate::params_word!(LoraParams, m), Dyn::Rows)],
            buffers: vec![xq, xs, lora.rows, b, lora.u, out],
            grid: Grid::PerRow { x: super::wg64(n) },
            defines: ShaderDefines::new().with("ROWS", 1),
        },
    )
    .only_with_adapters()
}

/// Pack A (row-major `[cols][k]` f32: one A row per column) transposed as the shrink kernel
/// reads it: word (kk, c) = f16 pair (A`[c][2kk]`, A[c][2kk + 1]), `[k/2][cols]`.
pub fn pack_a_transposed(a: &[f32], k: usize) -> Vec<u32> {
    let cols = a.len() / k;
    let mut out = vec![0u32; k / 2 * cols];
    for c in 0..cols {
        for kk in 0..k / 2 {
            out[kk * cols + c] = pack2(a[c * k + 2 * kk], a[c * k + 2 * kk + 1]);
        }
    }
    out
}

/// f16 pair as one word, first value in the low half (WGSL's `unpack2x16float`).
pub fn pack2(lo: f32, hi: f32) -> u32 {
    half::f16::from_f32(lo).to_bits() as u32 | ((half::f16::from_f32(hi).to_bits() as u32) << 16)
}
