//! `edgereason bench`: prefill and decode throughput, TTFT, memory, the per-kernel time
//! split, and the int4 GEMV's bandwidth against a plain read kernel on the same device.
//! Decode steps choose their tokens on the GPU (8 bytes read back per row), or from
//! read-back logits on the CPU with `EDGEREASON_CPU_SAMPLING=1`, for comparison.

use crate::engine::Engine;
use crate::gpu::GpuError;
use crate::kv::StreamId;
use crate::model::forward::decode_pipelining;
use crate::model::KernelProfile;
use crate::model::Session;
use crate::ops::sampling::RowSampling;
use crate::ops::{
    self,
    matmul_int4::{MatmulIo, QuantGroups, QuantMatrix},
};
use crate::sampling::{argmax, cpu_sampling};
use anyhow::Result;
use std::time::Instant;

#[derive(Clone, Debug, serde::Serialize)]
pub struct BenchReport {
    pub device: String,
    pub model: String,
    /// Knobs set away from the defaults, and where ([`crate::gpu::tuning::in_effect`]).
    pub knobs: Vec<String>,
    pub prompt_tokens: usize,
    pub gen_tokens: usize,
    /// Prompt to first logits, pipelines already compiled.
    pub ttft_ms: f64,
    /// The same on a fresh engine: includes compiling the kernels' pipelines.
    pub cold_ttft_ms: f64,
    pub prefill_tokens_per_s: f64,
    pub decode_tokens_per_s: f64,
    /// Median decode step.
    pub decode_step_ms: f64,
    /// Bytes a decode step reads back from the GPU: the sampled (id, log-prob), or the
    /// logits row with `EDGEREASON_CPU_SAMPLING=1`.
    pub readback_bytes_per_step: u64,
    pub weight_bytes: u64,
    pub kv_bytes: u64,
    /// Weights + KV cache + activations allocated by the engine (wgpu reports no usage).
    pub gpu_bytes: u64,
    /// Per kernel kind, ms per decode step (each launch timed alone).
    pub decode_kernel_ms: KernelProfile,
    /// Per kernel kind, ms for one prefill chunk of `prefill_profile_tokens` tokens.
    pub prefill_kernel_ms: KernelProfile,
    pub prefill_profile_tokens: usize,
    /// What one decode step asks of the GPU (median over a few steps).
    pub decode_step_cost: StepCost,
    pub gemv: GemvReport,
}

/// The fixed cost of one decode step: launches, passes, submissions, bytes read back, the
/// host time to prepare, record and submit it, and the GPU time of its pass. Each step is
/// waited for before the next (not pipelined), so its wall time is host and GPU in series.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct StepCost {
    pub dispatches: u64,
    /// Launches per layer: (dispatches − final norm − LM head) / layers; the embedding
    /// and the sampling launch count in.
    pub dispatches_per_layer: f64,
    pub passes: u64,
    pub submits: u64,
    pub readback_bytes: u64,
    pub host_encode_us: f64,
    /// GPU timestamps around the step's pass (None without timestamp queries).
    pub gpu_ms: Option<f64>,
    /// Wall time of the step, host and GPU (with timestamps on).
    pub wall_ms: f64,
    /// Kernel variants built during these steps (0 unless a compile stalled one of them).
    pub pipelines_built: u64,
}

/// One step's counters, wall ms and GPU ms.
type StepSample = (crate::gpu::StatsSnapshot, f64, Option<f64>);

/// [`StepCost`] of `n` greedy decode steps of the main stream (medians).
fn decode_step_cost(
    engine: &Engine,
    s: &mut Session,
    next: &mut u32,
    n: usize,
) -> Result<StepCost> {
    let ctx = &engine.ctx;
    s.time_steps(true);
    let mut costs: Vec<StepSample> = Vec::new();
    for _ in 0..n {
        let before = ctx.stats.snapshot();
        let t = Instant::now();
        greedy_step(s, next)?;
        let wall_ms = t.elapsed().as_secs_f64() * 1e3;
        let d = ctx.stats.snapshot() - before;
        costs.push((d, wall_ms, s.last_step_gpu_ms()?));
    }
    s.time_steps(false);
    let med = |f: &dyn Fn(&StepSample) -> f64| median(costs.iter().map(f).collect());
    let dispatches = med(&|c| c.0.dispatches as f64) as u64;
    // The head: final norm and the LM head's launches (one per chunk of the matrix).
    let head = 1 + engine.model.lm_head().chunks.len() as u64;
    Ok(StepCost {
        dispatches,
        dispatches_per_layer: dispatches.saturating_sub(head) as f64
            / engine.model.config.n_layer as f64,
        passes: med(&|c| c.0.passes as f64) as u64,
        submits: med(&|c| c.0.submits as f64) as u64,
        readback_bytes: med(&|c| c.0.readback_bytes as f64) as u64,
        host_encode_us: med(&|c| c.0.host_encode_ns as f64 / 1e3),
        gpu_ms: costs
            .iter()
            .all(|c| c.2.is_some())
            .then(|| med(&|c| c.2.unwrap_or(0.0))),
        wall_ms: med(&|c| c.1),
        pipelines_built: costs.iter().map(|c| c.0.pipelines_compiled).sum(),
    })
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct GemvReport {
    pub n: usize,
    pub k: usize,
    pub gemv_ms: f64,
    pub gemv_gb_per_s: f64,
    pub read_ms: f64,
    pub read_gb_per_s: f64,
    pub ratio: f64,
}

/// `n` ordinary text-like token ids: past the first thousand (bytes and specials) and
/// short of the last thousand, or the middle three quarters of a small vocabulary.
fn synthetic_prompt(engine: &Engine, n: usize) -> Vec<u32> {
    let v = engine.model.config.n_vocab;
    let skip = if v > 4000 { 1000 } else { v / 8 };
    let span = (v - 2 * skip).max(1);
    (0..n).map(|i| (skip + (i * 7919) % span) as u32).collect()
}

/// `n` greedy decode steps of the main stream from token `next` (left at the last step's
/// choice); each step's wall time in ms, choosing the token included.
fn greedy_steps(s: &mut Session, next: &mut u32, n: usize) -> Result<Vec<f64>> {
    let main = s.main;
    let mut tokens = vec![*next];
    let steps = batched_greedy_steps(s, &[main], &mut tokens, n)?;
    *next = tokens[0];
    Ok(steps)
}

/// `n` greedy decode steps of `streams` together, row i fed `next[i]` (left at the last
/// step's choices); each step's time in ms. As the decoding loops run them: where the rows
/// fit one sampling launch, each step is submitted fed the last one's draws before they
/// are read (unless EDGEREASON_PIPELINE=0), so a step's time is the gap between one
/// step's draws and the next's.
fn batched_greedy_steps(
    s: &mut Session,
    streams: &[StreamId],
    next: &mut [u32],
    n: usize,
) -> Result<Vec<f64>> {
    let rows = |next: &[u32]| -> Vec<(StreamId, u32)> {
        streams.iter().copied().zip(next.iter().copied()).collect()
    };
    let mut steps = Vec::with_capacity(n);
    if cpu_sampling() || !decode_pipelining() || streams.len() > s.lm_rows {
        for _ in 0..n {
            let t = Instant::now();
            let mut out = Vec::with_capacity(streams.len());
            for chunk in rows(next).chunks(s.lm_rows) {
                if cpu_sampling() {
                    out.extend(s.forward_rows(chunk)?.iter().map(|l| argmax(l)));
                } else {
                    let draws = s.forward_rows_sampled(chunk, &vec![greedy(); chunk.len()])?;
                    out.extend(draws.iter().map(|d| d.0));
                }
            }
            next.copy_from_slice(&out);
            steps.push(t.elapsed().as_secs_f64() * 1e3);
        }
        return Ok(steps);
    }
    let settings = vec![greedy(); streams.len()];
    let mut t = Instant::now();
    let mut last = s.submit_rows_sampled(&rows(next), &settings)?;
    for i in 0..n {
        let ahead = (i + 1 < n)
            .then(|| s.submit_fed(&last, &settings))
            .transpose()?;
        let draws = s.wait_sampled(last)?;
        next.iter_mut().zip(&draws).for_each(|(tok, d)| *tok = d.0);
        steps.push(t.elapsed().as_secs_f64() * 1e3);
        t = Instant::now();
        match ahead {
            Some(a) => last = a,
            None => break,
        }
    }
    Ok(steps)
}

/// Untimed decode steps for about 300 ms (2 at least, 64 at most): a GPU that idled
/// clocks down (an H200's SMs from ~1980 to 345 MHz), and the first timed run on a fresh
/// machine measured less than half the decode and prefill speed of the runs after it.
fn warm_up(s: &mut Session, mut next: u32) -> Result<()> {
    let t = Instant::now();
    for i in 0..64 {
        if i >= 2 && t.elapsed().as_secs_f64() > 0.3 {
            break;
        }
        greedy_step(s, &mut next)?;
    }
    Ok(())
}

/// One decode step of the main stream from `next`, leaving the greedy choice in `next`.
fn greedy_step(s: &mut Session, next: &mut u32) -> Result<()> {
    *next = if cpu_sampling() {
        argmax(&s.forward(&[*next])?)
    } else {
        s.forward_rows_sampled(&[(s.main, *next)], &[greedy()])?[0].0
    };
    Ok(())
}

fn greedy() -> RowSampling {
    RowSampling::default()
}

/// Bytes one decode row reads back: (id, log-prob) sampled on the GPU, or the logits.
fn readback_bytes_per_row(engine: &Engine) -> u64 {
    if cpu_sampling() {
        engine.model.config.n_vocab as u64 * 4
    } else {
        ops::sampling::OUT_BYTES
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Time `f` (which submits GPU work) `reps` times after one warm-up; median ms.
pub fn time_ms(ctx: &crate::gpu::GpuContext, reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    ctx.wait();
    median(
        (0..reps)
            .map(|_| {
                let t = Instant::now();
                f();
                ctx.wait();
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect(),
    )
}

/// An `n`×`k` int4 matrix of arbitrary quants (benchmarks time it, nothing reads results).
fn random_int4(
    ctx: &crate::gpu::GpuContext,
    label: &str,
    n: usize,
    k: usize,
) -> Result<QuantMatrix, GpuError> {
    let groups: Vec<_> = (0..n * k / 32)
        .map(|i| crate::loader::Q4Group {
            scale: 0.01,
            min: -0.08,
            q: std::array::from_fn(|j| ((i * 7 + j * 3) % 16) as u8),
        })
        .collect();
    QuantMatrix::upload(ctx, label, n, k, QuantGroups::Int4(&groups))
}

/// An `n`×`k` int8 matrix of arbitrary quants (as [`random_int4`]).
fn random_int8(
    ctx: &crate::gpu::GpuContext,
    label: &str,
    n: usize,
    k: usize,
) -> Result<QuantMatrix, GpuError> {
    let groups: Vec<_> = (0..n * k / 32)
        .map(|i| crate::loader::Q8Group {
            scale: 0.01,
            q: std::array::from_fn(|j| ((i * 7 + j * 3) % 255) as i8),
        })
        .collect();
    QuantMatrix::upload(ctx, label, n, k, QuantGroups::Int8(&groups))
}

/// int4 GEMV (M = 1) on an `n`×`k` random matrix against reading the same bytes.
pub fn gemv_vs_read(
    ctx: &crate::gpu::GpuContext,
    n: usize,
    k: usize,
    reps: usize,
) -> Result<GemvReport, GpuError> {
    let w = random_int4(ctx, "bench.w", n, k)?;
    let xq = ctx.storage("xq", k as u64);
    let xs = ctx.storage("xs", (k / 32 * 16) as u64);
    let out = ctx.storage("out", (n * 4) as u64);
    let partials = ctx.storage("partials", ops::matmul_int4::partial_bytes(ctx, &w));
    let io = MatmulIo::new(&xq, &xs, &out, n, &partials);
    let mm = ops::matmul_int4::matmul_int4(ctx, "gemv", &w, &io)?;
    let refs: Vec<_> = mm.iter().collect();
    let gemv_ms = time_ms(ctx, reps, || ops::run_once(ctx, &refs, 1, 0));
    // Same bytes (quants + scales) through the read kernel.
    let words = (w.bytes() / 4) as usize;
    let src = ctx.storage("bench.src", w.bytes());
    let threads = 64 * 1024;
    let dst = ctx.storage("bench.dst", threads as u64 * 4);
    let rd = ops::read_bandwidth::read_bandwidth(ctx, &src, words, threads, &dst);
    let read_ms = time_ms(ctx, reps, || ops::run_once(ctx, &[&rd], 1, 0));
    let gb = w.bytes() as f64 / 1e9;
    Ok(GemvReport {
        n,
        k,
        gemv_ms,
        gemv_gb_per_s: gb / (gemv_ms / 1e3),
        read_ms,
        read_gb_per_s: gb / (read_ms / 1e3),
        ratio: read_ms / gemv_ms,
    })
}

/// Full benchmark of `engine`: a prompt of `prompt_tokens` synthetic tokens, then
/// `gen_tokens` greedy decode steps.
pub fn run(
    engine: &Engine,
    model_name: &str,
    prompt_tokens: usize,
    gen_tokens: usize,
) -> Result<BenchReport> {
    let c = &engine.model.config;
    let prompt = synthetic_prompt(engine, prompt_tokens);
    // Cold start: the first prefill also compiles the pipelines it uses.
    let t = Instant::now();
    let mut warm = engine.session()?;
    warm.forward(&prompt)?;
    warm.forward(&prompt[..1])?;
    let cold_ttft = t.elapsed().as_secs_f64();
    if !cpu_sampling() {
        warm.sample_last_logits(&[greedy()])?; // its pipeline compiled outside the timed steps
    }
    warm_up(&mut warm, prompt[0])?;
    drop(warm);
    let mut s = engine.session()?;
    let t = Instant::now();
    let mut next = argmax(&s.forward(&prompt)?);
    let ttft = t.elapsed().as_secs_f64();
    let steps = greedy_steps(&mut s, &mut next, gen_tokens)?;
    let total: f64 = steps.iter().sum();
    let decode_step_ms = median(steps.clone());
    let decode_step_cost = decode_step_cost(engine, &mut s, &mut next, 5)?;
    // Per-kernel split of a few decode steps, each launch timed on its own.
    let mut profile = KernelProfile::default();
    let reps = 3;
    for _ in 0..reps {
        next = argmax(&s.forward_rows_profiled(&[(s.main, next)], &mut profile)?[0]);
    }
    profile.ms.values_mut().for_each(|v| *v /= reps as f64);
    // Per-kernel split of one prefill chunk (as many prompt tokens as one step takes).
    let chunk = prompt.len().min(engine.options.max_rows);
    let mut prefill_profile = KernelProfile::default();
    engine
        .session()?
        .forward_profiled(&prompt[..chunk], &mut prefill_profile)?;
    let gemv = gemv_vs_read(&engine.ctx, 2 * c.n_ff, c.n_embd, 7)?;
    Ok(BenchReport {
        device: engine.ctx.describe(),
        model: model_name.to_string(),
        knobs: crate::gpu::tuning::in_effect(),
        prompt_tokens,
        gen_tokens,
        ttft_ms: ttft * 1e3,
        cold_ttft_ms: cold_ttft * 1e3,
        prefill_tokens_per_s: prompt_tokens as f64 / ttft,
        decode_tokens_per_s: gen_tokens as f64 / (total / 1e3),
        decode_step_ms,
        readback_bytes_per_step: readback_bytes_per_row(engine),
        weight_bytes: engine.model.weight_bytes(),
        kv_bytes: s.kv_bytes(),
        gpu_bytes: engine.model.weight_bytes() + s.kv_bytes() + s.activation_bytes(),
        decode_kernel_ms: profile,
        prefill_kernel_ms: prefill_profile,
        prefill_profile_tokens: chunk,
        decode_step_cost,
        gemv,
    })
}

/// One row of `bench --streams`: N streams forked from one prompt, decoded together.
#[derive(Clone, Debug, serde::Serialize)]
pub struct StreamsRow {
    pub streams: usize,
    /// Median batched decode step.
    pub step_ms: f64,
    /// Tokens of all streams per second.
    pub tokens_per_s: f64,
    /// KV blocks in use at the end, in bytes (the prompt counted once).
    pub kv_bytes_used: u64,
    /// What N independent caches would hold instead: N·(P + S) tokens.
    pub kv_bytes_unshared: u64,
    /// Bytes a step reads back (each stream's sampled token, or its logits on the CPU path).
    pub readback_bytes_per_step: u64,
    /// Launches one N-row step records (the shared-prefix pass, suffix and merge for N > 1).
    pub launches_per_step: u64,
    /// One step's time by kernel kind, each launch timed alone (up to the LM head's rows).
    pub kernel_ms: KernelProfile,
}

/// Decode step time for each N in `ns`: a `prompt_tokens` prompt prefilled once, forked N
/// ways, then `gen_tokens` batched steps (greedy per stream).
pub fn streams(
    engine: &Engine,
    prompt_tokens: usize,
    gen_tokens: usize,
    ns: &[usize],
) -> Result<Vec<StreamsRow>> {
    let c = &engine.model.config;
    let prompt = synthetic_prompt(engine, prompt_tokens);
    let mut out = Vec::new();
    for &n in ns {
        let block = crate::model::forward::BLOCK_SIZE;
        let slots = prompt_tokens + n * (gen_tokens + 2 * block) + block;
        let mut s = Session::new(engine.model.clone(), slots, engine.options.max_rows)?;
        let first = argmax(&s.forward(&prompt)?);
        let kids = s.fork(s.main, n)?;
        s.release(s.main)?;
        // Streams start from different tokens so they do not stay identical.
        let mut next: Vec<u32> = (0..n)
            .map(|i| (first + i as u32) % c.n_vocab as u32)
            .collect();
        let launched = engine.ctx.stats.snapshot().dispatches;
        let steps = batched_greedy_steps(&mut s, &kids, &mut next, gen_tokens)?;
        let launches = engine.ctx.stats.snapshot().dispatches - launched;
        let step_ms = median(steps);
        // One more step, each launch timed: where an N-row step's time goes.
        let mut kernel_ms = KernelProfile::default();
        if n <= s.lm_rows {
            let rows: Vec<_> = kids.iter().copied().zip(next.iter().copied()).collect();
            s.forward_rows_profiled(&rows, &mut kernel_ms)?;
        }
        let per_token = s.kv_bytes_per_token();
        out.push(StreamsRow {
            streams: n,
            step_ms,
            tokens_per_s: n as f64 / (step_ms / 1e3),
            kv_bytes_used: s.pool.used_blocks() as u64 * block as u64 * per_token,
            kv_bytes_unshared: (n * (prompt_tokens + gen_tokens)) as u64 * per_token,
            readback_bytes_per_step: n as u64 * readback_bytes_per_row(engine),
            launches_per_step: launches / gen_tokens.max(1) as u64,
            kernel_ms,
        });
    }
    Ok(out)
}

/// `bench --attention`: one decode step's attention for N streams over a shared prompt,
/// three ways — the shared-prefix pass over the shared cache, the per-stream kernel over the
/// same shared cache, and the per-stream kernel over per-stream copies of the prompt (a
/// cache without prefix sharing).
#[derive(Clone, Debug, serde::Serialize)]
pub struct AttentionReport {
    pub device: String,
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
    pub streams: usize,
    pub prompt_len: usize,
    pub suffix_len: usize,
    pub shared_prefix_ms: f64,
    pub per_stream_shared_cache_ms: f64,
    pub per_stream_copied_kv_ms: f64,
    /// Cache bytes held: prompt once + suffixes, against the prompt copied per stream.
    pub kv_bytes_shared: u64,
    pub kv_bytes_copied: u64,
}

/// Time the three attention variants (median of `reps`) for `streams` streams with
/// `suffix_len` tokens each after a `prompt_len`-token prompt, one layer of the given shape.
pub fn attention(
    ctx: &crate::gpu::GpuContext,
    (n_head, n_kv_head, head_dim): (usize, usize, usize),
    streams: usize,
    prompt_len: usize,
    suffix_len: usize,
    reps: usize,
) -> Result<AttentionReport, GpuError> {
    use ops::attention::{AttentionPlan, StreamsOverPrompt};
    let shape = (n_head, n_kv_head, head_dim);
    let suffixes = vec![suffix_len; streams];
    let block = crate::model::forward::BLOCK_SIZE;
    let shared = StreamsOverPrompt::new(ctx, shape, prompt_len, &suffixes, block, true, 1);
    let copied = StreamsOverPrompt::new(ctx, shape, prompt_len, &suffixes, block, false, 1);
    let device_plan = AttentionPlan::for_device(ctx);
    let time = |case: &StreamsOverPrompt, plan: AttentionPlan| -> Result<f64, GpuError> {
        let list = case.attention(ctx, plan)?;
        let refs: Vec<_> = list.iter().collect();
        let step = case.step();
        Ok(time_ms(ctx, reps, || ops::run_step(ctx, &refs, &step)))
    };
    let kv_token = (n_kv_head * head_dim * 2 * 2) as u64;
    Ok(AttentionReport {
        device: ctx.describe(),
        n_head,
        n_kv_head,
        head_dim,
        streams,
        prompt_len,
        suffix_len,
        shared_prefix_ms: time(
            &shared,
            AttentionPlan {
                keys_per_split: 64,
                shared_prefix: true,
                flash_prefill: false,
                split_one_stream: true,
                one_stream_slices: 1,
            },
        )?,
        per_stream_shared_cache_ms: time(
            &shared,
            AttentionPlan {
                shared_prefix: false,
                ..device_plan
            },
        )?,
        per_stream_copied_kv_ms: time(
            &copied,
            AttentionPlan {
                shared_prefix: false,
                ..device_plan
            },
        )?,
        kv_bytes_shared: (prompt_len.div_ceil(block)
            + streams * (prompt_len % block + suffix_len).div_ceil(block))
            as u64
            * block as u64
            * kv_token,
        kv_bytes_copied: (streams * (prompt_len + suffix_len).div_ceil(block)) as u64
            * block as u64
            * kv_token,
    })
}

/// One row of `bench --lora-ranks`: decode step time with a rank-`rank` adapter on all seven
/// projections (0 = the base model alone), fused into the int4 matmul and as separate passes.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LoraRow {
    pub rank: usize,
    pub fused_step_ms: f64,
    pub separate_step_ms: f64,
    /// Fused step over the base step, minus one.
    pub fused_overhead: f64,
    pub separate_overhead: f64,
    pub adapter_bytes: u64,
}

/// A random adapter of rank `rank` on every projection (entries small enough to keep the
/// activations sane).
pub fn random_adapter(engine: &Engine, name: &str, rank: usize) -> crate::adapters::LoraAdapter {
    crate::adapters::LoraAdapter::random(
        &engine.model.config,
        name,
        rank,
        &[0, 1, 2, 3, 4, 5, 6],
        1.0,
        0.02,
        rank as u64,
    )
}

/// Median decode step after a `prompt_tokens` prompt, with the session's main stream on
/// adapter `adapter` (index) for decoding.
fn decode_step_ms(
    engine: &Engine,
    apply: crate::adapters::LoraApply,
    adapter: Option<usize>,
    prompt_tokens: usize,
    gen_tokens: usize,
) -> Result<f64> {
    let prompt = synthetic_prompt(engine, prompt_tokens);
    let mut s = engine.session_with(engine.n_ctx(), apply)?;
    let mut next = argmax(&s.forward(&prompt)?);
    s.set_adapter(s.main, adapter)?;
    Ok(median(greedy_steps(&mut s, &mut next, gen_tokens)?))
}

/// `bench --lora-ranks`: base decode step, then each rank fused and separate, all in one
/// run (base measured again last to show drift).
pub fn lora_ranks(
    engine: &Engine,
    prompt_tokens: usize,
    gen_tokens: usize,
    ranks: &[usize],
) -> Result<(f64, f64, Vec<LoraRow>)> {
    use crate::adapters::LoraApply;
    for name in engine.adapter_names() {
        engine.unload_adapter(&name)?;
    }
    let base = decode_step_ms(engine, LoraApply::Fused, None, prompt_tokens, gen_tokens)?;
    let mut rows = Vec::new();
    for &rank in ranks {
        engine.add_adapter(random_adapter(engine, "bench", rank));
        let fused = decode_step_ms(engine, LoraApply::Fused, Some(0), prompt_tokens, gen_tokens)?;
        let separate = decode_step_ms(
            engine,
            LoraApply::Separate,
            Some(0),
            prompt_tokens,
            gen_tokens,
        )?;
        let bytes = engine.adapter_set().map_or(0, |s| s.bytes());
        rows.push(LoraRow {
            rank,
            fused_step_ms: fused,
            separate_step_ms: separate,
            fused_overhead: fused / base - 1.0,
            separate_overhead: separate / base - 1.0,
            adapter_bytes: bytes,
        });
        engine.unload_adapter("bench")?;
    }
    let base_again = decode_step_ms(engine, LoraApply::Fused, None, prompt_tokens, gen_tokens)?;
    Ok((base, base_again, rows))
}

/// `bench --adapter-ttft`: time to first token with the reasoning adapter chosen by the
/// switcher, with the shared prompt KV (one base prefill that also pools for the switcher)
/// against re-encoding the prompt with the adapter after the switcher's base prefill; and
/// the prefill with the adapter on the prompt against the base prefill.
#[derive(Clone, Debug, serde::Serialize)]
pub struct AdapterTtftReport {
    pub prompt_tokens: usize,
    pub rank: usize,
    /// Base prefill with switcher pooling, to first logits (the shared path).
    pub shared_ttft_ms: f64,
    /// Switcher base prefill, then the whole prompt again with the adapter.
    pub reencode_ttft_ms: f64,
    /// Plain base prefill (no pooling).
    pub base_prefill_ms: f64,
    /// Prefill with the adapter applied to the prompt.
    pub adapter_prefill_ms: f64,
    pub switcher_probability: f32,
}

pub fn adapter_ttft(
    engine: &Engine,
    prompt_tokens: usize,
    rank: usize,
    reps: usize,
) -> Result<AdapterTtftReport> {
    use crate::adapters::{LoraApply, Switcher};
    let c = &engine.model.config;
    let d = c.n_embd;
    engine.add_adapter(random_adapter(engine, "reasoning", rank));
    let idx = engine
        .adapter_set()
        .and_then(|s| s.index("reasoning"))
        .ok_or_else(|| anyhow::anyhow!("the benchmark's random adapter did not load"))?;
    // A switcher that always chooses reasoning (bias 10): its cost is what is measured.
    let switcher = Switcher::from_weights(vec![0.01; 8 * d], vec![0.0; 8], vec![1.0; 8], 10.0, 0.5);
    let prompt = synthetic_prompt(engine, prompt_tokens);
    let prefill = |adapter_on_prompt: bool, pooled: bool| -> Result<(f64, f32)> {
        let mut s = engine.session_with(engine.n_ctx(), LoraApply::Fused)?;
        if adapter_on_prompt {
            s.set_adapter(s.main, Some(idx))?;
        }
        let t = Instant::now();
        let p = if pooled {
            let (_, pool) = s.forward_pooled(&prompt, |old, mean| switcher.pool(old, mean))?;
            switcher.probability(&pool)
        } else {
            s.forward(&prompt)?;
            0.0
        };
        Ok((t.elapsed().as_secs_f64() * 1e3, p))
    };
    prefill(true, true)?; // compile every pipeline first
    let (mut shared, mut reencode, mut base, mut adapted) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut prob = 0.0;
    for _ in 0..reps {
        let (t, p) = prefill(false, true)?;
        prob = p;
        shared.push(t);
        let (again, _) = prefill(true, false)?;
        reencode.push(t + again);
        adapted.push(again);
        base.push(prefill(false, false)?.0);
    }
    engine.unload_adapter("reasoning")?;
    Ok(AdapterTtftReport {
        prompt_tokens,
        rank,
        shared_ttft_ms: median(shared),
        reencode_ttft_ms: median(reencode),
        base_prefill_ms: median(base),
        adapter_prefill_ms: median(adapted),
        switcher_probability: prob,
    })
}

/// One row of `bench --prefill-matmul`: a prefill-sized matmul by one path.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PrefillMatmulRow {
    pub matrix: String,
    pub n: usize,
    pub k: usize,
    pub m: usize,
    /// "int8 GEMV path", "f32 GEMM RxC" or "coop TxT RxC" (tensor cores, R×C tiles a
    /// subgroup).
    pub path: String,
    pub ms: f64,
    pub gflop_per_s: f64,
}

/// Prefill-sized matmuls (`m` rows) on random int4 matrices of the model's gate|up and down
/// shapes: the int8-activation path against the f32 GEMM with each register tile and, where
/// the device has cooperative matrices, the tensor-core GEMM with several subgroup tiles,
/// in one run.
/// A kernel the device failed to build or run is an error, not a time.
pub fn prefill_matmul(
    engine: &Engine,
    m: usize,
    tiles: &[(u32, u32)],
    reps: usize,
) -> Result<Vec<PrefillMatmulRow>, crate::gpu::GpuError> {
    let ctx = &engine.ctx;
    let c = &engine.model.config;
    let mut out = Vec::new();
    // The real files keep some tensors at 5-8 bits (int8 here): down as the int8 case.
    for (name, n, k, int8) in [
        ("gate_up", 2 * c.n_ff, c.n_embd, false),
        ("down", c.n_embd, c.n_ff, false),
        ("down.i8", c.n_embd, c.n_ff, true),
    ] {
        let w = if int8 {
            random_int8(ctx, name, n, k)?
        } else {
            random_int4(ctx, name, n, k)?
        };
        let xq = ctx.storage("xq", (m * k * 4) as u64);
        let xs = ctx.storage("xs", (m * k / 32 * 16) as u64);
        let outb = ctx.storage("out", (m * n * 4) as u64);
        let partials = ctx.storage("partials", ops::matmul_int4::partial_bytes(ctx, &w));
        let io = MatmulIo::new(&xq, &xs, &outb, n, &partials);
        let mut paths = vec![(
            "int8 GEMV path".to_string(),
            ops::matmul_int4::matmul_int4(ctx, name, &w, &io)?,
        )];
        let max_area = ops::prefill_gemm::max_tile_area(ctx);
        for &(r, cl) in tiles.iter().filter(|&&(r, cl)| r * cl <= max_area) {
            paths.push((
                format!("f32 GEMM {r}x{cl}"),
                ops::prefill_gemm::gemm(ctx, name, &w, &xq, &io, (r, cl))?,
            ));
        }
        if let Some(shape) = ops::prefill_coop::shape_for_device(ctx) {
            for (rows, cols) in [(1, 1), (2, 2), (2, 4), (4, 2)] {
                let s = ops::prefill_coop::CoopShape {
                    rows,
                    cols,
                    ..shape
                };
                paths.push((
                    format!("coop {0}x{0} {rows}x{cols}", s.tile),
                    ops::prefill_coop::gemm(ctx, name, &w, &xq, &io, s),
                ));
            }
        }
        let step = ops::Step {
            rows: m as u32,
            ..Default::default()
        };
        for (path, list) in &paths {
            let refs: Vec<_> = list.iter().collect();
            // Each list runs whatever path the step would take.
            let ms = time_ms(ctx, reps, || ops::run_forced(ctx, &refs, &step));
            ctx.fault()?;
            let gflop_per_s = 2.0 * (m * n * k) as f64 / (ms / 1e3) / 1e9;
            out.push(PrefillMatmulRow {
                matrix: name.into(),
                n,
                k,
                m,
                path: path.clone(),
                ms,
                gflop_per_s,
            });
        }
    }
    Ok(out)
}
