//! Quantized matmul (`shaders/matmul_int4.wgsl`): `out[m, n] (+)= Σ_k W[n, k]·x[m, k] (+ bias[n])`
//! with W in int4 (the base format) or int8 (tensors the model file keeps at 5-8 bits).
//!
//! [`QuantMatrix`] holds W on the GPU in the kernel's word-major layout, split by rows into
//! chunks that each fit one storage binding (a 151936×896 LM head is one chunk at 4 bits on
//! lavapipe's 128 MiB, but a bigger vocabulary or a phone's smaller limit is not).

use super::{Dispatch, DispatchSpec, Dyn, Grid};
use crate::gpu::{Binding, GpuContext};
use crate::loader::{Q4Group, Q8Group};

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

/// Rows `n0..n0+n` of a matrix, packed for the kernel.
pub struct QuantChunk {
    pub n0: usize,
    pub n: usize,
    /// int4: [k/8][n] u32; int8: [k/4][n] u32
    pub qweight: wgpu::Buffer,
    /// [k/32][n] u32 = pack2x16float(scale, min) (min 0 for int8)
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
    half::f16::from_f32(scale).to_bits() as u32 | ((half::f16::from_f32(min).to_bits() as u32) << 16)
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
                qweight[(g * 8 + j) * n + r] = u32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8]);
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
    /// Upload W [n, k] given as row-major groups, chunked to fit `ctx.max_binding()`.
    pub fn upload(ctx: &GpuContext, label: &str, n: usize, k: usize, groups: QuantGroups) -> Self {
        Self::upload_with_limit(ctx, label, n, k, groups, ctx.max_binding())
    }

    /// As [`upload`](Self::upload) with an explicit per-binding byte limit (tests force
    /// several chunks with a small one).
    pub fn upload_with_limit(ctx: &GpuContext, label: &str, n: usize, k: usize, groups: QuantGroups, max_binding: u64) -> Self {
        let (format, len) = match groups {
            QuantGroups::Int4(g) => (WeightFormat::Int4, g.len()),
            QuantGroups::Int8(g) => (WeightFormat::Int8, g.len()),
        };
        assert_eq!(len, n * k / 32, "{label}: group count does not match [{n}, {k}]");
        let bytes_per_row = (k * format.bits() / 8) as u64; // qweight is the larger buffer
        let rows_per_chunk = ((max_binding / bytes_per_row.max(1)) as usize).clamp(1, n.max(1));
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
        QuantMatrix { n, k, format, chunks }
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
];

/// Dispatches (one per chunk) computing `out[m, out_offset + n] (+)= W·x + bias`.
/// `xq`/`xs` come from `quantize_act` (or a fused norm); `bias` may be any buffer when
/// `flags` lacks [`ADD_BIAS`].
#[allow(clippy::too_many_arguments)]
pub fn matmul_int4(
    ctx: &GpuContext,
    label: &str,
    w: &QuantMatrix,
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
                    entry: w.format.entry(),
                    kinds: KINDS,
                    words: vec![c.n as u32, w.k as u32, 0, flags, out_stride as u32, (out_offset + c.n0) as u32, 0, 0],
                    dynamic: vec![(2, Dyn::Rows)],
                    buffers: vec![&c.qweight, &c.scales, xq, xs, bias, out],
                    grid: Grid::RowTiles { x: super::wg64(c.n) },
                    defines: Default::default(),
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
