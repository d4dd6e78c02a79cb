//! SwiGLU (`shaders/swiglu.wgsl`): `h = silu(gate) · up` from one `[m][2·n_ff]` buffer,
//! written as int8 blocks for the down projection.

use super::{Dispatch, DispatchSpec, Dyn, Grid};
use crate::gpu::{Binding, GpuContext};

const KINDS: &[Binding] = &[
    Binding::Uniform,
    Binding::Read,
    Binding::ReadWrite,
    Binding::ReadWrite,
];

pub fn swiglu(
    ctx: &GpuContext,
    label: &str,
    gate_up: &wgpu::Buffer,
    n_ff: usize,
    xq: &wgpu::Buffer,
    xs: &wgpu::Buffer,
) -> Dispatch {
    Dispatch::new(
        ctx,
        DispatchSpec {
            label: label.into(),
            shader: "swiglu",
            entry: "main",
            kinds: KINDS,
            words: vec![n_ff as u32, 0, 0, 0],
            dynamic: vec![(1, Dyn::Rows)],
            buffers: vec![gate_up, xq, xs],
            grid: Grid::PerRow {
                x: super::wg64(n_ff / 32),
            },
            defines: Default::default(),
        },
    )
}

pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// `gate_up` [m][2·n_ff] → h [m][n_ff].
pub fn reference(gate_up: &[f32], n_ff: usize) -> Vec<f32> {
    gate_up
        .chunks(2 * n_ff)
        .flat_map(|r| (0..n_ff).map(move |i| silu(r[i]) * r[n_ff + i]))
        .collect()
}
