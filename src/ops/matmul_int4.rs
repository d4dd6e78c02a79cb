//! int4 matmul (`shaders/matmul_int4.wgsl`): `out[m, n] (+)= Σ_k W[n, k]·x[m, k] (+ bias[n])`.
//!
//! [`Int4Matrix`] holds W on the GPU in the kernel's word-major layout, split by rows into
//! chunks that each fit one storage binding (a 151936×896 LM head is one chunk at 4 bits on
//! lavapipe's 128 MiB, but a bigger vocabulary or a phone's smaller limit is not).

use super::{Dispatch, DispatchSpec, Dyn, Grid};
use crate::gpu::{Binding, GpuContext};
use crate::loader::Q4Group;

/// Flags word of the kernel's params.
pub const ADD_BIAS: u32 = 1;
pub const ACCUMULATE: u32 = 2;

/// Rows `n0..n0+n` of a matrix, packed for the kernel.
pub struct Int4Chunk {
    pub n0: usize,
    pub n: usize,
    /// [k/8][n] u32
    pub qweight: wgpu::Buffer,
    /// [k/32][n] u32 = pack2x16float(scale, min)
    pub scales: wgpu::Buffer,
}

/// An int4 weight matrix W [n, k] on the GPU.
pub struct Int4Matrix {
    pub n: usize,
    pub k: usize,
    pub chunks: Vec<Int4Chunk>,
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
            let sm = [half::f16::from_f32(grp.scale), half::f16::from_f32(grp.min)];
            scales[g * n + r] = sm[0].to_bits() as u32 | ((sm[1].to_bits() as u32) << 16);
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

impl Int4Matrix {
    /// Upload W [n, k] given as row-major int4 groups, chunked to fit `ctx.max_binding()`.
    pub fn upload(ctx: &GpuContext, label: &str, n: usize, k: usize, groups: &[Q4Group]) -> Self {
        assert_eq!(groups.len(), n * k / 32, "{label}: group count does not match [{n}, {k}]");
        Self::upload_with_limit(ctx, label, n, k, groups, ctx.max_binding())
    }

    /// As [`upload`](Self::upload) with an explicit per-binding byte limit (tests force
    /// several chunks with a small one).
    pub fn upload_with_limit(ctx: &GpuContext, label: &str, n: usize, k: usize, groups: &[Q4Group], max_binding: u64) -> Self {
        let bytes_per_row = (k / 2) as u64; // qweight is the larger of the two buffers
        let rows_per_chunk = ((max_binding / bytes_per_row.max(1)) as usize).clamp(1, n.max(1));
        let mut chunks = Vec::new();
        let mut n0 = 0;
        while n0 < n {
            let n1 = (n0 + rows_per_chunk).min(n);
            let (q, s) = pack_rows(groups, k, n0, n1);
            chunks.push(Int4Chunk {
                n0,
                n: n1 - n0,
                qweight: ctx.storage_from(&format!("{label}.q[{n0}..]"), &q),
                scales: ctx.storage_from(&format!("{label}.s[{n0}..]"), &s),
            });
            n0 = n1;
        }
        Int4Matrix { n, k, chunks }
    }

    /// GPU bytes of the weights (for bandwidth figures).
    pub fn bytes(&self) -> u64 {
        (self.n * self.k / 2 + self.n * self.k / 32 * 4) as u64
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
];

/// Dispatches (one per chunk) computing `out[m, out_offset + n] (+)= W·x + bias`.
/// `xq`/`xs` come from `quantize_act` (or a fused norm); `bias` may be any buffer when
/// `flags` lacks [`ADD_BIAS`].
#[allow(clippy::too_many_arguments)]
pub fn matmul_int4(
    ctx: &GpuContext,
    label: &str,
    w: &Int4Matrix,
    xq: &wgpu::Buffer,
    xs: &wgpu::Buffer,
    bias: &wgpu::Buffer,
    out: &wgpu::Buffer,
    out_stride: usize,
    out_offset: usize,
    flags: u32,
) -> Vec<Dispatch> {
    w.chunks
        .iter()
        .map(|c| {
            Dispatch::new(
                ctx,
                DispatchSpec {
                    label: format!("{label}[{}..]", c.n0),
                    shader: "matmul_int4",
                    entry: "main",
                    kinds: KINDS,
                    words: vec![c.n as u32, w.k as u32, 0, flags, out_stride as u32, (out_offset + c.n0) as u32, 0, 0],
                    dynamic: vec![(2, Dyn::Rows)],
                    buffers: vec![&c.qweight, &c.scales, xq, xs, bias, out],
                    grid: Grid::RowTiles { x: super::wg64(c.n) },
                },
            )
        })
        .collect()
}

/// Plain f32 reference: `out[m, n] = Σ_k W[n, k]·x[m, k] + bias[n]` with W dequantized.
pub fn reference(w: &[f32], n: usize, k: usize, x: &[f32], m: usize, bias: Option<&[f32]>) -> Vec<f32> {
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
