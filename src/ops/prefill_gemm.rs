//! Prefill GEMM (`shaders/prefill_gemm.wgsl`): `out[m, n] (+)= Σ_k W[n, k]·x[m, k] (+ bias[n])`
//! with f32 activation rows, for steps of many rows, over a [`QuantMatrix`] in the same
//! layout the int8-activation path reads. Register-tiled: each lane owns four adjacent
//! columns (one vec4 weight load for all four) × `COLS` such quads × `ROWS` rows.

use super::matmul_int4::{MatmulIo, QuantMatrix, WeightFormat, FOLDED_NORM};
use super::{Dispatch, DispatchSpec, Dyn, Grid, KernelParams, When};
use crate::gpu::{ensure_launch, Binding, GpuContext, GpuError, ShaderDefines};

crate::kernel_params!(
    /// `struct Params` of shaders/prefill_gemm.wgsl.
    GemmParams for "prefill_gemm"::Params {
        /// Output features of this matrix chunk (a multiple of 4).
        n: u32,
        /// Input features (a multiple of 32).
        k: u32,
        /// Activation rows (set per step).
        m: u32,
        /// Bit 0: add bias; bit 1: accumulate into out (residual).
        flags: u32,
        /// Floats between output rows.
        out_stride: u32,
        /// First output column of this chunk.
        out_offset: u32,
        _pad0: u32,
        _pad1: u32,
    }
);

/// params, qweight, scales, x, bias, out (also prefill_coop.wgsl's bindings).
const KINDS: &[Binding] = &[
    Binding::Uniform,
    Binding::Read,
    Binding::Read,
    Binding::Read,
    Binding::Read,
    Binding::ReadWrite,
];

/// The prefill GEMM's register tile (ROWS, COLS quads) on this device, or `None` where
/// prefill keeps the int8 path. Rows share each dequantized weight, quads each activation.
/// CPU adapters take the GEMM. lavapipe, Qwen2.5's gate|up and down at 128 rows (`bench
/// --prefill-matmul 128`, median of 5): with subgroups 8x2 won (42 / 22 ms; 4x2 48 / 26,
/// 16x2 52 / 27, 16x4 51 / 24, 8x3 58 / 42); without subgroups (the GL backend's case,
/// measured on Vulkan with the variant off) 16x4 (74-81 / 38-40 ms; 8x2 107-124 / 57-62). GPUs keep the int8 path, whose dot4I8Packed is native there, until the
/// GEMM is measured on one. EDGEREASON_PREFILL_GEMM=0|1 and EDGEREASON_GEMM_TILE=RxC
/// override (for measuring).
pub fn tile_for_device(ctx: &GpuContext) -> Option<(u32, u32)> {
    let forced = crate::gpu::tuning::knob("EDGEREASON_PREFILL_GEMM").map(|v| v != "0");
    if !forced.unwrap_or(ctx.is_cpu()) {
        return None;
    }
    let env = crate::gpu::tuning::knob("EDGEREASON_GEMM_TILE").and_then(|v| {
        let (r, c) = v.split_once('x')?;
        Some((r.parse().ok()?, c.parse().ok()?))
    });
    let default = if shares_activations(ctx) {
        (8, 2)
    } else {
        (16, 4)
    };
    Some(env.unwrap_or(default)).filter(|&(r, c)| r * c <= max_tile_area(ctx))
}

/// Whether the GEMM can take `w`: the vec4 views need every chunk's column count to be a
/// multiple of 4 (true of every chunk of the models this engine loads).
pub fn fits(w: &QuantMatrix) -> bool {
    w.chunks.iter().all(|c| c.n % 4 == 0)
}

/// Whether the kernel's subgroup variant runs here: subgroups of at least 8 lanes, so the
/// eight vec4 of a row's 32-k group are loaded by eight lanes, one each, and broadcast.
pub fn shares_activations(ctx: &GpuContext) -> bool {
    ctx.subgroups && ctx.adapter.subgroup_size[0] >= 8
}

/// The largest register tile (ROWS × COLS quads) the GEMM takes on this device. GPUs hold
/// the tile's accumulators in registers: on an NVIDIA H200 through Vulkan (512 rows of
/// Qwen2.5's gate|up) 4x4 ran 0.60 ms, 8x4 43.6 ms (spilled), and 8x8 and 16x4 lost the
/// device. CPU drivers (lavapipe: 8x2 and 16x4 fastest) take any.
pub fn max_tile_area(ctx: &GpuContext) -> u32 {
    if ctx.is_cpu() {
        u32::MAX
    } else {
        16
    }
}

/// Prefill launches of `W·x` with f32 activations `x` `[m][k]`, one per chunk, recorded only
/// in steps on the GEMM path ([`Step::gemm`]); output, bias and residual as `io` says (its
/// int8 blocks and LoRA are not used); `(rows, cols)` is the register tile
/// ([`tile_for_device`]). A matrix that does not [`fits`] is an error (the forward pass
/// takes this path only for matrices that do), and so is a tile over [`max_tile_area`].
///
/// [`Step::gemm`]: super::Step::gemm
pub fn gemm(
    ctx: &GpuContext,
    label: &str,
    w: &QuantMatrix,
    x: &wgpu::Buffer,
    io: &MatmulIo,
    (rows, cols): (u32, u32),
) -> Result<Vec<Dispatch>, GpuError> {
    ensure_launch(fits(w), label, || {
        "the prefill GEMM needs chunks of 4k columns".into()
    })?;
    let max = max_tile_area(ctx);
    ensure_launch(rows * cols <= max, label, || {
        format!("GEMM tile {rows}x{cols} is over this device's {max} accumulators")
    })?;
    let defines = ShaderDefines::new()
        .with("ROWS", rows)
        .with("COLS", cols)
        .with("SUBGROUPS", shares_activations(ctx) as u32);
    let entry = match w.format {
        WeightFormat::Int4 => "gemm_int4",
        WeightFormat::Int8 => "gemm_int8",
    };
    Ok(chunk_launches(
        ctx,
        label,
        w,
        x,
        io,
        ("prefill_gemm", entry, defines),
        |n| Grid::Gemm { n: n / 4 },
    ))
}

/// One launch per chunk of `w` of a prefill GEMM kernel (`shader`, `entry`, `defines`:
/// prefill_gemm.wgsl's or prefill_coop.wgsl's, which share their uniform and bindings),
/// recorded only in GEMM steps; `grid` maps a chunk's column count to its launch grid.
pub(super) fn chunk_launches(
    ctx: &GpuContext,
    label: &str,
    w: &QuantMatrix,
    x: &wgpu::Buffer,
    io: &MatmulIo,
    (shader, entry, defines): (&'static str, &'static str, ShaderDefines),
    grid: impl Fn(u32) -> Grid,
) -> Vec<Dispatch> {
    // The GEMM's f32 rows come from its own norm launch: no folded norm.
    let flags = io.flags() & !FOLDED_NORM;
    w.chunks
        .iter()
        .map(|c| {
            let spec = DispatchSpec {
                label: format!("{label}[{}..]", c.n0),
                shader,
                entry,
                kinds: KINDS,
                words: GemmParams {
                    n: c.n as u32,
                    k: w.k as u32,
                    flags,
                    out_stride: io.out_stride as u32,
                    out_offset: (io.out_offset + c.n0) as u32,
                    ..Default::default()
                }
                .words(),
                dynamic: vec![(crate::params_word!(GemmParams, m), Dyn::Rows)],
                // `bias` is bound whether or not it is read.
                buffers: vec![&c.qweight, &c.scales, x, io.bias.unwrap_or(x), io.out],
                grid: grid(c.n as u32),
                defines: defines.clone(),
            };
            Dispatch::new(ctx, spec).only(When::Gemm(true))
        })
        .collect()
}
