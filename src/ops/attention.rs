//! Causal GQA attention over the f16 KV cache (`shaders/attention.wgsl`), one workgroup per
//! (head, row, key split); row m sees cache slots `0..=positions[m]`. Decode steps on GPUs
//! split the keys (flash-decoding) and a merge pass combines the splits.

use super::{Dispatch, DispatchSpec, Dyn, Grid};
use crate::gpu::{Binding, GpuContext, ShaderDefines};

const KINDS: &[Binding] = &[
    Binding::Uniform,
    Binding::Read,
    Binding::Read,
    Binding::Read,
    Binding::Read,
    Binding::ReadWrite,
    Binding::ReadWrite,
    Binding::ReadWrite,
    Binding::Read,
];

/// Where each row's keys live: the paged cache's block tables, `[rows][max_blocks]`.
pub struct BlockTables<'a> {
    pub tables: &'a wgpu::Buffer,
    pub block_size: u32,
    pub max_blocks: u32,
}

/// Keys per split for split-K decode attention on this device: GPUs get 64 (one
/// workgroup per 64 keys, enough workgroups to fill the device); CPU adapters such as
/// lavapipe have more workgroups than cores already and get 0 (never split).
pub fn keys_per_split(ctx: &GpuContext) -> u32 {
    if ctx.adapter.device_type == "Cpu" {
        0
    } else {
        64
    }
}

/// Partial-result buffers split-K attention needs for up to 16 decode rows:
/// (`part_o` bytes, `part_ml` bytes).
pub fn partial_bytes(n_head: usize, head_dim: usize) -> (u64, u64) {
    let parts = (16 * n_head * super::MAX_SPLITS as usize) as u64;
    (parts * head_dim as u64 * 4, parts * 8)
}

/// Buffers attention reads and writes for one layer.
pub struct AttentionIo<'a> {
    /// [m][qkv_stride] f32, Q heads first (rotated by `rope_store_kv`).
    pub qkv: &'a wgpu::Buffer,
    pub qkv_stride: usize,
    /// [m] u32: position of each row's query (it sees keys 0..=position).
    pub positions: &'a wgpu::Buffer,
    /// This layer's paged cache, [slot][n_kv_head·head_dim / 2] u32.
    pub k_cache: &'a wgpu::Buffer,
    pub v_cache: &'a wgpu::Buffer,
    pub tables: BlockTables<'a>,
    /// [m][n_head·head_dim] f32.
    pub out: &'a wgpu::Buffer,
    /// Split-K scratch (`part_o`, `part_ml`) of [`partial_bytes`].
    pub partials: (&'a wgpu::Buffer, &'a wgpu::Buffer),
}

/// How a layer's attention is split: keys per split for decode steps (0 = never split) and
/// whether decode steps over a common prompt take the shared-prefix pass.
#[derive(Clone, Copy, Debug)]
pub struct AttentionPlan {
    pub keys_per_split: u32,
    pub shared_prefix: bool,
}

impl AttentionPlan {
    /// This device's plan. The shared-prefix pass is off unless EDGEREASON_SHARED_PREFIX=1:
    /// measured on an H200 (Qwen2.5-0.5B shapes, 2048-token prompt, N = 8) the whole decode
    /// step took 10.1 ms with it and 8.4-9.4 ms without — the prefix sits in L2 anyway, and
    /// the pass walks the rows one after another. Kept, and tested, for devices where the
    /// prompt's K/V does not stay cached.
    pub fn for_device(ctx: &GpuContext) -> Self {
        AttentionPlan { keys_per_split: keys_per_split(ctx), shared_prefix: std::env::var("EDGEREASON_SHARED_PREFIX").is_ok_and(|v| v == "1") }
    }
}

/// The attention launches: the shared-prefix pass (only for decode steps of several rows
/// over a common prompt), the per-row pass, and the split merge (only when a step splits).
pub fn attention(ctx: &GpuContext, label: &str, io: &AttentionIo, n_head: usize, n_kv_head: usize, head_dim: usize, plan: AttentionPlan) -> Vec<Dispatch> {
    let keys_per_split = plan.keys_per_split;
    let AttentionIo { qkv, qkv_stride, positions, k_cache, v_cache, ref tables, out, partials } = *io;
    assert!(head_dim <= 256 && head_dim % 4 == 0, "head_dim {head_dim} unsupported (≤ 256, multiple of 4)");
    let words = vec![
        n_head as u32,
        n_kv_head as u32,
        head_dim as u32,
        0,
        qkv_stride as u32,
        super::f32w(1.0 / (head_dim as f32).sqrt()),
        0,
        keys_per_split,
        tables.block_size,
        tables.max_blocks,
        0,
        0,
    ];
    // The shared-prefix pass holds one split of K and V in workgroup memory: 64 keys of
    // head_dim ≤ 64.
    let cascade = plan.shared_prefix && head_dim <= 64 && (1..=64).contains(&keys_per_split);
    let spec = |entry: &'static str, grid: Grid| DispatchSpec {
        label: label.into(),
        shader: "attention",
        entry,
        kinds: KINDS,
        words: words.clone(),
        dynamic: vec![(3, Dyn::Rows), (6, Dyn::Splits), (10, Dyn::SharedSplits)],
        buffers: vec![qkv, positions, k_cache, v_cache, out, partials.0, partials.1, tables.tables],
        grid,
        defines: ShaderDefines::new().with("SUBGROUPS", (ctx.subgroups && entry == "main") as u32),
    };
    let x = n_head as u32;
    let mut out = Vec::new();
    if cascade {
        out.push(Dispatch::new(ctx, spec("prefix", Grid::Prefix { x, keys_per_split })));
    }
    out.push(Dispatch::new(ctx, spec("main", Grid::PerRowSplits { x, keys_per_split, cascade })));
    out.push(Dispatch::new(ctx, spec("merge", Grid::IfSplit { x, keys_per_split, cascade })));
    out
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
