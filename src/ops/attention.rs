//! Causal GQA attention over the f16 KV cache (`shaders/attention.wgsl`), one workgroup per
//! (head, row); row m sees cache slots `0..=positions[m]`.

use super::{Dispatch, DispatchSpec, Dyn, Grid};
use crate::gpu::{Binding, GpuContext, ShaderDefines};

const KINDS: &[Binding] = &[Binding::Uniform, Binding::Read, Binding::Read, Binding::Read, Binding::Read, Binding::ReadWrite];

#[allow(clippy::too_many_arguments)]
pub fn attention(
    ctx: &GpuContext,
    label: &str,
    qkv: &wgpu::Buffer,
    qkv_stride: usize,
    positions: &wgpu::Buffer,
    k_cache: &wgpu::Buffer,
    v_cache: &wgpu::Buffer,
    out: &wgpu::Buffer,
    n_head: usize,
    n_kv_head: usize,
    head_dim: usize,
) -> Dispatch {
    assert!(head_dim <= 256 && head_dim % 4 == 0, "head_dim {head_dim} unsupported (≤ 256, multiple of 4)");
    Dispatch::new(
        ctx,
        DispatchSpec {
            label: label.into(),
            shader: "attention",
            entry: "main",
            kinds: KINDS,
            words: vec![
                n_head as u32,
                n_kv_head as u32,
                head_dim as u32,
                0,
                qkv_stride as u32,
                super::f32w(1.0 / (head_dim as f32).sqrt()),
                0,
                0,
            ],
            dynamic: vec![(3, Dyn::Rows)],
            buffers: vec![qkv, positions, k_cache, v_cache, out],
            grid: Grid::PerRow { x: n_head as u32 },
            defines: ShaderDefines::new().with("SUBGROUPS", ctx.subgroups as u32),
        },
    )
}

/// softmax(q·Kᵀ/√d)·V for one head: `q` [hd], `k`/`v` [n_keys][hd].
pub fn reference(q: &[f32], k: &[f32], v: &[f32], hd: usize) -> Vec<f32> {
    let n = k.len() / hd;
    let scale = 1.0 / (hd as f32).sqrt();
    let s: Vec<f32> = (0..n).map(|t| (0..hd).map(|d| q[d] * k[t * hd + d]).sum::<f32>() * scale).collect();
    let mx = s.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = s.iter().map(|x| (x - mx).exp()).collect();
    let z: f32 = e.iter().sum();
    (0..hd).map(|d| (0..n).map(|t| e[t] * v[t * hd + d]).sum::<f32>() / z).collect()
}
