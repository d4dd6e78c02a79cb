//! RoPE + KV store (`shaders/rope.wgsl`): rotates Q in place and K (HF rotate-half), and
//! writes K and V as f16 into the cache at each row's slot.

use super::{Dispatch, DispatchSpec, Dyn, Grid, KernelParams};
use crate::gpu::{Binding, GpuContext};

crate::kernel_params!(
    /// `struct Params` of shaders/rope.wgsl.
    RopeParams for "rope"::Params {
        n_head: u32,
        n_kv_head: u32,
        head_dim: u32,
        /// Rows (set per step).
        m: u32,
        theta: f32,
        _pad0: u32,
        _pad1: u32,
        _pad2: u32,
    }
);

const KINDS: &[Binding] = &[
    Binding::Uniform,
    Binding::ReadWrite,
    Binding::Read,
    Binding::Read,
    Binding::ReadWrite,
    Binding::ReadWrite,
];

#[allow(clippy::too_many_arguments)]
pub fn rope_store_kv(
    ctx: &GpuContext,
    label: &str,
    qkv: &wgpu::Buffer,
    positions: &wgpu::Buffer,
    slots: &wgpu::Buffer,
    k_cache: &wgpu::Buffer,
    v_cache: &wgpu::Buffer,
    n_head: usize,
    n_kv_head: usize,
    head_dim: usize,
    theta: f32,
) -> Dispatch {
    let items = (n_head + n_kv_head) * head_dim / 4 + n_kv_head * head_dim / 2;
    Dispatch::new(
        ctx,
        DispatchSpec {
            label: label.into(),
            shader: "rope",
            entry: "main",
            kinds: KINDS,
            words: RopeParams {
                n_head: n_head as u32,
                n_kv_head: n_kv_head as u32,
                head_dim: head_dim as u32,
                theta,
                ..Default::default()
            }
            .words(),
            dynamic: vec![(crate::params_word!(RopeParams, m), Dyn::Rows)],
            buffers: vec![qkv, positions, slots, k_cache, v_cache],
            grid: Grid::PerRow {
                x: super::wg64(items),
            },
            defines: Default::default(),
        },
    )
}

/// Rotate one head vector in place at position `pos` (HF `rotate_half` convention,
/// f32 inverse frequencies as transformers computes them).
pub fn reference(head: &mut [f32], pos: usize, theta: f32) {
    let hd = head.len();
    let half = hd / 2;
    for i in 0..half {
        let inv_freq = 1.0 / theta.powf((2 * i) as f32 / hd as f32);
        let a = pos as f32 * inv_freq;
        let (s, c) = a.sin_cos();
        let (x0, x1) = (head[i], head[i + half]);
        head[i] = x0 * c - x1 * s;
        head[i + half] = x1 * c + x0 * s;
    }
}
