//! RMSNorm (`shaders/rmsnorm.wgsl`): `y = x / sqrt(mean(x²) + eps) · weight`, as f32
//! (`rmsnorm`) or straight into matmul_int4's int8 blocks (`rmsnorm_quant`).

use super::{Dispatch, DispatchSpec, Dyn, Grid};
use crate::gpu::{Binding, GpuContext};

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
            words: vec![k as u32, 0, super::f32w(eps), 0],
            dynamic: vec![(1, Dyn::Rows), (3, Dyn::Row0)],
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
