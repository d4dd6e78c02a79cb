//! Token sampling on the GPU (`shaders/sampling.wgsl`): one workgroup per row turns a row
//! of logits into (token id, log-prob), so a decode step reads back 8 bytes per row
//! instead of `n_vocab` floats. Greedy is bit-identical to [`crate::sampling::argmax`];
//! temperature / top-k / top-p follow [`crate::sampling::Sampler`]'s rules (ties at a
//! threshold keep every tied token, see the shader) with the GPU's own counter-based RNG:
//! [`draw`]`(seed, step)`, so the same seed and step give the same token, and a stream
//! advances `step` once per sampled token. The CPU sampler's StdRng stream is not
//! reproduced.
//!
//! A row can also list its most likely tokens with their log-probs (OpenAI's
//! `top_logprobs`): [`RowSampling::top_logprobs`] of them, found by the same threshold
//! search as top-k, written unordered to `top` and put in order by [`top_from_slots`].
//!
//! logits: `[rows][n_vocab]` f32   rows: `[m]` [`SampleRow`]   out: `[m]` [`Sampled`]
//! next_tokens: `[≥ m]` u32, the ids again, where the next step reads its input tokens
//! (so a step can be fed the last step's draws before the host has read them).
//! top: `[m][TOP_SLOTS]` (id, log-prob bits) u32, id `u32::MAX` where empty.

use super::{Dispatch, DispatchSpec, Dyn, Grid, KernelParams};
use crate::gpu::{ensure_launch, Binding, GpuContext, GpuError};
use crate::sampling::SamplingParams;

const KINDS: &[Binding] = &[
    Binding::Uniform,
    Binding::Read,
    Binding::Read,
    Binding::ReadWrite,
    Binding::ReadWrite,
    Binding::ReadWrite,
];

/// Slots per row of the `top` buffer (`TOP_SLOTS` of the shader): the most likely tokens
/// a row lists, ties at the threshold included up to this many.
pub const TOP_SLOTS: usize = 32;
/// The most `top_logprobs` a row may ask for (OpenAI's cap).
pub const MAX_TOP_LOGPROBS: u32 = 20;

crate::kernel_params!(
    /// `struct Params` of shaders/sampling.wgsl.
    Params for "sampling"::Params {
        n_vocab: u32,
        /// Rows in this launch (filled at record time).
        m: u32,
        /// Floats from one logits row to the next.
        row_stride: u32,
        _pad: u32,
    }
);

/// One row's settings (`SampleRow` of the shader), an element of the launch's `rows` buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct SampleRow {
    /// ≤ 0: greedy.
    pub temperature: f32,
    /// 0: all.
    pub top_k: u32,
    /// ≥ 1: all.
    pub top_p: f32,
    pub seed_lo: u32,
    pub seed_hi: u32,
    /// Tokens the stream has sampled so far (the RNG counter).
    pub step: u32,
    /// Row of `logits` to sample from.
    pub logits_row: u32,
    /// > 0: also list this many most likely tokens (at most [`MAX_TOP_LOGPROBS`]).
    pub top_n: u32,
}

/// A row's (token id, log-prob under the full softmax at temperature 1), as the kernel
/// writes it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Sampled {
    pub id: u32,
    pub logprob: f32,
}

/// One row's draw as a caller sees it: the token, its log-prob (full softmax at
/// temperature 1), and the most likely tokens with theirs where the row asked
/// ([`RowSampling::top_logprobs`]; most likely first).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Draw {
    pub id: u32,
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

/// What a caller asks for one row of a step: the stream's settings (its own seed), how
/// many tokens it has sampled so far, and how many most likely tokens to list beside the
/// draw (0: none; at most [`MAX_TOP_LOGPROBS`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RowSampling {
    pub params: SamplingParams,
    pub step: u32,
    pub top_logprobs: u32,
}

impl RowSampling {
    /// The kernel's row for this stream, sampling from `logits_row`.
    pub fn row(&self, logits_row: u32) -> SampleRow {
        let p = &self.params;
        SampleRow {
            temperature: p.temperature,
            top_k: p.top_k.min(u32::MAX as usize) as u32,
            top_p: p.top_p,
            seed_lo: p.seed as u32,
            seed_hi: (p.seed >> 32) as u32,
            step: self.step,
            logits_row,
            top_n: self.top_logprobs.min(MAX_TOP_LOGPROBS),
        }
    }
}

/// Bytes of one [`SampleRow`] and of one [`Sampled`].
pub const ROW_BYTES: u64 = std::mem::size_of::<SampleRow>() as u64;
pub const OUT_BYTES: u64 = std::mem::size_of::<Sampled>() as u64;

/// The buffers a sampling launch reads its rows' settings from and writes to (see the
/// module docs for their layouts).
pub struct SamplingIo<'a> {
    pub rows: &'a wgpu::Buffer,
    pub out: &'a wgpu::Buffer,
    pub next_tokens: &'a wgpu::Buffer,
    pub top: &'a wgpu::Buffer,
}

impl<'a> SamplingIo<'a> {
    /// `rows`, `out` and `top` for up to `max_rows` rows (`next_tokens` is the caller's:
    /// a session's token buffer).
    pub fn allocate(ctx: &GpuContext, max_rows: usize) -> [wgpu::Buffer; 3] {
        let m = max_rows as u64;
        [
            ctx.storage("sampling.rows", m * ROW_BYTES),
            ctx.storage("sampling.out", m * OUT_BYTES),
            ctx.storage("sampling.top", m * TOP_SLOTS as u64 * 8),
        ]
    }
}

/// The launch over `m` rows (the record's row count): row i samples `logits` row
/// `rows[i].logits_row` and writes `out[i]`, `next_tokens[i]` and, if it asks, `top[i]`. A vocabulary of 0 or ≥ 2^24 tokens is an error
/// (indices travel as f32 in the reduction); such models are refused at upload
/// (`ModelConfig::unsupported`).
pub fn sampling(
    ctx: &GpuContext,
    label: &str,
    logits: &wgpu::Buffer,
    n_vocab: usize,
    io: &SamplingIo,
) -> Result<Dispatch, GpuError> {
    ensure_launch(n_vocab > 0 && n_vocab < 1 << 24, label, || {
        format!("a vocabulary of {n_vocab} tokens (the GPU sampler takes 1 to 2^24 - 1)")
    })?;
    let params = Params {
        n_vocab: n_vocab as u32,
        m: 0,
        row_stride: n_vocab as u32,
        _pad: 0,
    };
    Ok(Dispatch::new(
        ctx,
        DispatchSpec {
            label: label.into(),
            shader: "sampling",
            entry: "main",
            kinds: KINDS,
            words: params.words(),
            dynamic: vec![(crate::params_word!(Params, m), Dyn::Rows)],
            buffers: vec![logits, io.rows, io.out, io.next_tokens, io.top],
            grid: Grid::PerRow { x: 1 },
            defines: Default::default(),
        },
    ))
}

/// A row's `top` slots as (id, log-prob), most likely first (ties: the lower id first),
/// at most `n`.
pub fn top_from_slots(slots: &[u32], n: usize) -> Vec<(u32, f32)> {
    let mut top: Vec<(u32, f32)> = slots
        .chunks_exact(2)
        .filter(|s| s[0] != u32::MAX)
        .map(|s| (s[0], f32::from_bits(s[1])))
        .collect();
    top.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    top.truncate(n);
    top
}

/// The `n` most likely tokens of `logits` with their log-probs (full softmax at
/// temperature 1), most likely first, ties by lower id: what the kernel's `top` gives,
/// and what the CPU sampling path reports.
pub fn top_reference(logits: &[f32], n: usize) -> Vec<(u32, f32)> {
    let mut ids: Vec<u32> = (0..logits.len() as u32).collect();
    ids.sort_by(|&a, &b| {
        logits[b as usize]
            .total_cmp(&logits[a as usize])
            .then(a.cmp(&b))
    });
    ids.truncate(n);
    ids.into_iter()
        .map(|id| (id, crate::sampling::log_prob(logits, id)))
        .collect()
}

/// lowbias32 (Wellons), as `mix32` in the shader.
fn mix32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846ca68b);
    x ^= x >> 16;
    x
}

/// The kernel's uniform draw in [0, 1) for a stream's `step`-th sampled token.
pub fn draw(seed: u64, step: u32) -> f32 {
    let h = mix32(seed as u32 ^ mix32((seed >> 32) as u32 ^ mix32(step ^ 0x9e37_79b9)));
    (h >> 8) as f32 * (1.0 / 16_777_216.0)
}

/// One row on the CPU by the kernel's rules (thresholds by sorting, sums in f64, the same
/// [`draw`]): the same token as the kernel except where float rounding of the sums moves a
/// draw across a boundary between two tokens.
pub fn reference(logits: &[f32], row: &SampleRow) -> Sampled {
    let lp = |id: u32| crate::sampling::log_prob(logits, id);
    if row.temperature <= 0.0 {
        let id = crate::sampling::argmax(logits);
        return Sampled {
            id,
            logprob: lp(id),
        };
    }
    let mx = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let inv_t = (1.0 / row.temperature).min(1e30);
    let w = |v: f32| ((v - mx) * inv_t).exp() as f64;
    let mut sorted = logits.to_vec();
    sorted.sort_unstable_by(|a, b| b.total_cmp(a));
    let k = row.top_k as usize;
    let mut thr = f32::NEG_INFINITY;
    if k > 0 && k < logits.len() {
        thr = sorted[k - 1];
    }
    if row.top_p < 1.0 {
        let kept: f64 = sorted
            .iter()
            .take_while(|&&v| v >= thr)
            .map(|&v| w(v))
            .sum();
        let goal = row.top_p as f64 * kept;
        let mut acc = 0.0;
        for &v in sorted.iter().take_while(|&&v| v >= thr) {
            acc += w(v);
            if acc >= goal {
                thr = v;
                break;
            }
        }
    }
    let total: f64 = logits.iter().filter(|&&v| v >= thr).map(|&v| w(v)).sum();
    let goal = draw(row.seed_lo as u64 | (row.seed_hi as u64) << 32, row.step) as f64 * total;
    let mut acc = 0.0;
    let mut last = 0;
    for (i, &v) in logits.iter().enumerate().filter(|(_, &v)| v >= thr) {
        acc += w(v);
        last = i as u32;
        if goal < acc {
            return Sampled {
                id: last,
                logprob: lp(last),
            };
        }
    }
    Sampled {
        id: last,
        logprob: lp(last),
    }
}
