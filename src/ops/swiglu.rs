//! SwiGLU (`shaders/swiglu.wgsl`): `h = silu(gate) · up` from one `[m][2·n_ff]` buffer,
//! written as int8 blocks for the down projection ([`swiglu`]) or as f32 rows for the
//! prefill GEMM ([`swiglu_f32`]).

use super::{Dispatch, DispatchSpec, Dyn, Grid, KernelParams};
use crate::gpu::{Binding, GpuContext};

crate::kernel_params!(
    /// `struct Params` of shaders/swiglu.wgsl.
    SwigluParams for "swiglu"::Params {
        n_ff: u32,
        /// Rows (set per step).
        m: u32,
        _pad0: u32,
        _pad1: u32,
    }
);

const KINDS: &[Binding] = &[
    Binding::Uniform,
    Binding::Read,
    Binding::ReadWrite,
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
    launch(ctx, label, "main", gate_up, n_ff, [xq, xs, xs])
}

/// As [`swiglu`], writing `h` `[m][n_ff]` f32 (`scratch` fills the unused int8 bindings).
pub fn swiglu_f32(
    ctx: &GpuContext,
    label: &str,
    gate_up: &wgpu::Buffer,
    n_ff: usize,
    h: &wgpu::Buffer,
    scratch: &wgpu::Buffer,
) -> Dispatch {
    launch(ctx, label, "f32_out", gate_up, n_ff, [scratch, scratch, h])
}

fn launch(
    ctx: &GpuContext,
    label: &str,
    entry: &'static str,
    gate_up: &wgpu::Buffer,
    n_ff: usize,
    outs: [&wgpu::Buffer; 3],
) -> Dispatch {
    Dispatch::new(
        ctx,
        DispatchSpec {
            label: label.into(),
            shader: "swiglu",
            entry,
            kinds: KINDS,
            words: SwigluParams {
                n_ff: n_ff as u32,
                ..Default::default()
            }
            .words(),
            dynamic: vec![(crate::params_word!(SwigluParams, m), Dyn::Rows)],
            buffers: vec![gate_up, outs[0], outs[1], outs[2]],
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

/// `gate_up` `[m][2·n_ff]` → h `[m][n_ff]`.
pub fn reference(gate_up: &[f32], n_ff: usize) -> Vec<f32> {
    gate_up
        .chunks(2 * n_ff)
        .flat_map(|r| (0..n_ff).map(move |i| silu(r[i]) * r[n_ff + i]))
        .collect()
}
