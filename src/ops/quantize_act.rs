//! Activation quantization (`shaders/quantize_act.wgsl`): f32 rows → int8 blocks of 32
//! (`xq` `[m][k/4]` i8x4, `xs` `[m][k/32]` = (scale, Σx)) for `matmul_int4`.

use super::{Dispatch, DispatchSpec, Dyn, Grid, KernelParams};
use crate::gpu::{Binding, GpuContext};

crate::kernel_params!(
    /// `struct Params` of shaders/quantize_act.wgsl.
    QuantizeParams for "quantize_act"::Params {
        /// Features per row (a multiple of 32).
        k: u32,
        /// Rows (set per step).
        m: u32,
        /// Floats between input rows.
        in_stride: u32,
        _pad: u32,
    }
);

const KINDS: &[Binding] = &[
    Binding::Uniform,
    Binding::Read,
    Binding::ReadWrite,
    Binding::ReadWrite,
];

pub fn quantize_act(
    ctx: &GpuContext,
    label: &str,
    x: &wgpu::Buffer,
    k: usize,
    in_stride: usize,
    xq: &wgpu::Buffer,
    xs: &wgpu::Buffer,
) -> Dispatch {
    Dispatch::new(
        ctx,
        DispatchSpec {
            label: label.into(),
            shader: "quantize_act",
            entry: "main",
            kinds: KINDS,
            words: QuantizeParams {
                k: k as u32,
                in_stride: in_stride as u32,
                ..Default::default()
            }
            .words(),
            dynamic: vec![(crate::params_word!(QuantizeParams, m), Dyn::Rows)],
            buffers: vec![x, xq, xs],
            grid: Grid::PerRow {
                x: super::wg64(k / 32),
            },
            defines: Default::default(),
        },
    )
}

/// What the kernel's int8 blocks stand for, dequantized: the values matmul_int4 really
/// multiplies. Rounding is ties-to-even, as WGSL's `round`.
pub fn reference(x: &[f32]) -> Vec<f32> {
    x.chunks(32)
        .flat_map(|g| {
            let absmax = g.iter().fold(0f32, |a, v| a.max(v.abs()));
            let scale = if absmax == 0.0 { 1.0 } else { absmax / 127.0 };
            g.iter().map(move |v| (v / scale).round_ties_even() * scale)
        })
        .collect()
}
