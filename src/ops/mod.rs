//! Kernel launchers: one module per `shaders/*.wgsl` file, each with a `#[repr(C)]`
//! params struct mirroring the WGSL one ([`crate::kernel_params!`]; tests/shaders.rs checks the
//! two layouts agree through naga), a constructor that builds a [`Dispatch`] with its
//! bind group made once, and a plain-Rust reference the tests compare against.
//!
//! A [`Dispatch`] is recorded many times (every decode step) with only the row count
//! changing; params words that depend on it are rewritten only when they change, so a
//! steady decode loop writes no uniforms at all.

pub mod attention;
pub mod embedding;
pub mod lora;
pub mod matmul_int4;
pub mod prefill_coop;
pub mod prefill_gemm;
pub mod quantize_act;
pub mod read_bandwidth;
pub mod rmsnorm;
pub mod rope;
pub mod sampling;
pub mod swiglu;

use crate::gpu::{Binding, GpuContext, ShaderDefines};
use std::cell::{Cell, RefCell};
use std::sync::Arc;

/// A kernel's uniform struct on the Rust side: `#[repr(C)]`, 4-byte fields in the order
/// of the WGSL struct it mirrors, which tests/shaders.rs compares field by field (name,
/// offset) and in size with naga's reflection of the shader.
pub trait KernelParams: bytemuck::Pod {
    /// The shader file and the WGSL struct this mirrors.
    const SHADER: &'static str;
    const STRUCT: &'static str;
    /// (field name, byte offset), in declaration order.
    const FIELDS: &'static [(&'static str, usize)];

    /// The struct as the u32 words a [`DispatchSpec`] uploads.
    fn words(&self) -> Vec<u32> {
        bytemuck::cast_slice(std::slice::from_ref(self)).to_vec()
    }
}

/// Declare a [`KernelParams`] struct: `kernel_params!(Name for "shader"::WgslStruct { field: u32, ... })`.
#[macro_export]
macro_rules! kernel_params {
    ($(#[$m:meta])* $name:ident for $shader:literal :: $wgsl:ident {
        $($(#[$fm:meta])* $field:ident : $ty:ty),* $(,)?
    }) => {
        $(#[$m])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
        pub struct $name {
            $($(#[$fm])* pub $field: $ty),*
        }
        impl $crate::ops::KernelParams for $name {
            const SHADER: &'static str = $shader;
            const STRUCT: &'static str = stringify!($wgsl);
            const FIELDS: &'static [(&'static str, usize)] =
                &[$((stringify!($field), std::mem::offset_of!($name, $field))),*];
        }
    };
}

/// Index of a params field among the struct's u32 words (for [`Dyn`] updates).
#[macro_export]
macro_rules! params_word {
    ($name:ty, $field:ident) => {
        std::mem::offset_of!($name, $field) / 4
    };
}

/// A params word filled at record time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dyn {
    /// Number of rows (tokens/streams) in this step.
    Rows,
    /// First input row (LM head over a row range).
    Row0,
    /// Key splits of split-K attention this step (see [`attention_splits`]).
    Splits,
    /// k splits of a split-K matmul this step (1 unless a decode-sized step on a GPU).
    KSplits,
    /// Leading attention splits done once for all rows by the shared-prefix pass.
    SharedSplits,
}

/// Effective k splits of a matmul launched with `k_splits`: only decode-sized steps split
/// (prefill has row tiles enough to fill a device).
pub fn matmul_splits(step: &Step, k_splits: u32) -> u32 {
    if step.prefill_sized() {
        1
    } else {
        k_splits
    }
}

/// What changes from one recording of a launch list to the next.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Step {
    /// Rows (tokens, or streams) in this step.
    pub rows: u32,
    /// First input row (LM head over a row range).
    pub row0: u32,
    /// Keys the longest row attends to (cache length after this step).
    pub kv_len: u32,
    /// Leading keys every row attends to in the very same cache blocks (a shared prompt).
    pub shared_len: u32,
    /// Some row uses a LoRA adapter (LoRA launches are skipped otherwise).
    pub adapters: bool,
    /// Every row is the next token of one stream, in order (a prefill chunk): the rows
    /// share one block table.
    pub one_stream: bool,
    /// The rows encode a prompt: the step takes the prefill kernels (GEMM where the device
    /// has it, flash attention, no splits) at any row count, so each row's result does not
    /// depend on how the prompt was chunked (a cached prefix leaves a short tail).
    pub prompt: bool,
}

/// Rows above which a step is prefill-sized: matmuls take the f32 GEMM (when no row uses
/// an adapter) and attention the flash prefill kernel (when the rows are one stream's).
/// Prompt steps ([`Step::prompt`]) take them at any row count.
pub const PREFILL_ROWS: u32 = 16;

impl Step {
    /// A prompt chunk or more than [`PREFILL_ROWS`] rows: the steps that take the prefill
    /// kernels and never split k or keys; the rest are decode-sized.
    pub fn prefill_sized(&self) -> bool {
        self.rows > PREFILL_ROWS || self.prompt
    }

    /// Matmuls run as the tiled f32-activation GEMM (`gemm_*` entries) instead of the int8
    /// GEMV path. Steps with adapters keep the int8 path: LoRA's shrink reads its blocks.
    pub fn gemm(&self) -> bool {
        self.prefill_sized() && !self.adapters
    }

    /// Attention runs as the flash prefill kernel (one invocation per query row, keys
    /// streamed through an online softmax), which reads one block table for all rows.
    pub fn flash(&self) -> bool {
        self.prefill_sized() && self.one_stream
    }
}

/// In which steps a launch is recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum When {
    Always,
    /// Some row uses an adapter (LoRA's own kernels).
    WithAdapters,
    /// [`Step::gemm`] equals the flag (the GEMM path, or the int8 path's launches).
    Gemm(bool),
    /// [`Step::flash`] equals the flag.
    Flash(bool),
}

impl When {
    fn holds(self, step: &Step) -> bool {
        match self {
            When::Always => true,
            When::WithAdapters => step.adapters,
            When::Gemm(on) => step.gemm() == on,
            When::Flash(on) => step.flash() == on,
        }
    }
}

/// How many workgroups split one (head, row)'s keys: decode-sized steps on GPUs split the
/// context into runs of `keys_per_split` (flash-decoding) so a long context fills the
/// device; prefill has rows enough, and `keys_per_split == 0` (CPU adapters) never splits.
pub fn attention_splits(step: &Step, keys_per_split: u32) -> u32 {
    if keys_per_split == 0 || step.prefill_sized() {
        1
    } else {
        step.kv_len.div_ceil(keys_per_split).clamp(1, MAX_SPLITS)
    }
}

/// Leading splits the shared-prefix pass takes: whole splits inside `shared_len`, when a
/// decode step of several rows splits its keys and the kernel variant supports the shape.
pub fn prefix_splits(step: &Step, keys_per_split: u32, cascade: bool) -> u32 {
    let splits = attention_splits(step, keys_per_split);
    if !cascade || step.rows < 2 || splits < 2 {
        0
    } else {
        (step.shared_len / keys_per_split).min(splits)
    }
}

/// Upper bound on [`attention_splits`] (sizes the partial-result buffers).
pub const MAX_SPLITS: u32 = 64;

/// How the y grid follows the row count.
#[derive(Clone, Copy, Debug)]
pub enum Grid {
    /// x fixed, y = ceil(rows / per), where per is the pipeline's ROWS (matmul tiles),
    /// z = k splits (see [`matmul_splits`]).
    RowTiles { x: u32, k_splits: u32 },
    /// x fixed, y = rows; launched only when the matmul was split (its reduce pass).
    IfKSplit { x: u32, k_splits: u32 },
    /// x fixed, y = rows.
    PerRow { x: u32 },
    /// x fixed, y = rows, z = attention splits after those the shared-prefix pass took.
    /// Decode steps of one stream take the pipeline with `one_stream_slices` slices of 64
    /// lanes (the SLICES define: the keys split inside the workgroup).
    PerRowSplits {
        x: u32,
        keys_per_split: u32,
        cascade: bool,
        split_one_stream: bool,
        one_stream_slices: u32,
    },
    /// x fixed, y = rows; launched only when attention was split (the merge pass).
    IfSplit {
        x: u32,
        keys_per_split: u32,
        cascade: bool,
        split_one_stream: bool,
    },
    /// x = KV heads, y = chunks of ROWS queries (rows × group heads), z = shared-prefix
    /// splits; launched only when there are some.
    Prefix {
        x: u32,
        group: u32,
        keys_per_split: u32,
    },
    /// x = ceil(n / (64·COLS)) column tiles, y = ceil(rows / ROWS) row tiles (ROWS and
    /// COLS are the pipeline's defines).
    Gemm { n: u32 },
    /// x = ceil(n / cols) column blocks, y = ceil(rows / per_rows) row blocks (a fixed
    /// output block per workgroup).
    Blocks { n: u32, cols: u32, per_rows: u32 },
    /// x fixed, y = ceil(rows / 64): one invocation per row.
    Rows64 { x: u32 },
}

/// One kernel launch with everything but the row count fixed.
pub struct Dispatch {
    pub label: String,
    shader: &'static str,
    entry: &'static str,
    layout: Arc<(wgpu::BindGroupLayout, wgpu::PipelineLayout)>,
    bind_group: wgpu::BindGroup,
    params: wgpu::Buffer,
    words: Vec<u32>,
    dynamic: Vec<(usize, Dyn)>,
    last: Cell<Option<(u32, u32, u32, u32)>>,
    /// Pipelines used so far, by per-step define (see [`Dispatch::pipeline`]).
    pipelines: RefCell<Vec<(StepDefine, Arc<wgpu::ComputePipeline>)>>,
    grid: Grid,
    defines: ShaderDefines,
    when: When,
}

/// The one define a launch chooses per step, if any: matmul's row tile (ROWS), attention's
/// slices of 64 lanes (SLICES).
pub type StepDefine = Option<(&'static str, u32)>;

/// What a launcher hands to [`Dispatch::new`].
pub struct DispatchSpec<'a> {
    pub label: String,
    pub shader: &'static str,
    pub entry: &'static str,
    pub kinds: &'static [Binding],
    /// Params struct as u32 words (f32 fields by bit pattern).
    pub words: Vec<u32>,
    pub dynamic: Vec<(usize, Dyn)>,
    /// Storage buffers for bindings 1.. (binding 0 is the params uniform).
    pub buffers: Vec<&'a wgpu::Buffer>,
    pub grid: Grid,
    /// Fixed compile-time defines (e.g. SUBGROUPS); ROWS is added per record.
    pub defines: ShaderDefines,
}

impl Dispatch {
    pub fn new(ctx: &GpuContext, spec: DispatchSpec) -> Self {
        let layout = ctx.cached_layout(spec.shader, spec.entry, spec.kinds);
        let params = ctx.uniform_words(&spec.label, &spec.words);
        let mut all = vec![&params];
        all.extend(spec.buffers.iter().copied());
        let bind_group = ctx.bind(&layout.0, &all);
        Dispatch {
            label: spec.label,
            shader: spec.shader,
            entry: spec.entry,
            layout,
            bind_group,
            params,
            words: spec.words,
            dynamic: spec.dynamic,
            last: Cell::new(None),
            pipelines: RefCell::new(Vec::new()),
            grid: spec.grid,
            defines: spec.defines,
            when: When::Always,
        }
    }

    /// Launch only in steps where `when` holds.
    pub fn only(mut self, when: When) -> Self {
        self.set_when(when);
        self
    }

    /// As [`only`](Self::only), in place.
    pub fn set_when(&mut self, when: When) {
        self.when = when;
    }

    /// Launch only in steps where some row uses an adapter (LoRA's own kernels).
    pub fn only_with_adapters(self) -> Self {
        self.only(When::WithAdapters)
    }

    /// This launch's pipeline for a per-step define, looked up in the context's cache once
    /// per value and then kept here: a decode step records hundreds of launches, and
    /// hashing a key string for each was host time on every step.
    fn pipeline(&self, ctx: &GpuContext, step_define: StepDefine) -> Arc<wgpu::ComputePipeline> {
        let mut cache = self.pipelines.borrow_mut();
        if let Some((_, p)) = cache.iter().find(|(d, _)| *d == step_define) {
            return p.clone();
        }
        let defines = match step_define {
            Some((name, value)) => self.defines.clone().with(name, value),
            None => self.defines.clone(),
        };
        let p = ctx.pipeline(self.shader, self.entry, &defines, &self.layout.1);
        cache.push((step_define, p.clone()));
        p
    }

    /// The per-step defines this launch can take in steps of 1..=`max_rows` rows: matmul's
    /// row tiles, attention's slices (the one define `workgroups` picks per step).
    fn step_defines(&self, ctx: &GpuContext, max_rows: u32) -> Vec<StepDefine> {
        let mut defines: Vec<StepDefine> = match self.grid {
            Grid::RowTiles { .. } => (1..=max_rows.max(1))
                .map(|rows| Some(("ROWS", row_tile(ctx, rows))))
                .collect(),
            Grid::IfKSplit { .. } => vec![Some(("ROWS", 1))],
            Grid::PerRowSplits {
                one_stream_slices, ..
            } => vec![
                Some(("SLICES", 1)),
                Some(("SLICES", one_stream_slices.max(1))),
            ],
            _ => vec![None],
        };
        defines.dedup();
        defines
    }

    /// The per-step variants (row tiles, slices) this launch can take in steps of
    /// 1..=`max_rows` rows and has not looked up yet (some may already be in the context's
    /// cache, built for another launch).
    pub fn cold_pipelines(&self, ctx: &GpuContext, max_rows: u32) -> Vec<StepDefine> {
        let cache = self.pipelines.borrow();
        self.step_defines(ctx, max_rows)
            .into_iter()
            .filter(|d| !cache.iter().any(|(have, _)| have == d))
            .collect()
    }

    /// Build (or look up) this launch's pipeline for `define` now, before a step needs it.
    pub fn warm(&self, ctx: &GpuContext, define: StepDefine) {
        self.pipeline(ctx, define);
    }

    /// Record into `pass` for `rows` rows starting at input row `row0`.
    pub fn record(&self, ctx: &GpuContext, pass: &mut wgpu::ComputePass<'_>, rows: u32, row0: u32) {
        self.record_step(
            ctx,
            pass,
            &Step {
                rows,
                row0,
                ..Default::default()
            },
        );
    }

    /// Record into `pass` for one step.
    pub fn record_step(&self, ctx: &GpuContext, pass: &mut wgpu::ComputePass<'_>, step: &Step) {
        if self.when.holds(step) {
            self.record_forced(ctx, pass, step);
        }
    }

    /// Whether [`record_step`](Self::record_step) launches anything for `step` (folded and
    /// unsplit launches record nothing; a profile leaves them out).
    pub fn launches_in(&self, step: &Step) -> bool {
        let (splits, shared) = self.split_counts(step);
        self.when.holds(step) && step.rows > 0 && !self.nothing_to_do(splits, shared)
    }

    /// As [`record_step`](Self::record_step) whatever path the step takes (tests and
    /// benchmarks run one path's launches on any step).
    pub fn record_forced(&self, ctx: &GpuContext, pass: &mut wgpu::ComputePass<'_>, step: &Step) {
        if step.rows == 0 {
            return;
        }
        let (splits, shared) = self.split_counts(step);
        if self.nothing_to_do(splits, shared) {
            return;
        }
        self.update_params(ctx, step, splits, shared);
        let (step_define, grid) = self.workgroups(ctx, step, splits, shared);
        ctx.stats.dispatch();
        let pipeline = self.pipeline(ctx, step_define);
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, &self.bind_group, &[]);
        pass.dispatch_workgroups(grid[0], grid[1], grid[2]);
    }

    /// This step's (key or k) splits, and the leading attention splits the shared-prefix
    /// pass takes.
    fn split_counts(&self, step: &Step) -> (u32, u32) {
        match self.grid {
            // Without `split_one_stream` a step of one stream's rows takes its keys whole
            // (no merge launch), in slices of the workgroup for decode steps: see
            // `AttentionPlan::split_one_stream`.
            Grid::PerRowSplits {
                split_one_stream: false,
                ..
            }
            | Grid::IfSplit {
                split_one_stream: false,
                ..
            } if step.one_stream => (1, 0),
            Grid::PerRowSplits {
                keys_per_split,
                cascade,
                ..
            }
            | Grid::IfSplit {
                keys_per_split,
                cascade,
                ..
            } => (
                attention_splits(step, keys_per_split),
                prefix_splits(step, keys_per_split, cascade),
            ),
            Grid::Prefix { keys_per_split, .. } => (
                attention_splits(step, keys_per_split),
                prefix_splits(step, keys_per_split, true),
            ),
            Grid::RowTiles { k_splits, .. } | Grid::IfKSplit { k_splits, .. } => {
                (matmul_splits(step, k_splits), 0)
            }
            _ => (1, 0),
        }
    }

    /// Whether a conditional launch (a reduce, merge or shared-prefix pass) has no work.
    fn nothing_to_do(&self, splits: u32, shared: u32) -> bool {
        (matches!(self.grid, Grid::IfSplit { .. } | Grid::IfKSplit { .. }) && splits == 1)
            || (matches!(self.grid, Grid::Prefix { .. }) && shared == 0)
    }

    /// Rewrite the params words that follow the step, only when they changed since the
    /// last recording (a steady decode loop writes no uniforms).
    fn update_params(&self, ctx: &GpuContext, step: &Step, splits: u32, shared: u32) {
        let key = (step.rows, step.row0, splits, shared);
        if self.dynamic.is_empty() || self.last.get() == Some(key) {
            return;
        }
        let mut words = self.words.clone();
        for &(i, d) in &self.dynamic {
            words[i] = match d {
                Dyn::Rows => step.rows,
                Dyn::Row0 => step.row0,
                Dyn::Splits | Dyn::KSplits => splits,
                Dyn::SharedSplits => shared,
            };
        }
        ctx.queue
            .write_buffer(&self.params, 0, bytemuck::cast_slice(&words));
        self.last.set(Some(key));
    }

    /// The define chosen per step (matmul's row tile, attention's slices) and the
    /// workgroup grid for the step's rows.
    fn workgroups(
        &self,
        ctx: &GpuContext,
        step: &Step,
        splits: u32,
        shared: u32,
    ) -> (StepDefine, [u32; 3]) {
        let rows = step.rows;
        match self.grid {
            Grid::RowTiles { x, .. } => {
                let per = row_tile(ctx, rows);
                (Some(("ROWS", per)), [x, rows.div_ceil(per), splits])
            }
            // The reduce pass shares its module with the tiled matmul, which needs a ROWS.
            Grid::IfKSplit { x, .. } => (Some(("ROWS", 1)), [x, rows, 1]),
            Grid::PerRow { x } | Grid::IfSplit { x, .. } => (None, [x, rows, 1]),
            Grid::PerRowSplits {
                x,
                one_stream_slices,
                ..
            } => {
                let decode = step.one_stream && !step.prefill_sized();
                let slices = if decode { one_stream_slices.max(1) } else { 1 };
                (Some(("SLICES", slices)), [x, rows, splits - shared])
            }
            Grid::Prefix { x, group, .. } => {
                let per = self.defines.get("ROWS").unwrap_or(1);
                (None, [x, (rows * group).div_ceil(per), shared])
            }
            Grid::Gemm { n } => {
                let (per_row, per_col) = (
                    self.defines.get("ROWS").unwrap_or(1),
                    self.defines.get("COLS").unwrap_or(1),
                );
                (None, [n.div_ceil(64 * per_col), rows.div_ceil(per_row), 1])
            }
            Grid::Rows64 { x } => (None, [x, rows.div_ceil(64), 1]),
            Grid::Blocks { n, cols, per_rows } => {
                (None, [n.div_ceil(cols), rows.div_ceil(per_rows), 1])
            }
        }
    }
}

/// Run dispatches once, in order, in one compute pass and wait (tests and benches).
pub fn run_once(ctx: &GpuContext, dispatches: &[&Dispatch], rows: u32, row0: u32) {
    run_step(
        ctx,
        dispatches,
        &Step {
            rows,
            row0,
            ..Default::default()
        },
    );
}

/// As [`run_once`] for a full [`Step`] (attention tests set `kv_len`).
pub fn run_step(ctx: &GpuContext, dispatches: &[&Dispatch], step: &Step) {
    let mut enc = ctx.device.create_command_encoder(&Default::default());
    {
        let mut pass = ctx.compute_pass(&mut enc);
        for d in dispatches {
            d.record_step(ctx, &mut pass, step);
        }
    }
    ctx.submit(enc);
    ctx.wait();
}

/// As [`run_step`], recording every launch whatever path the step takes (a test or a
/// benchmark of one path's launches, e.g. the prefill GEMM at any row count).
pub fn run_forced(ctx: &GpuContext, dispatches: &[&Dispatch], step: &Step) {
    let mut enc = ctx.device.create_command_encoder(&Default::default());
    {
        let mut pass = ctx.compute_pass(&mut enc);
        for d in dispatches {
            d.record_forced(ctx, &mut pass, step);
        }
    }
    ctx.submit(enc);
    ctx.wait();
}

/// Rows a matmul workgroup takes for a step of `rows` rows (its register tile, the ROWS
/// define), at most 16 (EDGEREASON_MAX_TILE lowers the cap, for measuring register
/// pressure). CPU adapters take the exact count: each row's dot products are their cost,
/// so a padded row costs as much as a real one. GPUs take the next power of two: the
/// weights, read once for every row of the tile, are their cost, and each kernel then has
/// 5 variants instead of 16 — each one a compile that stalls the first step needing it
/// (tens of ms on a GPU, up to a second on lavapipe) unless a warm-up built it
/// (`Session::warm_up`). EDGEREASON_ROW_TILES=exact|pow2 overrides.
pub fn row_tile(ctx: &GpuContext, rows: u32) -> u32 {
    static KNOBS: std::sync::OnceLock<(u32, Option<bool>)> = std::sync::OnceLock::new();
    let (cap, pow2) = *KNOBS.get_or_init(|| {
        let cap = crate::gpu::tuning::knob("EDGEREASON_MAX_TILE").and_then(|v| v.parse().ok());
        let pow2 = crate::gpu::tuning::knob("EDGEREASON_ROW_TILES").map(|v| v == "pow2");
        (cap.unwrap_or(16u32).clamp(1, 16), pow2)
    });
    let rows = rows.clamp(1, cap);
    if pow2.unwrap_or(!ctx.is_cpu()) {
        rows.next_power_of_two().min(cap)
    } else {
        rows
    }
}

/// Workgroups of 64 to cover `n` items.
pub fn wg64(n: usize) -> u32 {
    n.div_ceil(64) as u32
}
