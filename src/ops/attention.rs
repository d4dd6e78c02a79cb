//! Causal GQA attention over the f16 KV cache (`shaders/attention.wgsl`), one workgroup per
//! (head, row, key split); row m sees cache slots `0..=positions[m]`. Decode steps on GPUs
//! split the keys (flash-decoding) and a merge pass combines the splits. Prefill chunks
//! (many rows of one stream) take the flash prefill kernel: one invocation per query row.

use super::{Dispatch, DispatchSpec, Dyn, Grid, KernelParams, When};
use crate::gpu::{ensure_launch, Binding, GpuContext, GpuError, ShaderDefines};

crate::kernel_params!(
    /// `struct Params` of shaders/attention.wgsl.
    AttentionParams for "attention"::Params {
        n_head: u32,
        n_kv_head: u32,
        head_dim: u32,
        /// Rows (set per step).
        m: u32,
        qkv_stride: u32,
        /// 1 / sqrt(head_dim).
        scale: f32,
        /// Workgroups per (head, row) along the keys (set per step).
        n_splits: u32,
        keys_per_split: u32,
        /// Cache slots per block.
        block_size: u32,
        /// Block-table entries per row.
        max_blocks: u32,
        /// Leading splits whose keys every row shares (set per step).
        shared_splits: u32,
        /// 1: also write the output as int8 blocks for the Wo matmul.
        quantize: u32,
    }
);

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
    Binding::ReadWrite,
    Binding::ReadWrite,
];

/// Where each row's keys live: the paged cache's block tables, `[rows][max_blocks]`.
pub struct BlockTables<'a> {
    pub tables: &'a wgpu::Buffer,
    pub block_size: u32,
    pub max_blocks: u32,
}

/// Keys per split for split-K decode attention: 64 on every device. GPUs need the
/// workgroups (one per 64 keys fills an H200 at long context); on lavapipe it is what lets
/// the shared-prefix pass run, and it measured no slower for one stream either
/// (SmolLM2-135M, 512-token prompt, `bench --streams 1,8`: N=1 256.7 → 240.3 ms per step,
/// N=8 1574.7 → 572.8 ms with the pass).
pub fn keys_per_split(_ctx: &GpuContext) -> u32 {
    64
}

/// Partial-result buffers split-K attention needs for up to 16 decode rows:
/// (`part_o` bytes, `part_ml` bytes).
pub fn partial_bytes(n_head: usize, head_dim: usize) -> (u64, u64) {
    let parts = (16 * n_head * super::MAX_SPLITS as usize) as u64;
    (parts * head_dim as u64 * 4, parts * 8)
}

/// Queries (row, head) one shared-prefix workgroup scores against its split (`ROWS` in the
/// shader): each key is unpacked once for this many queries.
pub const PREFIX_QUERIES: u32 = 8;

/// Workgroup memory of the shared-prefix pass: K and V of 64 keys × 64 dims in f16, and
/// queries and scores for [`PREFIX_QUERIES`] queries.
const PREFIX_WORKGROUP_BYTES: u32 = 2 * 2048 * 4 + 2 * 64 * PREFIX_QUERIES * 4;

/// Buffers attention reads and writes for one layer.
pub struct AttentionIo<'a> {
    /// `[m][qkv_stride]` f32, Q heads first (rotated by `rope_store_kv`).
    pub qkv: &'a wgpu::Buffer,
    pub qkv_stride: usize,
    /// `[m]` u32: position of each row's query (it sees keys 0..=position).
    pub positions: &'a wgpu::Buffer,
    /// This layer's paged cache, [slot][n_kv_head·head_dim / 2] u32.
    pub k_cache: &'a wgpu::Buffer,
    pub v_cache: &'a wgpu::Buffer,
    pub tables: BlockTables<'a>,
    /// `[m][n_head·head_dim]` f32.
    pub out: &'a wgpu::Buffer,
    /// Split-K scratch (`part_o`, `part_ml`) of [`partial_bytes`].
    pub partials: (&'a wgpu::Buffer, &'a wgpu::Buffer),
    /// Also write `out` as the Wo matmul's int8 blocks (`xq`, `xs`), saving its
    /// quantization launch; only where [`quantizes_output`] says the shape allows it.
    pub quantized: Option<(&'a wgpu::Buffer, &'a wgpu::Buffer)>,
}

/// Whether attention can write its output as int8 blocks of 32 itself: each workgroup
/// (and each flash prefill invocation) holds whole heads, so head_dim must be a multiple
/// of 32 for no block to straddle two heads.
pub fn quantizes_output(head_dim: usize) -> bool {
    head_dim.is_multiple_of(32)
}

/// How a layer's attention is split: keys per split for decode steps (0 = never split),
/// whether decode steps over a common prompt take the shared-prefix pass, and whether
/// prefill chunks take the flash prefill kernel.
#[derive(Clone, Copy, Debug)]
pub struct AttentionPlan {
    pub keys_per_split: u32,
    pub shared_prefix: bool,
    pub flash_prefill: bool,
    /// Whether steps of one stream's rows (single-stream decode) split their keys too.
    /// GPUs need the workgroups; on a CPU adapter the heads alone outnumber the cores,
    /// so the split's only effect there is the merge launch.
    pub split_one_stream: bool,
    /// Slices of 64 lanes a one-stream decode step's workgroup splits its keys into (the
    /// shader's SLICES): > 1 takes the place of `split_one_stream`'s split launches and
    /// their merge, one launch a layer fewer.
    pub one_stream_slices: u32,
}

impl AttentionPlan {
    /// This device's plan: [`keys_per_split`], the shared-prefix pass on, and the flash
    /// prefill kernel on CPU adapters. There it took SmolLM2's 128-token prefill attention
    /// from 2607 to 612 ms (`bench`, lavapipe); on a GPU its one invocation per (row, head)
    /// launches 64× fewer threads than the per-row kernel, so GPUs keep that one until it
    /// is measured there. EDGEREASON_KEYS_PER_SPLIT, EDGEREASON_SHARED_PREFIX=0|1 and
    /// EDGEREASON_FLASH_PREFILL=0|1 override them (for measuring one against the other);
    /// [`split_one_stream`](Self::split_one_stream) is on for GPUs, off on CPU adapters
    /// (EDGEREASON_SPLIT_ONE_STREAM=0|1). [`one_stream_slices`](Self::one_stream_slices)
    /// is 1 until a GPU measures it (EDGEREASON_ATTENTION_SLICES=S, capped by
    /// [`max_slices`]; tools/gpu_check.sh runs the A/B).
    pub fn for_device(ctx: &GpuContext) -> Self {
        let env = |name: &str| crate::gpu::tuning::knob(name).and_then(|v| v.parse::<u32>().ok());
        let cpu = ctx.is_cpu();
        AttentionPlan {
            one_stream_slices: env("EDGEREASON_ATTENTION_SLICES")
                .unwrap_or(1)
                .clamp(1, max_slices(ctx)),
            split_one_stream: env("EDGEREASON_SPLIT_ONE_STREAM").map_or(!cpu, |v| v != 0),
            keys_per_split: env("EDGEREASON_KEYS_PER_SPLIT").unwrap_or_else(|| keys_per_split(ctx)),
            shared_prefix: env("EDGEREASON_SHARED_PREFIX").is_none_or(|v| v != 0),
            flash_prefill: env("EDGEREASON_FLASH_PREFILL").map_or(cpu, |v| v != 0),
        }
    }
}

/// Whether the shared-prefix pass handles this shape on this device: one split of K and V
/// (≤ 64 keys of head_dim ≤ 64) sits in workgroup memory next to its queries' scores, 20 KiB
/// in all, more than some phones give.
pub fn shared_prefix_supported(ctx: &GpuContext, head_dim: usize, keys_per_split: u32) -> bool {
    head_dim <= 64
        && (1..=64).contains(&keys_per_split)
        && ctx.device.limits().max_compute_workgroup_storage_size >= PREFIX_WORKGROUP_BYTES
}

/// The most slices of 64 lanes `main`'s workgroup can have on this device: its
/// invocations, and its workgroup memory (the query, then per slice its scores, slots,
/// reduction scratch and output partials).
pub fn max_slices(ctx: &GpuContext) -> u32 {
    let limits = ctx.device.limits();
    let lanes = limits
        .max_compute_invocations_per_workgroup
        .min(limits.max_compute_workgroup_size_x)
        / 64;
    let per_slice = 3 * 64 * 4 + 128 * 16 + 8;
    let memory = limits
        .max_compute_workgroup_storage_size
        .saturating_sub(256 * 4)
        / per_slice;
    lanes.min(memory).max(1)
}

/// Whether the kernels read the cache as vec4 words (`QUADS` in the shader): a head's
/// words are then whole vec4s. On lavapipe a load costs a loop over the lanes whatever
/// its width, so this (with each key's cache slot looked up once per chunk and the P·V
/// lanes split over keys) took SmolLM2-135M's decode step from 88.5 to 70-71 ms and
/// Qwen2.5-0.5B's from 222-228 to 199-206 ms (`bench`, 128-token prompt, lavapipe).
pub fn loads_quads(head_dim: usize) -> bool {
    head_dim > 0 && head_dim.is_multiple_of(8)
}

/// The shapes one layer's attention launches share: heads, head size, split plan.
#[derive(Clone, Copy)]
struct Shape {
    n_head: usize,
    n_kv_head: usize,
    head_dim: usize,
}

/// The uniform every attention entry point reads (the per-step words left at 0).
fn attention_params(io: &AttentionIo, shape: Shape, keys_per_split: u32) -> AttentionParams {
    let Shape {
        n_head,
        n_kv_head,
        head_dim,
    } = shape;
    AttentionParams {
        n_head: n_head as u32,
        n_kv_head: n_kv_head as u32,
        head_dim: head_dim as u32,
        qkv_stride: io.qkv_stride as u32,
        scale: 1.0 / (head_dim as f32).sqrt(),
        keys_per_split,
        block_size: io.tables.block_size,
        max_blocks: io.tables.max_blocks,
        quantize: io.quantized.is_some() as u32,
        ..Default::default()
    }
}

/// One attention entry point's launch: its buffers, per-step uniform words and variant.
fn attention_spec<'a>(
    ctx: &GpuContext,
    label: &str,
    io: &AttentionIo<'a>,
    params: &AttentionParams,
    entry: &'static str,
    grid: Grid,
) -> DispatchSpec<'a> {
    let (xq, xs) = io.quantized.unwrap_or(io.partials);
    DispatchSpec {
        label: label.into(),
        shader: "attention",
        entry,
        kinds: KINDS,
        words: params.words(),
        dynamic: vec![
            (crate::params_word!(AttentionParams, m), Dyn::Rows),
            (crate::params_word!(AttentionParams, n_splits), Dyn::Splits),
            (
                crate::params_word!(AttentionParams, shared_splits),
                Dyn::SharedSplits,
            ),
        ],
        buffers: vec![
            io.qkv,
            io.positions,
            io.k_cache,
            io.v_cache,
            io.out,
            io.partials.0,
            io.partials.1,
            io.tables.tables,
            xq,
            xs,
        ],
        grid,
        defines: entry_defines(ctx, entry, params.head_dim),
    }
}

/// An entry point's fixed defines; `main` chooses SLICES per step (see
/// [`Grid::PerRowSplits`]), the others run one slice.
fn entry_defines(ctx: &GpuContext, entry: &str, head_dim: u32) -> ShaderDefines {
    let defines = ShaderDefines::new()
        .with("SUBGROUPS", (ctx.subgroups && entry == "main") as u32)
        .with("ROWS", PREFIX_QUERIES)
        .with("QUADS", loads_quads(head_dim as usize) as u32);
    if entry == "main" {
        defines
    } else {
        defines.with("SLICES", 1)
    }
}

/// The attention launches: the shared-prefix pass (only for decode steps of several rows
/// over a common prompt), the per-row pass, and the split merge (only when a step splits).
/// A `head_dim` the kernels cannot take (or cannot write int8 blocks of, when `io` asks)
/// is an error; models with such heads are refused at upload (`ModelConfig::unsupported`).
pub fn attention(
    ctx: &GpuContext,
    label: &str,
    io: &AttentionIo,
    n_head: usize,
    n_kv_head: usize,
    head_dim: usize,
    plan: AttentionPlan,
) -> Result<Vec<Dispatch>, GpuError> {
    ensure_launch(
        n_kv_head > 0 && n_head.is_multiple_of(n_kv_head),
        label,
        || format!("{n_head} query heads do not share {n_kv_head} KV heads evenly"),
    )?;
    ensure_launch(
        io.quantized.is_none() || quantizes_output(head_dim),
        label,
        || format!("head_dim {head_dim}: attention cannot write int8 blocks of 32"),
    )?;
    ensure_launch(crate::loader::head_dim_supported(head_dim), label, || {
        format!("head_dim {head_dim} unsupported (≤ 256 and a multiple of 8, or ≤ 128 and of 4)")
    })?;
    let shape = Shape {
        n_head,
        n_kv_head,
        head_dim,
    };
    let keys_per_split = plan.keys_per_split;
    let params = attention_params(io, shape, keys_per_split);
    let spec = |entry, grid| attention_spec(ctx, label, io, &params, entry, grid);
    // The shared-prefix pass holds one split of K and V in workgroup memory (64 keys of
    // head_dim ≤ 64) next to its queries' scores: 20 KiB, more than some phones give.
    let cascade = plan.shared_prefix && shared_prefix_supported(ctx, head_dim, keys_per_split);
    let x = n_head as u32;
    let mut out = Vec::new();
    if cascade {
        let group = (n_head / n_kv_head) as u32;
        let grid = Grid::Prefix {
            x: n_kv_head as u32,
            group,
            keys_per_split,
        };
        out.push(Dispatch::new(ctx, spec("prefix", grid)));
    }
    // Slices take the place of one stream's split launches.
    let split_one_stream = plan.split_one_stream && plan.one_stream_slices <= 1;
    let per_row = Grid::PerRowSplits {
        x,
        keys_per_split,
        cascade,
        split_one_stream,
        one_stream_slices: plan.one_stream_slices,
    };
    out.push(Dispatch::new(ctx, spec("main", per_row)));
    let merge = Grid::IfSplit {
        x,
        keys_per_split,
        cascade,
        split_one_stream,
    };
    out.push(Dispatch::new(ctx, spec("merge", merge)));
    if plan.flash_prefill {
        out.iter_mut().for_each(|d| d.set_when(When::Flash(false)));
        let mut flash = spec("prefill", Grid::Rows64 { x });
        flash.defines = flash.defines.with("HEAD_DIM", head_dim as u32);
        out.push(Dispatch::new(ctx, flash).only(When::Flash(true)));
    }
    Ok(out)
}

/// softmax(q·Kᵀ/√d)·V for one head: `q` `[hd]`, `k`/`v` `[n_keys][hd]`.
pub fn reference(q: &[f32], k: &[f32], v: &[f32], hd: usize) -> Vec<f32> {
    let n = k.len() / hd;
    let scale = 1.0 / (hd as f32).sqrt();
    let s: Vec<f32> = (0..n)
        .map(|t| (0..hd).map(|d| q[d] * k[t * hd + d]).sum::<f32>() * scale)
        .collect();
    let mx = s.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = s.iter().map(|x| (x - mx).exp()).collect();
    let z: f32 = e.iter().sum();
    (0..hd)
        .map(|d| (0..n).map(|t| e[t] * v[t * hd + d]).sum::<f32>() / z)
        .collect()
}

/// N decode streams forked from one prompt, laid out in a paged cache as the engine lays
/// them out (the prompt's full blocks shared, its partly filled last block copied into each
/// stream, then each stream's own suffix), or with the whole prompt copied per stream
/// (`shared: false`, what a server without prefix sharing holds). Random K/V (f16-rounded)
/// and queries; [`reference`](Self::reference) is softmax attention over prompt + suffix.
/// Used by the kernel test and the attention benchmarks.
pub struct StreamsOverPrompt {
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
    pub prompt_len: usize,
    pub suffix_lens: Vec<usize>,
    pub block_size: usize,
    /// Host copies: prompt K/V [prompt_len][n_kv_head·head_dim], each stream's suffix K/V,
    /// queries [stream][n_head·head_dim].
    prompt_k: Vec<f32>,
    prompt_v: Vec<f32>,
    suffix_k: Vec<Vec<f32>>,
    suffix_v: Vec<Vec<f32>>,
    queries: Vec<f32>,
    tables: Vec<Vec<u32>>,
    qkv: wgpu::Buffer,
    positions: wgpu::Buffer,
    k_cache: wgpu::Buffer,
    v_cache: wgpu::Buffer,
    tables_buf: wgpu::Buffer,
    pub out: wgpu::Buffer,
    partials: (wgpu::Buffer, wgpu::Buffer),
    max_blocks: usize,
}

impl StreamsOverPrompt {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        ctx: &GpuContext,
        (n_head, n_kv_head, head_dim): (usize, usize, usize),
        prompt_len: usize,
        suffix_lens: &[usize],
        block_size: usize,
        shared: bool,
        seed: u64,
    ) -> Self {
        let kv = n_kv_head * head_dim;
        let mut noise = F16Noise::new(seed);
        let prompt_k = noise.take(prompt_len * kv);
        let prompt_v = noise.take(prompt_len * kv);
        let suffix_k: Vec<Vec<f32>> = suffix_lens.iter().map(|&s| noise.take(s * kv)).collect();
        let suffix_v: Vec<Vec<f32>> = suffix_lens.iter().map(|&s| noise.take(s * kv)).collect();
        let n = suffix_lens.len();
        let queries = noise.take(n * n_head * head_dim);
        let (tables, n_blocks) = block_tables(prompt_len, suffix_lens, block_size, shared);
        let max_blocks = tables.iter().map(|t| t.len()).max().unwrap_or(1);
        let (k_words, v_words) = paged_kv(
            (&prompt_k, &prompt_v),
            (&suffix_k, &suffix_v),
            (prompt_len, suffix_lens),
            &tables,
            (n_blocks, block_size),
            kv,
        );
        let qkv = qkv_rows(&queries, n, (n_head, n_kv_head, head_dim));
        let positions: Vec<u32> = suffix_lens
            .iter()
            .map(|&s| (prompt_len + s - 1) as u32)
            .collect();
        let (po, pml) = partial_bytes(n_head, head_dim);
        StreamsOverPrompt {
            n_head,
            n_kv_head,
            head_dim,
            prompt_len,
            suffix_lens: suffix_lens.to_vec(),
            block_size,
            qkv: ctx.storage_from("case qkv", &qkv),
            positions: ctx.storage_from("case positions", &positions),
            k_cache: ctx.storage_from("case k", &f16_bits(&k_words)),
            v_cache: ctx.storage_from("case v", &f16_bits(&v_words)),
            tables_buf: ctx.storage_from("case tables", &padded_tables(&tables, max_blocks)),
            out: ctx.storage("case out", (n * n_head * head_dim * 4) as u64),
            partials: (
                ctx.storage("case part_o", po),
                ctx.storage("case part_ml", pml),
            ),
            prompt_k,
            prompt_v,
            suffix_k,
            suffix_v,
            queries,
            tables,
            max_blocks,
        }
    }

    /// The attention launches for this batch under `plan`.
    pub fn attention(
        &self,
        ctx: &GpuContext,
        plan: AttentionPlan,
    ) -> Result<Vec<Dispatch>, GpuError> {
        let io = AttentionIo {
            qkv: &self.qkv,
            qkv_stride: (self.n_head + 2 * self.n_kv_head) * self.head_dim,
            positions: &self.positions,
            k_cache: &self.k_cache,
            v_cache: &self.v_cache,
            tables: BlockTables {
                tables: &self.tables_buf,
                block_size: self.block_size as u32,
                max_blocks: self.max_blocks as u32,
            },
            out: &self.out,
            partials: (&self.partials.0, &self.partials.1),
            quantized: None,
        };
        attention(
            ctx,
            "attention case",
            &io,
            self.n_head,
            self.n_kv_head,
            self.head_dim,
            plan,
        )
    }

    /// The decode step, with the shared length computed as the engine computes it: keys in
    /// leading blocks every stream's table has in common.
    pub fn step(&self) -> super::Step {
        let first = &self.tables[0];
        let common = self.tables[1..]
            .iter()
            .map(|t| first.iter().zip(t).take_while(|(a, b)| a == b).count())
            .min()
            .unwrap_or(first.len());
        let min_keys = self.prompt_len + self.suffix_lens.iter().min().unwrap_or(&0);
        let max_keys = self.prompt_len + self.suffix_lens.iter().max().unwrap_or(&0);
        super::Step {
            rows: self.suffix_lens.len() as u32,
            row0: 0,
            kv_len: max_keys as u32,
            one_stream: false,
            shared_len: (common * self.block_size).min(min_keys) as u32,
            adapters: false,
            prompt: false,
        }
    }

    /// Bytes of K and V the streams attend to (prompt counted once per stream).
    pub fn attended_kv_bytes(&self) -> u64 {
        let keys: usize = self.suffix_lens.iter().map(|s| self.prompt_len + s).sum();
        (keys * self.n_kv_head * self.head_dim * 2 * 2) as u64
    }

    /// CPU attention of stream `i`'s head `h` over its prompt + suffix.
    pub fn reference(&self, i: usize, h: usize) -> Vec<f32> {
        let (hd, kv) = (self.head_dim, self.n_kv_head * self.head_dim);
        let kvh = h / (self.n_head / self.n_kv_head);
        let gather = |prompt: &[f32], suffix: &[f32]| -> Vec<f32> {
            prompt
                .chunks(kv)
                .chain(suffix.chunks(kv))
                .flat_map(|row| row[kvh * hd..(kvh + 1) * hd].to_vec())
                .collect()
        };
        let k = gather(&self.prompt_k, &self.suffix_k[i]);
        let v = gather(&self.prompt_v, &self.suffix_v[i]);
        let q = &self.queries[(i * self.n_head + h) * hd..(i * self.n_head + h + 1) * hd];
        reference(q, &k, &v, hd)
    }
}

/// Uniform values in [-1, 1), rounded to f16, from a 64-bit LCG: test data any seed
/// reproduces.
struct F16Noise(u64);

impl F16Noise {
    fn new(seed: u64) -> Self {
        F16Noise(Self::step(seed))
    }

    fn step(x: u64) -> u64 {
        x.wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407)
    }

    fn take(&mut self, n: usize) -> Vec<f32> {
        (0..n)
            .map(|_| {
                self.0 = Self::step(self.0);
                half::f16::from_f32(((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0)
                    .to_f32()
            })
            .collect()
    }
}

/// Each stream's block table and the number of blocks they use in all: the prompt's full
/// blocks first (one set for all streams when `shared`), then each stream's own.
fn block_tables(
    prompt_len: usize,
    suffix_lens: &[usize],
    block_size: usize,
    shared: bool,
) -> (Vec<Vec<u32>>, usize) {
    let full = prompt_len / block_size;
    let mut next = 0u32;
    let mut alloc = |count: usize| -> Vec<u32> {
        let ids = (next..next + count as u32).collect();
        next += count as u32;
        ids
    };
    let common = if shared { alloc(full) } else { Vec::new() };
    let tables = suffix_lens
        .iter()
        .map(|&s| {
            let total = (prompt_len + s).div_ceil(block_size);
            let mut t = common.clone();
            t.extend(alloc(total - t.len()));
            t
        })
        .collect();
    (tables, next as usize)
}

/// The K and V caches, [n_blocks·block_size][kv] each: every stream's rows (the prompt's,
/// then its own suffix's) at the slots its block table maps their positions to.
fn paged_kv(
    (prompt_k, prompt_v): (&[f32], &[f32]),
    (suffix_k, suffix_v): (&[Vec<f32>], &[Vec<f32>]),
    (prompt_len, suffix_lens): (usize, &[usize]),
    tables: &[Vec<u32>],
    (n_blocks, block_size): (usize, usize),
    kv: usize,
) -> (Vec<f32>, Vec<f32>) {
    let mut k_words = vec![0f32; n_blocks * block_size * kv];
    let mut v_words = vec![0f32; n_blocks * block_size * kv];
    for (i, t) in tables.iter().enumerate() {
        for pos in 0..prompt_len + suffix_lens[i] {
            let slot = t[pos / block_size] as usize * block_size + pos % block_size;
            let (k, v) = if pos < prompt_len {
                (
                    &prompt_k[pos * kv..(pos + 1) * kv],
                    &prompt_v[pos * kv..(pos + 1) * kv],
                )
            } else {
                let j = pos - prompt_len;
                (
                    &suffix_k[i][j * kv..(j + 1) * kv],
                    &suffix_v[i][j * kv..(j + 1) * kv],
                )
            };
            k_words[slot * kv..(slot + 1) * kv].copy_from_slice(k);
            v_words[slot * kv..(slot + 1) * kv].copy_from_slice(v);
        }
    }
    (k_words, v_words)
}

/// qkv rows [stream][(n_head + 2·n_kv_head)·head_dim] carrying the queries in their Q
/// heads; the K/V part of each row is unused by attention.
fn qkv_rows(
    queries: &[f32],
    n: usize,
    (n_head, n_kv_head, head_dim): (usize, usize, usize),
) -> Vec<f32> {
    let stride = (n_head + 2 * n_kv_head) * head_dim;
    let mut qkv = vec![0f32; n * stride];
    for i in 0..n {
        qkv[i * stride..i * stride + n_head * head_dim]
            .copy_from_slice(&queries[i * n_head * head_dim..(i + 1) * n_head * head_dim]);
    }
    qkv
}

/// The block tables as one [stream][max_blocks] array, padded with block 0.
fn padded_tables(tables: &[Vec<u32>], max_blocks: usize) -> Vec<u32> {
    tables
        .iter()
        .flat_map(|t| {
            t.iter()
                .copied()
                .chain(std::iter::repeat(0))
                .take(max_blocks)
        })
        .collect()
}

fn f16_bits(x: &[f32]) -> Vec<u16> {
    x.iter()
        .map(|&v| half::f16::from_f32(v).to_bits())
        .collect()
}
