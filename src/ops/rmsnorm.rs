//! RMSNorm (`shaders/rmsnorm.wgsl`): `y = x / sqrt(mean(x²) + eps) · weight`, as f32
//! (`rmsnorm`) or straight into matmul_int4's int8 blocks (`rmsnorm_quant`).

use super::{Dispatch, DispatchSpec, Dyn, Grid, KernelParams};
use crate::gpu::{Binding, GpuContext};

crate::kernel_params!(
    /// `struct Params` of shaders/rmsnorm.wgsl.
    NormParams for "rmsnorm"::Params {
        /// Features per row.
        k: u32,
        /// Rows (set per step).
        m: u32,
        eps: f32,
        /// First input row (set per step: the LM head normalizes only the rows it scores).
        row0: u32,
    }
);

const KINDS: &[Binding] = &[
    Binding::Uniform,
    Binding::Read,
    Binding::Read,
    Binding::ReadWrite,
    Binding::ReadWrite,
    Binding::ReadWrite,
];

/// Normalize rows `row0..row0+rows` of `x` [.., k] into rows `0..rows` of the outputs.
/// With `quantized`, writes `xq`/`xs` (and `y` is unused); else writes `y`.
#[allow(clippy::too_many_arguments)]
pub fn rmsnorm(
    ctx: &GpuContext,
    label: &str,
    x: &wgpu::Buffer,
    weight: &wgpu::Buffer,
    k: usize,
    eps: f32,
    y: &wgpu::Buffer,
    xq: &wgpu::Buffer,
    xs: &wgpu::Buffer,
    quantized: bool,
) -> Dispatch {
    Dispatch::new(
        ctx,
        DispatchSpec {
            label: label.into(),
            shader: "rmsnorm",
            entry: if quantized {
                "rmsnorm_quant"
            } else {
                "rmsnorm"
            },
            kinds: KINDS,
            words: NormParams {
                k: k as u32,
                eps,
                ..Default::default()
            }
            .words(),
            dynamic: vec![
                (crate::params_word!(NormParams, m), Dyn::Rows),
                (crate::params_word!(NormParams, row0), Dyn::Row0),
            ],
            buffers: vec![x, weight, y, xq, xs],
            grid: Grid::PerRow { x: 1 },
            defines: Default::default(),
        },
    )
}

pub fn reference(x: &[f32], weight: &[f32], eps: f32) -> Vec<f32> {
    let k = weight.len();
    x.chunks(k)
        .flat_map(|row| {
            let ss: f32 = row.iter().map(|v| v * v).sum::<f32>() / k as f32;
            let r = 1.0 / (ss + eps).sqrt();
            row.iter().zip(weight).map(move |(v, w)| v * r * w)
        })
        .collect()
}
