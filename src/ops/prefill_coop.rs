//! Prefill GEMM on cooperative matrices (`shaders/prefill_coop.wgsl`): the same product and
//! epilogue as [`prefill_gemm`](super::prefill_gemm) (`out[m, n] (+)= Σ_k W[n, k]·x[m, k]
//! (+ bias[n])`, f32 activation rows, any [`QuantMatrix`]), with the multiply-adds on the
//! device's matrix units (tensor cores) in f16 with f32 sums. Used where the device offers
//! f16 → f32 cooperative matrices of 8×8 or 16×16 ([`GpuContext::cooperative_tile`]) and one
//! fixed subgroup size.
//!
//! ```no_run
//! # use edgereason::{gpu::GpuContext, ops::prefill_coop};
//! let ctx = GpuContext::new(None)?;
//! match prefill_coop::shape_for_device(&ctx) {
//!     Some(s) => println!("tensor-core prefill: {0}x{0} tiles, block {1}x{2}", s.tile, s.block_rows(), s.block_cols()),
//!     None => println!("no cooperative matrices: prefill takes the portable kernels"),
//! }
//! # Ok::<(), edgereason::gpu::GpuError>(())
//! ```

use super::matmul_int4::{MatmulIo, QuantMatrix, WeightFormat};
use super::prefill_gemm::chunk_launches;
use super::{Dispatch, Grid};
use crate::gpu::{GpuContext, ShaderDefines};

/// One variant of the kernel: a workgroup is four subgroups of `subgroup` lanes in a 2×2
/// grid, each owning `rows` × `cols` output tiles of `tile` × `tile`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CoopShape {
    pub tile: u32,
    pub subgroup: u32,
    pub rows: u32,
    pub cols: u32,
}

impl CoopShape {
    /// Output rows one workgroup computes.
    pub fn block_rows(&self) -> u32 {
        2 * self.rows * self.tile
    }
    /// Output columns one workgroup computes.
    pub fn block_cols(&self) -> u32 {
        2 * self.cols * self.tile
    }
}

/// The shader defines of a variant (`tile` 8 or 16; `sg` the subgroup size; int4 weights
/// unless `.with("INT8", 1)`).
pub fn defines(tile: u32, sg: u32, (rows, cols): (u32, u32)) -> ShaderDefines {
    ShaderDefines::new()
        .with("TILE", tile)
        .with("TILE16", (tile == 16) as u32)
        .with("SG", sg)
        .with("ROWS", rows)
        .with("COLS", cols)
}

/// The kernel's shape on this device, or `None` where it cannot run: no f16 → f32
/// cooperative matrices, subgroups off, or a subgroup size that varies (the workgroup must
/// be exactly four subgroups). Each subgroup owns 2×2 tiles (a 64×64 block with 16×16
/// tiles); EDGEREASON_COOP_TILES=RxC sets the tiles per subgroup (for measuring).
pub fn shape_for_device(ctx: &GpuContext) -> Option<CoopShape> {
    let [min, max] = ctx.adapter.subgroup_size;
    let tile = ctx
        .cooperative_tile
        .filter(|_| ctx.subgroups && min == max)?;
    let (rows, cols) = crate::gpu::tuning::knob("EDGEREASON_COOP_TILES")
        .and_then(|v| {
            let (r, c) = v.split_once('x')?;
            Some((r.parse().ok()?, c.parse().ok()?))
        })
        .unwrap_or((2, 2));
    Some(CoopShape {
        tile,
        subgroup: max,
        rows,
        cols,
    })
}

/// The shape prefill steps use, where the device can run the kernel and it is asked for
/// with EDGEREASON_PREFILL_COOP=1: off by default until measured on a GPU against the
/// int8 path (tools/gpu_check.sh runs both), as the f32 GEMM was.
pub fn shape_for_prefill(ctx: &GpuContext) -> Option<CoopShape> {
    let asked = crate::gpu::tuning::knob("EDGEREASON_PREFILL_COOP").is_some_and(|v| v == "1");
    shape_for_device(ctx).filter(|_| asked)
}

/// Prefill launches of `W·x` with f32 activations `x` `[m][k]`, one per chunk, recorded only
/// in steps on the GEMM path ([`Step::gemm`]); output, bias and residual as `io` says (its
/// int8 blocks and LoRA are not used).
///
/// [`Step::gemm`]: super::Step::gemm
pub fn gemm(
    ctx: &GpuContext,
    label: &str,
    w: &QuantMatrix,
    x: &wgpu::Buffer,
    io: &MatmulIo,
    shape: CoopShape,
) -> Vec<Dispatch> {
    let int8 = matches!(w.format, WeightFormat::Int8) as u32;
    let defines = defines(shape.tile, shape.subgroup, (shape.rows, shape.cols)).with("INT8", int8);
    chunk_launches(
        ctx,
        label,
        w,
        x,
        io,
        ("prefill_coop", "coop", defines),
        |n| Grid::Blocks {
            n,
            cols: shape.block_cols(),
            per_rows: shape.block_rows(),
        },
    )
}
