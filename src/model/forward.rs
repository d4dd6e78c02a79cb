//! The forward pass over a paged KV cache: a [`Session`] owns the activation buffers, the
//! cache's blocks, and the list of kernel launches that is the model's math (written out
//! in `launches.rs`), built once and replayed every step.
//! A [`Session`] holds one main stream; `fork` adds streams that share its prompt blocks,
//! and `forward_rows` advances several streams by one token each in one batched step
//! (`forward_rows_sampled` also samples their next tokens on the GPU, reading back 8 bytes
//! per row instead of the logits). A decoding loop keeps the GPU busy by submitting each
//! step fed the last one's draws before reading them:
//!
//! ```no_run
//! use edgereason::engine::{Engine, EngineOptions};
//! use edgereason::ops::sampling::RowSampling;
//! let engine = Engine::load("smollm2-135m", &EngineOptions::default())?;
//! let mut s = engine.session()?;
//! let logits = s.forward(&engine.encode("Once upon a time")?)?;
//! let greedy = |step| RowSampling { step, ..Default::default() };
//! let first = edgereason::sampling::argmax(&logits);
//! let mut last = s.submit_rows_sampled(&[(s.main, first)], &[greedy(0)])?;
//! for step in 1..32 {
//!     let next = s.submit_fed(&last, &[greedy(step)])?; // queued behind `last`
//!     let (id, _logprob) = s.wait_sampled(last)?[0]; // read while `next` runs
//!     print!("{}", engine.decode(&[id])?);
//!     last = next;
//! }
//! # anyhow::Ok(())
//! ```

use super::launches::{Activations, KvCache, Launches, StepInputs};
use super::GpuModel;
use crate::adapters::{LoraApply, LoraSet};
use crate::gpu::GpuError;
use crate::kv::{BlockCopy, BlockPool, KvError, StreamId};
use crate::ops::sampling::{Draw, RowSampling, SampleRow, Sampled};
use crate::ops::{self, Dispatch, Step};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

/// Errors callers branch on while running a stream.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("context full: {needed} tokens needed, the KV cache holds {n_ctx} (raise --ctx, up to the model's {model_ctx})")]
    ContextFull {
        needed: usize,
        n_ctx: usize,
        model_ctx: usize,
    },
    #[error("token id {id} is outside the vocabulary ({n_vocab})")]
    BadToken { id: u32, n_vocab: usize },
    #[error("{rows} rows in one step; this session takes at most {max}")]
    TooManyRows { rows: usize, max: usize },
    #[error("{rows} rows but {settings} sampling settings: one per row")]
    SamplingRows { rows: usize, settings: usize },
    #[error(
        "a step fed by draws must follow the sampled step that drew them, with no step in between"
    )]
    StaleDraws,
    #[error("adapter {index} is not in this session's adapter set ({loaded} loaded)")]
    NoSuchAdapter { index: usize, loaded: usize },
    #[error(transparent)]
    Kv(#[from] KvError),
    #[error(transparent)]
    Gpu(#[from] crate::gpu::GpuError),
}

/// Time per kernel kind over one or more steps (`bench`).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct KernelProfile {
    pub ms: BTreeMap<String, f64>,
    /// "timestamp queries" or "wall clock per launch".
    pub source: String,
}

/// A callback that sees each prefill chunk's mean final-norm hidden state.
pub type ChunkMean<'a> = dyn FnMut(&[f32]) + 'a;

/// Cache slots per KV block.
pub const BLOCK_SIZE: usize = 16;

/// Whether decoding loops submit each step before reading the last one's draws
/// ([`Session::submit_fed`]): on unless EDGEREASON_PIPELINE=0 (or a tuning file says 0).
pub fn decode_pipelining() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| crate::gpu::tuning::knob("EDGEREASON_PIPELINE").is_none_or(|v| v != "0"))
}

/// Streams over one paged KV cache of `n_ctx` token slots, with activations for up to
/// `max_rows` rows per step. `pos` tokens are in the main stream.
pub struct Session {
    pub model: Arc<GpuModel>,
    pub n_ctx: usize,
    pub max_rows: usize,
    /// Rows of logits one LM-head launch produces (scoring reads them in batches).
    pub lm_rows: usize,
    pub pos: usize,
    /// The stream `forward` and `forward_all` extend.
    pub main: StreamId,
    pub pool: BlockPool,
    inputs: StepInputs,
    logits: wgpu::Buffer, // [lm_rows][n_vocab]
    kv: KvCache,
    block_scratch: wgpu::Buffer,
    acts: Activations,
    /// Transformer body: embedding, then every layer.
    body: Vec<(usize, Dispatch)>,
    /// Final norm + LM head over a row range.
    head: Vec<Dispatch>,
    /// Final norm as f32 over every row of a step into `hidden` (switcher, verifier).
    final_hidden: Dispatch,
    hidden: wgpu::Buffer, // [max_rows][n_embd]
    /// Adapters this session's rows can use, and each stream's choice (index into the set).
    pub lora: Option<Arc<LoraSet>>,
    stream_adapter: std::collections::HashMap<StreamId, usize>,
    /// Timestamps bracketing each step's pass, and their resolve buffer (`time_steps`).
    step_timer: Option<(wgpu::QuerySet, wgpu::Buffer)>,
    /// [`set_submit_parts`](Self::set_submit_parts)'s override.
    submit_parts: Option<usize>,
    /// Copy-on-write block copies for the next step's command buffer.
    pending_copies: std::cell::RefCell<Vec<BlockCopy>>,
    /// Token sampling over the logits rows ([`forward_rows_sampled`](Self::forward_rows_sampled)).
    sampling: Dispatch,
    sample_rows: wgpu::Buffer, // [lm_rows] ops::sampling::SampleRow
    sampled: wgpu::Buffer,     // [lm_rows] (id, log-prob)
    sampled_top: wgpu::Buffer, // [lm_rows][TOP_SLOTS] (id, log-prob)
    /// Sampled steps submitted so far (each [`SampledStep`]'s number).
    sampled_steps: u64,
    /// The sampled step whose draws are the token buffer's contents, while no other step
    /// has written it: what [`submit_fed`](Self::submit_fed) may follow.
    draws_fed_next: Option<u64>,
}

/// A sampled decode step on the GPU's queue whose draws the host has not read yet
/// ([`Session::submit_rows_sampled`], [`Session::submit_fed`]); [`Session::wait_sampled`]
/// reads them.
#[must_use = "a submitted step's draws are read by Session::wait_sampled"]
pub struct SampledStep {
    number: u64,
    streams: Vec<StreamId>,
    read: crate::gpu::PendingRead<Sampled>,
    /// The rows' most likely tokens, where some row asked (with how many each asked).
    top: Option<(crate::gpu::PendingRead<u32>, Vec<u32>)>,
}

/// What one [`Session::warm_up`] call did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WarmUp {
    /// Pipelines built by this call (variants another launch had built are looked up).
    pub compiled: u64,
    /// Launch variants not looked up yet: 0 once no step of the session will compile.
    pub left: usize,
}

impl SampledStep {
    /// The stream of each row, in row order.
    pub fn streams(&self) -> &[StreamId] {
        &self.streams
    }
}

impl Session {
    pub fn new(model: Arc<GpuModel>, n_ctx: usize, max_rows: usize) -> Result<Self, GpuError> {
        Self::with_adapters(model, n_ctx, max_rows, None, LoraApply::Fused)
    }

    /// A session whose rows can use the adapters of `lora` (each stream picks one with
    /// [`set_adapter`](Self::set_adapter), or none), applied as `apply` says. A cache
    /// larger than the device can bind is refused before anything is allocated; an
    /// allocation the device cannot make is an error, not a fault.
    pub fn with_adapters(
        model: Arc<GpuModel>,
        n_ctx: usize,
        max_rows: usize,
        lora: Option<Arc<LoraSet>>,
        apply: LoraApply,
    ) -> Result<Self, GpuError> {
        let ctx = model.ctx.clone();
        let c = &model.config;
        let n_blocks = n_ctx.div_ceil(BLOCK_SIZE) as u64;
        let kv_dim = (c.n_kv_head * c.head_dim) as u64;
        let slots = n_blocks * BLOCK_SIZE as u64;
        let hint = "; lower --ctx, --best-of or --max-tokens (or the server's --kv-tokens)";
        let what = format!("the KV cache ({slots} token slots, one layer's K)");
        ctx.check_binding(&what, slots * kv_dim * 2, hint)?;
        let what = format!("the block tables ({max_rows} rows × {n_blocks} blocks)");
        ctx.check_binding(&what, max_rows as u64 * n_blocks * 4, hint)?;
        let what = format!("a session of {slots} KV slots and {max_rows} rows per step");
        ctx.checked(&what, || {
            Self::allocate(model, n_ctx, max_rows, lora, apply)
        })?
    }

    fn allocate(
        model: Arc<GpuModel>,
        n_ctx: usize,
        max_rows: usize,
        lora: Option<Arc<LoraSet>>,
        apply: LoraApply,
    ) -> Result<Self, GpuError> {
        let lora = lora.filter(|l| !l.adapters.is_empty());
        let ctx = model.ctx.clone();
        let c = &model.config;
        let lm_rows = 16.min(max_rows);
        let n_blocks = n_ctx.div_ceil(BLOCK_SIZE);
        let inputs = step_inputs(&ctx, max_rows, n_blocks);
        let kv = kv_cache(&model, n_blocks);
        let acts = Activations::new(&model, max_rows, lora.as_deref());
        let logits = ctx.storage("logits", lm_rows as u64 * c.n_vocab as u64 * 4);
        let hidden = ctx.storage("hidden", max_rows as u64 * c.n_embd as u64 * 4);
        let launches = Launches::new(&model, &acts, &inputs, &kv, lora.as_deref(), apply);
        let (body, head) = (launches.body()?, launches.head(&logits)?);
        let final_hidden = final_hidden(&model, &acts, &hidden);
        let (sample_rows, sampled, sampled_top, sampling) =
            gpu_sampling(&ctx, &logits, c.n_vocab, lm_rows, &inputs.tokens)?;
        let mut pool = BlockPool::new(n_blocks, BLOCK_SIZE);
        let main = pool.create();
        let kv_dim = c.n_kv_head * c.head_dim;
        Ok(Session {
            block_scratch: ctx.storage("kv.block_copy", (BLOCK_SIZE * kv_dim * 2) as u64),
            model,
            n_ctx,
            max_rows,
            lm_rows,
            pos: 0,
            main,
            pool,
            inputs,
            logits,
            kv,
            acts,
            body,
            head,
            final_hidden,
            hidden,
            lora,
            stream_adapter: Default::default(),
            step_timer: None,
            submit_parts: None,
            pending_copies: Default::default(),
            sampling,
            sample_rows,
            sampled,
            sampled_top,
            sampled_steps: 0,
            draws_fed_next: None,
        })
    }

    /// Let stream `s`'s next rows use adapter `index` of this session's set, or none.
    /// (Masked LoRA: a prompt is encoded with none, the generated tokens with the adapter,
    /// so the prompt's KV cache is the base model's whatever is decoded after it.)
    pub fn set_adapter(&mut self, s: StreamId, index: Option<usize>) -> Result<(), ForwardError> {
        match index {
            None => {
                self.stream_adapter.remove(&s);
            }
            Some(i) => {
                let loaded = self.lora.as_ref().map_or(0, |l| l.adapters.len());
                if i >= loaded {
                    return Err(ForwardError::NoSuchAdapter { index: i, loaded });
                }
                self.stream_adapter.insert(s, i);
            }
        }
        Ok(())
    }

    /// Layer `l`'s whole K and V cache as f16 bits (tests compare caches bit for bit).
    pub fn read_kv(&self, l: usize) -> Result<(Vec<u16>, Vec<u16>), ForwardError> {
        let ctx = &self.model.ctx;
        let n = (self.kv.k[l].size() / 2) as usize;
        Ok((
            ctx.read(&self.kv.k[l], 0, n)?,
            ctx.read(&self.kv.v[l], 0, n)?,
        ))
    }

    /// The adapter stream `s` uses, if any.
    pub fn adapter(&self, s: StreamId) -> Option<usize> {
        self.stream_adapter.get(&s).copied()
    }

    /// Bytes of activation buffers (residual, int8 blocks, qkv, ffn, logits, tables).
    pub fn activation_bytes(&self) -> u64 {
        let i = &self.inputs;
        [&self.logits, &i.tables, &i.tokens, &i.positions, &i.slots]
            .iter()
            .map(|b| b.size())
            .sum::<u64>()
            + self.acts.bytes()
    }

    /// Bytes of the KV cache (all blocks, used or not).
    pub fn kv_bytes(&self) -> u64 {
        self.kv.k.iter().chain(&self.kv.v).map(|b| b.size()).sum()
    }

    /// Bytes of KV cache one token slot takes (all layers, K and V).
    pub fn kv_bytes_per_token(&self) -> u64 {
        let c = &self.model.config;
        (2 * c.n_layer * c.n_kv_head * c.head_dim * 2) as u64
    }

    /// `n` streams sharing every block of `s` (its prompt): no KV is copied. They start
    /// with `s`'s adapter choice.
    pub fn fork(&mut self, s: StreamId, n: usize) -> Result<Vec<StreamId>, ForwardError> {
        let kids = self.pool.fork(s, n)?;
        if let Some(a) = self.adapter(s) {
            kids.iter().for_each(|&k| {
                self.stream_adapter.insert(k, a);
            });
        }
        Ok(kids)
    }

    /// A new, empty stream (no adapter).
    pub fn create_stream(&mut self) -> StreamId {
        self.pool.create()
    }

    /// A new stream holding the first `len` tokens of `s`'s cache (shared blocks, no copy):
    /// a later prompt that starts the same way continues from there.
    pub fn fork_prefix(&mut self, s: StreamId, len: usize) -> Result<StreamId, ForwardError> {
        Ok(self.pool.fork_prefix(s, len)?)
    }

    /// End stream `s`, returning the blocks only it held.
    pub fn release(&mut self, s: StreamId) -> Result<(), ForwardError> {
        self.stream_adapter.remove(&s);
        Ok(self.pool.release(s)?)
    }

    fn check(&self, tokens: &[u32]) -> Result<(), ForwardError> {
        let c = &self.model.config;
        if let Some(&id) = tokens.iter().find(|&&t| t as usize >= c.n_vocab) {
            return Err(ForwardError::BadToken {
                id,
                n_vocab: c.n_vocab,
            });
        }
        if self.pos + tokens.len() > self.n_ctx {
            return Err(ForwardError::ContextFull {
                needed: self.pos + tokens.len(),
                n_ctx: self.n_ctx,
                model_ctx: c.n_ctx,
            });
        }
        Ok(())
    }

    /// As [`prepare_rows`](Self::prepare_rows) for rows that encode a prompt (one stream's
    /// next tokens): the step takes the prompt path whatever its row count, so a prompt's
    /// cache is the same however it is chunked or how much of it came from a cached prefix.
    fn prepare_prompt_rows(&mut self, rows: &[(StreamId, u32)]) -> Result<Step, ForwardError> {
        Ok(Step {
            prompt: true,
            ..self.prepare_rows(rows)?
        })
    }

    /// Slots, tables and tokens of `rows` for the next step (see [`upload_rows`](Self::upload_rows)).
    fn prepare_rows(&mut self, rows: &[(StreamId, u32)]) -> Result<Step, ForwardError> {
        let started = Instant::now();
        let step = self.upload_rows(rows)?;
        let toks: Vec<u32> = rows.iter().map(|r| r.1).collect();
        let ctx = &self.model.ctx;
        ctx.queue
            .write_buffer(&self.inputs.tokens, 0, bytemuck::cast_slice(&toks));
        self.draws_fed_next = None;
        ctx.stats.host_encode(started.elapsed());
        Ok(step)
    }

    /// As [`prepare_rows`](Self::prepare_rows) for rows whose tokens are already in the
    /// step's token buffer: the draws the last sampled step wrote there, row for row.
    fn prepare_fed_rows(&mut self, streams: &[StreamId]) -> Result<Step, ForwardError> {
        let started = Instant::now();
        let rows: Vec<(StreamId, u32)> = streams.iter().map(|&s| (s, 0)).collect();
        let step = self.upload_rows(&rows)?;
        self.model.ctx.stats.host_encode(started.elapsed());
        Ok(step)
    }

    /// Reserve cache slots for `rows` (stream, token) pairs — consecutive rows of one stream
    /// take consecutive positions — copy any shared block that is about to be written
    /// (copy-on-write), and upload positions, slots and block tables (the callers put the
    /// tokens in place). Returns the step: its rows, longest key count and shared-prefix
    /// length.
    fn upload_rows(&mut self, rows: &[(StreamId, u32)]) -> Result<Step, ForwardError> {
        let mut positions = Vec::with_capacity(rows.len());
        let mut copies: Vec<BlockCopy> = Vec::new();
        // Count per stream first so a stream's rows are appended in one go.
        let mut counts: Vec<(StreamId, usize)> = Vec::new();
        for &(s, _) in rows {
            match counts.iter_mut().find(|(t, _)| *t == s) {
                Some((_, n)) => *n += 1,
                None => counts.push((s, 1)),
            }
        }
        let mut start = std::collections::HashMap::new();
        for &(s, n) in &counts {
            start.insert(s, self.pool.len(s)?);
            copies.extend(self.pool.append(s, n)?);
        }
        let mut slots = Vec::with_capacity(rows.len());
        let mut tables = vec![0u32; rows.len() * self.inputs.max_blocks];
        for (i, &(s, _)) in rows.iter().enumerate() {
            // Every row's stream was counted above.
            let p = start.get_mut(&s).ok_or(KvError::UnknownStream(s.0))?;
            positions.push(*p as u32);
            slots.push(self.pool.slot(s, *p)?);
            *p += 1;
            let t = self.pool.table(s)?;
            tables[i * self.inputs.max_blocks..i * self.inputs.max_blocks + t.len()]
                .copy_from_slice(t);
        }
        let ctx = &self.model.ctx;
        // Copied at the head of the step's own command buffer (no submission of their own).
        self.pending_copies.borrow_mut().extend(copies);
        ctx.queue
            .write_buffer(&self.inputs.positions, 0, bytemuck::cast_slice(&positions));
        ctx.queue
            .write_buffer(&self.inputs.slots, 0, bytemuck::cast_slice(&slots));
        ctx.queue
            .write_buffer(&self.inputs.tables, 0, bytemuck::cast_slice(&tables));
        // Each row's adapter as the LoRA kernels read it: (rank, rank offset), rank 0 = none.
        let mut adapters = false;
        if let Some(set) = &self.lora {
            let per_row: Vec<[u32; 2]> = rows
                .iter()
                .map(|(s, _)| match self.stream_adapter.get(s) {
                    Some(&a) => {
                        adapters = true;
                        [set.slots[a].0, set.slots[a].1]
                    }
                    None => [0, 0],
                })
                .collect();
            ctx.queue
                .write_buffer(&self.acts.lora_rows, 0, bytemuck::cast_slice(&per_row));
        }
        // Keys all rows read from the very same blocks (a forked prompt), and attend to.
        let first = self.pool.table(rows[0].0)?;
        let mut shared_blocks = first.len();
        for &(s, _) in &rows[1..] {
            let t = self.pool.table(s)?;
            shared_blocks =
                shared_blocks.min(first.iter().zip(t).take_while(|(a, b)| a == b).count());
        }
        let min_keys = positions.iter().min().map_or(0, |p| p + 1);
        let shared_len = ((shared_blocks * BLOCK_SIZE) as u32).min(min_keys);
        let one_stream = rows.iter().all(|r| r.0 == rows[0].0);
        Ok(Step {
            rows: rows.len() as u32,
            row0: 0,
            kv_len: positions.iter().max().map_or(0, |p| p + 1),
            shared_len,
            adapters,
            one_stream,
            prompt: false,
        })
    }

    fn main_rows(&self, tokens: &[u32]) -> Vec<(StreamId, u32)> {
        tokens.iter().map(|&t| (self.main, t)).collect()
    }

    /// Append `tokens` to stream `s` (any stream, not only `main`), leaving the logits after
    /// the last one on the GPU for [`sample_last_logits`](Self::sample_last_logits): a
    /// prompt, or one chunk of it, as a server interleaves prompts with other streams'
    /// decoding. `on_chunk_mean`, if given, sees the mean final-norm hidden state of each
    /// chunk of `max_rows` tokens (the switcher's features; a read-back per chunk).
    pub fn prefill(
        &mut self,
        s: StreamId,
        tokens: &[u32],
        mut on_chunk_mean: Option<&mut ChunkMean>,
    ) -> Result<(), ForwardError> {
        self.check_stream(s, tokens)?;
        let d = self.model.config.n_embd;
        let n_chunks = tokens.len().div_ceil(self.max_rows);
        for (i, chunk) in tokens.chunks(self.max_rows).enumerate() {
            let rows: Vec<_> = chunk.iter().map(|&t| (s, t)).collect();
            let step = self.prepare_prompt_rows(&rows)?;
            let n = chunk.len() as u32;
            let (pool, last) = (on_chunk_mean.is_some(), i + 1 == n_chunks);
            self.record_step_then(&step, |pass, ctx| {
                if pool {
                    self.final_hidden.record(ctx, pass, n, 0);
                }
                if last {
                    self.head.iter().for_each(|d| d.record(ctx, pass, 1, n - 1));
                }
            });
            if let Some(f) = on_chunk_mean.as_mut() {
                let h: Vec<f32> = self.model.ctx.read(&self.hidden, 0, chunk.len() * d)?;
                let mut mean = vec![0f32; d];
                h.chunks(d)
                    .for_each(|row| mean.iter_mut().zip(row).for_each(|(m, v)| *m += v));
                mean.iter_mut().for_each(|m| *m /= chunk.len() as f32);
                f(&mean);
            }
        }
        if s == self.main {
            self.pos = self.pool.len(s)?;
        }
        Ok(())
    }

    fn check_stream(&self, s: StreamId, tokens: &[u32]) -> Result<(), ForwardError> {
        let c = &self.model.config;
        if let Some(&id) = tokens.iter().find(|&&t| t as usize >= c.n_vocab) {
            return Err(ForwardError::BadToken {
                id,
                n_vocab: c.n_vocab,
            });
        }
        let needed = self.pool.len(s)? + tokens.len();
        if needed > self.n_ctx.min(c.n_ctx) {
            return Err(ForwardError::ContextFull {
                needed,
                n_ctx: self.n_ctx,
                model_ctx: c.n_ctx,
            });
        }
        Ok(())
    }

    /// Append `tokens` to the stream and return the logits after the last one.
    pub fn forward(&mut self, tokens: &[u32]) -> Result<Vec<f32>, ForwardError> {
        Ok(self
            .forward_chunks(tokens, None::<fn(Option<Vec<f32>>, &[f32]) -> Vec<f32>>)?
            .0)
    }

    /// As [`forward`](Self::forward), also pooling the final-norm hidden states of the
    /// tokens: each prefill chunk's mean folded in by `pool(pooled so far, chunk mean)` (the
    /// switcher's moving average). Costs one f32 norm and a read-back per chunk.
    pub fn forward_pooled(
        &mut self,
        tokens: &[u32],
        pool: impl Fn(Option<Vec<f32>>, &[f32]) -> Vec<f32>,
    ) -> Result<(Vec<f32>, Vec<f32>), ForwardError> {
        let (logits, pooled) = self.forward_chunks(tokens, Some(pool))?;
        Ok((logits, pooled.unwrap_or_default()))
    }

    fn forward_chunks(
        &mut self,
        tokens: &[u32],
        pool: Option<impl Fn(Option<Vec<f32>>, &[f32]) -> Vec<f32>>,
    ) -> Result<(Vec<f32>, Option<Vec<f32>>), ForwardError> {
        self.check(tokens)?;
        let mut pooled = None;
        let mut fold = |mean: &[f32]| {
            if let Some(pool) = &pool {
                pooled = Some(pool(pooled.take(), mean));
            }
        };
        let on_chunk: Option<&mut ChunkMean> = match pool.is_some() {
            true => Some(&mut fold),
            false => None,
        };
        self.prefill(self.main, tokens, on_chunk)?;
        let logits = self
            .model
            .ctx
            .read(&self.logits, 0, self.model.config.n_vocab)?;
        Ok((logits, pooled))
    }

    /// Advance streams by `rows` (a stream may take several consecutive rows) and return
    /// every row's final-norm hidden state instead of logits (the verifier's features).
    pub fn hidden_rows(&mut self, rows: &[(StreamId, u32)]) -> Result<Vec<Vec<f32>>, ForwardError> {
        let n_vocab = self.model.config.n_vocab;
        if let Some(&(_, id)) = rows.iter().find(|r| r.1 as usize >= n_vocab) {
            return Err(ForwardError::BadToken { id, n_vocab });
        }
        if rows.len() > self.max_rows {
            return Err(ForwardError::TooManyRows {
                rows: rows.len(),
                max: self.max_rows,
            });
        }
        let step = self.prepare_rows(rows)?;
        self.record_step_then(&step, |pass, ctx| {
            self.final_hidden.record(ctx, pass, step.rows, 0);
        });
        if rows.iter().any(|r| r.0 == self.main) {
            self.pos = self.pool.len(self.main)?;
        }
        let d = self.model.config.n_embd;
        let h: Vec<f32> = self.model.ctx.read(&self.hidden, 0, rows.len() * d)?;
        Ok(h.chunks(d).map(|r| r.to_vec()).collect())
    }

    /// Append `tokens` and hand the logits after every one of them to `each(i, logits)`
    /// (teacher-forced scoring).
    pub fn forward_all(
        &mut self,
        tokens: &[u32],
        mut each: impl FnMut(usize, &[f32]),
    ) -> Result<(), ForwardError> {
        self.check(tokens)?;
        let ctx = self.model.ctx.clone();
        let n_vocab = self.model.config.n_vocab;
        for (ci, chunk) in tokens.chunks(self.max_rows).enumerate() {
            let step = self.prepare_prompt_rows(&self.main_rows(chunk))?;
            self.record_step_then(&step, |_, _| {});
            let mut r0 = 0;
            while r0 < chunk.len() {
                let n = (chunk.len() - r0).min(self.lm_rows);
                self.record_submit(|pass, ctx| {
                    self.head
                        .iter()
                        .for_each(|d| d.record(ctx, pass, n as u32, r0 as u32))
                });
                let logits: Vec<f32> = ctx.read(&self.logits, 0, n * n_vocab)?;
                for j in 0..n {
                    each(
                        ci * self.max_rows + r0 + j,
                        &logits[j * n_vocab..(j + 1) * n_vocab],
                    );
                }
                r0 += n;
            }
            self.pos += chunk.len();
        }
        Ok(())
    }

    /// Record one compute pass with `f` and submit it (see [`record_parts`](Self::record_parts)).
    fn record_submit(&self, f: impl FnOnce(&mut wgpu::ComputePass<'_>, &crate::gpu::GpuContext)) {
        let mut f = Some(f);
        self.record_parts(1, |_, pass, ctx| {
            if let Some(f) = f.take() {
                f(pass, ctx)
            }
        });
    }

    /// The body's launches for `step`, then `tail` (head, sampling, pooling), submitted in
    /// [`submit_parts`](Self::submit_parts) command buffers split at layer boundaries, so the
    /// GPU runs the first layers while the host still records the rest (recording was a
    /// quarter of a decode step's wall time on an H200).
    fn record_step_then(
        &self,
        step: &Step,
        tail: impl FnOnce(&mut wgpu::ComputePass<'_>, &crate::gpu::GpuContext),
    ) {
        let (parts, n_layer) = (self.submit_parts(), self.model.config.n_layer);
        let mut tail = Some(tail);
        self.record_parts(parts, |part, pass, ctx| {
            let layers = part * n_layer / parts..(part + 1) * n_layer / parts;
            self.body
                .iter()
                .filter(|(l, _)| layers.contains(l))
                .for_each(|(_, d)| d.record_step(ctx, pass, step));
            if part + 1 == parts {
                if let Some(t) = tail.take() {
                    t(pass, ctx)
                }
            }
        });
    }

    /// Command buffers (and compute passes) a step is submitted in, at most one per layer:
    /// 4 on GPUs, 1 on CPU drivers (where host and "GPU" share the cores); the session's
    /// [`set_submit_parts`](Self::set_submit_parts), else EDGEREASON_SUBMIT_PARTS=N,
    /// overrides. H200 through Vulkan, Qwen2.5-0.5B shapes, 512-token prompt
    /// (`tools/gpu_check.sh`, 2026-12-04): 1 part 257-272 tok/s decode, 2 304, 4 307, 8 314.
    pub fn submit_parts(&self) -> usize {
        static PARTS: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
        let env = *PARTS.get_or_init(|| {
            crate::gpu::tuning::knob("EDGEREASON_SUBMIT_PARTS").and_then(|v| v.parse().ok())
        });
        let cpu = self.model.ctx.is_cpu();
        let parts = self.submit_parts.or(env).unwrap_or(if cpu { 1 } else { 4 });
        parts.clamp(1, self.model.config.n_layer.max(1))
    }

    /// Submit each step in `parts` command buffers (`None`: the default, see
    /// [`submit_parts`](Self::submit_parts)). The results are the same whatever the count.
    pub fn set_submit_parts(&mut self, parts: Option<usize>) {
        self.submit_parts = parts;
    }

    /// Record `parts` compute passes with `f(part, ..)`, each in its own command buffer,
    /// submitted as soon as it is recorded; their host time goes to the context's stats,
    /// and with [`time_steps`](Self::time_steps) on, the first pass's start and the last
    /// one's end are GPU timestamps.
    fn record_parts(
        &self,
        parts: usize,
        mut f: impl FnMut(usize, &mut wgpu::ComputePass<'_>, &crate::gpu::GpuContext),
    ) {
        let ctx = &self.model.ctx;
        let t = Instant::now();
        for part in 0..parts {
            let last = part + 1 == parts;
            let mut enc = ctx.device.create_command_encoder(&Default::default());
            if part == 0 {
                self.encode_block_copies(&mut enc);
            }
            {
                let mut pass = match &self.step_timer {
                    Some((set, _)) if part == 0 || last => {
                        ctx.stats.pass();
                        enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                            label: None,
                            timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                                query_set: set,
                                beginning_of_pass_write_index: (part == 0).then_some(0),
                                end_of_pass_write_index: last.then_some(1),
                            }),
                        })
                    }
                    _ => ctx.compute_pass(&mut enc),
                };
                f(part, &mut pass, ctx);
            }
            if let (Some((set, resolved)), true) = (&self.step_timer, last) {
                enc.resolve_query_set(set, 0..2, resolved, 0);
            }
            ctx.submit(enc);
        }
        ctx.stats.host_encode(t.elapsed());
    }

    /// Encode the copy-on-write block copies `prepare_rows` queued (before the step's pass).
    fn encode_block_copies(&self, enc: &mut wgpu::CommandEncoder) {
        let c = &self.model.config;
        let row_bytes = (BLOCK_SIZE * c.n_kv_head * c.head_dim * 2) as u64;
        for copy in self.pending_copies.borrow_mut().drain(..) {
            // A buffer cannot be both source and destination of one copy: go through scratch.
            for cache in self.kv.k.iter().chain(&self.kv.v) {
                enc.copy_buffer_to_buffer(
                    cache,
                    copy.src as u64 * row_bytes,
                    &self.block_scratch,
                    0,
                    row_bytes,
                );
                enc.copy_buffer_to_buffer(
                    &self.block_scratch,
                    0,
                    cache,
                    copy.dst as u64 * row_bytes,
                    row_bytes,
                );
            }
        }
    }

    /// Bracket every step's pass with GPU timestamps (where the adapter has them) so
    /// [`last_step_gpu_ms`](Self::last_step_gpu_ms) can report it (`bench`).
    pub fn time_steps(&mut self, on: bool) {
        let ctx = &self.model.ctx;
        self.step_timer =
            (on && ctx.features.contains(wgpu::Features::TIMESTAMP_QUERY)).then(|| {
                let set = ctx.device.create_query_set(&wgpu::QuerySetDescriptor {
                    label: Some("step.timestamps"),
                    ty: wgpu::QueryType::Timestamp,
                    count: 2,
                });
                let resolved = ctx.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("step.timestamps.resolve"),
                    size: 16,
                    usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                    mapped_at_creation: false,
                });
                (set, resolved)
            });
    }

    /// GPU time of the last step's pass, if [`time_steps`](Self::time_steps) is on and the
    /// adapter has timestamp queries.
    pub fn last_step_gpu_ms(&self) -> Result<Option<f64>, ForwardError> {
        let Some((_, resolved)) = &self.step_timer else {
            return Ok(None);
        };
        let ctx = &self.model.ctx;
        let ticks: Vec<u64> = ctx.read(resolved, 0, 2)?;
        Ok(Some(
            ticks[1].saturating_sub(ticks[0]) as f64 * ctx.queue.get_timestamp_period() as f64
                / 1e6,
        ))
    }

    /// Run one prompt chunk of `tokens` for the main stream, each launch timed on its own
    /// (the head over the last row, and the greedy GPU sampling launch unless
    /// `EDGEREASON_CPU_SAMPLING=1`), and add each kernel kind's time to `profile`; returns
    /// the last row's logits. With timestamp queries (most adapters, lavapipe included)
    /// every launch gets its own pass with GPU timestamps at its start and end, all in one
    /// submission; without them each launch is submitted and waited for alone and wall
    /// time is taken (slower, and includes submission overhead). For `bench`.
    pub fn forward_profiled(
        &mut self,
        tokens: &[u32],
        profile: &mut KernelProfile,
    ) -> Result<Vec<f32>, ForwardError> {
        self.check(tokens)?;
        if tokens.len() > self.max_rows {
            return Err(ForwardError::TooManyRows {
                rows: tokens.len(),
                max: self.max_rows,
            });
        }
        let step = self.prepare_prompt_rows(&self.main_rows(tokens))?;
        self.profile_step(step, profile)?;
        self.pos += tokens.len();
        let n_vocab = self.model.config.n_vocab;
        Ok(self.model.ctx.read(&self.logits, 0, n_vocab)?)
    }

    /// As [`forward_profiled`](Self::forward_profiled) for a decode step: each stream of
    /// `rows` takes its next token, the decode kernels run (splits and all), and the head
    /// and sampling cover every row. Returns each row's logits.
    pub fn forward_rows_profiled(
        &mut self,
        rows: &[(StreamId, u32)],
        profile: &mut KernelProfile,
    ) -> Result<Vec<Vec<f32>>, ForwardError> {
        self.check_rows(rows)?;
        let step = self.prepare_rows(rows)?;
        self.profile_step(step, profile)?;
        if rows.iter().any(|r| r.0 == self.main) {
            self.pos = self.pool.len(self.main)?;
        }
        let n_vocab = self.model.config.n_vocab;
        let logits: Vec<f32> = self.model.ctx.read(&self.logits, 0, rows.len() * n_vocab)?;
        Ok(logits.chunks(n_vocab).map(|r| r.to_vec()).collect())
    }

    /// Time each launch of a prepared step (greedy sampling rows included).
    fn profile_step(
        &mut self,
        step: Step,
        profile: &mut KernelProfile,
    ) -> Result<(), ForwardError> {
        let ctx = self.model.ctx.clone();
        let head_rows = if step.prompt { 1 } else { step.rows };
        self.write_sample_rows((0..head_rows).map(|r| SampleRow {
            logits_row: r,
            ..Default::default()
        }));
        self.draws_fed_next = None;
        let launches = self.profiled_launches(step, head_rows);
        ctx.wait();
        if ctx.features.contains(wgpu::Features::TIMESTAMP_QUERY) {
            self.profile_with_timestamps(&launches, profile)?;
        } else {
            self.profile_wall_clock(&launches, profile);
        }
        Ok(())
    }

    /// Every launch a step makes, each with the step it records: the body over all rows,
    /// the head over the last `head_rows` rows, and the sampling launch over them unless
    /// sampling is on the CPU.
    fn profiled_launches(&self, step: Step, head_rows: u32) -> Vec<(&Dispatch, Step)> {
        let head = Step {
            rows: head_rows,
            row0: step.rows - head_rows,
            kv_len: step.kv_len,
            ..Default::default()
        };
        self.body
            .iter()
            .map(|(_, d)| (d, step))
            .chain(self.head.iter().map(|d| (d, head)))
            .chain((!crate::sampling::cpu_sampling()).then_some((
                &self.sampling,
                Step {
                    rows: head_rows,
                    ..Default::default()
                },
            )))
            .filter(|(d, step)| d.launches_in(step))
            .collect()
    }

    /// Every launch a step of this session can record: the body, the head, the final
    /// hidden state, the sampler.
    fn launches(&self) -> impl Iterator<Item = &Dispatch> {
        let body = self.body.iter().map(|(_, d)| d);
        body.chain(&self.head)
            .chain([&self.final_hidden, &self.sampling])
    }

    /// Launch variants no step or warm-up has looked up yet (what
    /// [`warm_up`](Self::warm_up) would build, less those another launch already built).
    pub fn cold_pipelines(&self) -> usize {
        let ctx = &self.model.ctx;
        self.launches()
            .map(|d| d.cold_pipelines(ctx, self.max_rows as u32).len())
            .sum()
    }

    /// Build the pipelines this session's steps can take (every launch's variants for
    /// steps of 1..=`max_rows` rows) before a step needs them: a step that meets a
    /// variant for the first time stops to compile it (tens of ms on a GPU, up to a second
    /// on lavapipe), which a server would show as one request's stall. Builds until
    /// `budget` is spent, and at least one pipeline a call, so a caller can warm up in
    /// slices between other work (the server's scheduler does, while idle).
    ///
    /// ```no_run
    /// # fn main() -> anyhow::Result<()> {
    /// use edgereason::engine::{Engine, EngineOptions};
    /// let engine = Engine::load("smollm2-135m", &EngineOptions::default())?;
    /// let session = engine.session()?;
    /// let done = session.warm_up(std::time::Duration::MAX);
    /// assert_eq!(done.left, 0);
    /// # Ok(())
    /// # }
    /// ```
    pub fn warm_up(&self, budget: std::time::Duration) -> WarmUp {
        let ctx = &self.model.ctx;
        let started = Instant::now();
        let compiled = || ctx.stats.snapshot().pipelines_compiled;
        let before = compiled();
        let mut left = 0;
        for d in self.launches() {
            for define in d.cold_pipelines(ctx, self.max_rows as u32) {
                if compiled() > before && started.elapsed() >= budget {
                    left += 1;
                } else {
                    d.warm(ctx, define);
                }
            }
        }
        WarmUp {
            compiled: compiled() - before,
            left,
        }
    }

    /// Each launch in its own pass with GPU timestamps at its start and end, all in one
    /// submission; adds each kernel kind's time to `profile`.
    fn profile_with_timestamps(
        &self,
        launches: &[(&Dispatch, Step)],
        profile: &mut KernelProfile,
    ) -> Result<(), ForwardError> {
        let ctx = &self.model.ctx;
        profile.source = "timestamp queries".into();
        let n = launches.len() as u32;
        let set = ctx.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("profile"),
            ty: wgpu::QueryType::Timestamp,
            count: 2 * n,
        });
        let resolved = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("profile.resolve"),
            size: 16 * n as u64,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let mut enc = ctx.device.create_command_encoder(&Default::default());
        self.encode_block_copies(&mut enc);
        for (i, (d, step)) in launches.iter().enumerate() {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: None,
                timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                    query_set: &set,
                    beginning_of_pass_write_index: Some(2 * i as u32),
                    end_of_pass_write_index: Some(2 * i as u32 + 1),
                }),
            });
            d.record_step(ctx, &mut pass, step);
        }
        enc.resolve_query_set(&set, 0..2 * n, &resolved, 0);
        ctx.submit(enc);
        let ticks: Vec<u64> = ctx.read(&resolved, 0, 2 * n as usize)?;
        let ns_per_tick = ctx.queue.get_timestamp_period() as f64;
        for (i, (d, _)) in launches.iter().enumerate() {
            let ms = ticks[2 * i + 1].saturating_sub(ticks[2 * i]) as f64 * ns_per_tick / 1e6;
            *profile.ms.entry(kernel_kind(d)).or_default() += ms;
        }
        Ok(())
    }

    /// Each launch submitted and waited for alone, timed by the wall clock (no timestamp
    /// queries); adds each kernel kind's time to `profile`.
    fn profile_wall_clock(&self, launches: &[(&Dispatch, Step)], profile: &mut KernelProfile) {
        let ctx = &self.model.ctx;
        profile.source = "wall clock per launch".into();
        for (d, step) in launches {
            let t = Instant::now();
            self.record_submit(|pass, ctx| d.record_step(ctx, pass, step));
            ctx.wait();
            *profile.ms.entry(kernel_kind(d)).or_default() += t.elapsed().as_secs_f64() * 1e3;
        }
    }

    /// Advance several streams by one token each in one batched step (every weight is
    /// read once for all rows) and return each row's logits, in row order.
    pub fn forward_rows(
        &mut self,
        rows: &[(StreamId, u32)],
    ) -> Result<Vec<Vec<f32>>, ForwardError> {
        let n_vocab = self.model.config.n_vocab;
        self.check_rows(rows)?;
        let step = self.prepare_rows(rows)?;
        self.record_step_then(&step, |pass, ctx| {
            self.head
                .iter()
                .for_each(|d| d.record_step(ctx, pass, &step));
        });
        if rows.iter().any(|r| r.0 == self.main) {
            self.pos = self.pool.len(self.main)?;
        }
        let logits: Vec<f32> = self.model.ctx.read(&self.logits, 0, rows.len() * n_vocab)?;
        Ok(logits.chunks(n_vocab).map(|r| r.to_vec()).collect())
    }

    /// Checks of a decode step: known tokens, at most `lm_rows` rows, room in each stream.
    fn check_rows(&self, rows: &[(StreamId, u32)]) -> Result<(), ForwardError> {
        let n_vocab = self.model.config.n_vocab;
        if let Some(&(_, id)) = rows.iter().find(|r| r.1 as usize >= n_vocab) {
            return Err(ForwardError::BadToken { id, n_vocab });
        }
        if rows.len() > self.lm_rows {
            return Err(ForwardError::TooManyRows {
                rows: rows.len(),
                max: self.lm_rows,
            });
        }
        let streams: Vec<StreamId> = rows.iter().map(|r| r.0).collect();
        self.check_room(&streams)
    }

    /// Room for one more token in each stream's cache.
    fn check_room(&self, streams: &[StreamId]) -> Result<(), ForwardError> {
        for &s in streams {
            let len = self.pool.len(s)?;
            if len + 1 > self.n_ctx {
                return Err(ForwardError::ContextFull {
                    needed: len + 1,
                    n_ctx: self.n_ctx,
                    model_ctx: self.model.config.n_ctx,
                });
            }
        }
        Ok(())
    }

    /// As [`forward_rows`](Self::forward_rows), then each row's next token sampled on the
    /// GPU in the same submission (`sampling[i]` for row i: its stream's settings and
    /// step, see [`ops::sampling`]); reads back only (id, log-prob) per row, 8 bytes
    /// instead of `n_vocab` floats.
    pub fn forward_rows_sampled(
        &mut self,
        rows: &[(StreamId, u32)],
        sampling: &[RowSampling],
    ) -> Result<Vec<(u32, f32)>, ForwardError> {
        let step = self.submit_rows_sampled(rows, sampling)?;
        self.wait_sampled(step)
    }

    /// [`forward_rows_sampled`](Self::forward_rows_sampled) without waiting: the step is
    /// on the GPU's queue when this returns, and [`wait_sampled`](Self::wait_sampled) reads
    /// its draws. Meanwhile the host can record the next step, fed these draws by
    /// [`submit_fed`](Self::submit_fed), so the GPU goes from one step to the next
    /// without waiting for the host (decode pipelining).
    pub fn submit_rows_sampled(
        &mut self,
        rows: &[(StreamId, u32)],
        sampling: &[RowSampling],
    ) -> Result<SampledStep, ForwardError> {
        self.check_rows(rows)?;
        check_sampling(rows.len(), sampling)?;
        let streams: Vec<StreamId> = rows.iter().map(|r| r.0).collect();
        let step = self.prepare_rows(rows)?;
        self.submit_sampled(step, streams, sampling)
    }

    /// The next step of the streams `last` sampled for, row for row, each fed the token its
    /// row drew there — read from the GPU's token buffer, not from the host, so this can be
    /// submitted before `last` is waited for. `last` must be the latest step that wrote the
    /// token buffer (no step submitted since; [`ForwardError::StaleDraws`] otherwise).
    /// If the caller then finds that a stream should not have taken its draw (it ended),
    /// [`truncate`](Self::truncate) takes the fed token back out of its cache.
    pub fn submit_fed(
        &mut self,
        last: &SampledStep,
        sampling: &[RowSampling],
    ) -> Result<SampledStep, ForwardError> {
        if !self.feeds(last) {
            return Err(ForwardError::StaleDraws);
        }
        let streams = last.streams.clone();
        self.check_room(&streams)?;
        check_sampling(streams.len(), sampling)?;
        let step = self.prepare_fed_rows(&streams)?;
        self.submit_sampled(step, streams, sampling)
    }

    /// Whether [`submit_fed`](Self::submit_fed) can follow `last`: no step has written the
    /// token buffer since.
    pub fn feeds(&self, last: &SampledStep) -> bool {
        self.draws_fed_next == Some(last.number)
    }

    /// Record and submit a prepared step with the LM head and sampling over its rows, and
    /// queue the read-back of its draws.
    fn submit_sampled(
        &mut self,
        step: Step,
        streams: Vec<StreamId>,
        sampling: &[RowSampling],
    ) -> Result<SampledStep, ForwardError> {
        self.write_sample_rows(sampling.iter().enumerate().map(|(i, s)| s.row(i as u32)));
        self.record_step_then(&step, |pass, ctx| {
            self.head
                .iter()
                .for_each(|d| d.record_step(ctx, pass, &step));
            self.sampling.record(ctx, pass, step.rows, 0);
        });
        if streams.contains(&self.main) {
            self.pos = self.pool.len(self.main)?;
        }
        self.sampled_steps += 1;
        self.draws_fed_next = Some(self.sampled_steps);
        Ok(SampledStep {
            number: self.sampled_steps,
            read: self.model.ctx.read_later(&self.sampled, 0, streams.len())?,
            top: self.read_top_later(sampling)?,
            streams,
        })
    }

    /// The read-back of the rows' `top` slots, where some row asks for its most likely
    /// tokens (queued after the step, like the draws).
    #[allow(clippy::type_complexity)]
    fn read_top_later(
        &self,
        sampling: &[RowSampling],
    ) -> Result<Option<(crate::gpu::PendingRead<u32>, Vec<u32>)>, ForwardError> {
        let asked: Vec<u32> = sampling.iter().map(|s| s.top_logprobs).collect();
        if asked.iter().all(|&n| n == 0) {
            return Ok(None);
        }
        let words = asked.len() * 2 * ops::sampling::TOP_SLOTS;
        let read = self.model.ctx.read_later(&self.sampled_top, 0, words)?;
        Ok(Some((read, asked)))
    }

    /// Wait for a submitted step's draws: (id, log-prob) per row, in row order.
    pub fn wait_sampled(&self, step: SampledStep) -> Result<Vec<(u32, f32)>, ForwardError> {
        Ok(draws(step.read.wait(&self.model.ctx)?))
    }

    /// As [`wait_sampled`](Self::wait_sampled), with each row's most likely tokens where
    /// its [`RowSampling::top_logprobs`] asked for them.
    pub fn wait_draws(&self, step: SampledStep) -> Result<Vec<Draw>, ForwardError> {
        let ctx = &self.model.ctx;
        let sampled = step.read.wait(ctx)?;
        let top = match step.top {
            Some((read, asked)) => Some((read.wait(ctx)?, asked)),
            None => None,
        };
        Ok(with_top(sampled, top))
    }

    /// Take the last `n` tokens of stream `s` back out of its cache (their slots are
    /// written again by whatever comes next): a token [`submit_fed`](Self::submit_fed)
    /// fed ahead to a stream that turned out to have ended.
    pub fn truncate(&mut self, s: StreamId, n: usize) -> Result<(), ForwardError> {
        let len = self.pool.len(s)?;
        self.pool.truncate(s, len.saturating_sub(n))?;
        if s == self.main {
            self.pos = self.pool.len(s)?;
        }
        Ok(())
    }

    /// Sample `sampling.len()` tokens (at most `lm_rows`) on the GPU, all from the logits
    /// the last [`forward`](Self::forward) left (its last position): the first token of
    /// each stream forked from a prompt. Reads back only (id, log-prob) per row.
    pub fn sample_last_logits(
        &mut self,
        sampling: &[RowSampling],
    ) -> Result<Vec<(u32, f32)>, ForwardError> {
        let draws = self.sample_last(sampling)?;
        Ok(draws.into_iter().map(|d| (d.id, d.logprob)).collect())
    }

    /// As [`sample_last_logits`](Self::sample_last_logits), with each row's most likely
    /// tokens where it asks for them.
    pub fn sample_last(&mut self, sampling: &[RowSampling]) -> Result<Vec<Draw>, ForwardError> {
        if sampling.len() > self.lm_rows {
            return Err(ForwardError::TooManyRows {
                rows: sampling.len(),
                max: self.lm_rows,
            });
        }
        self.write_sample_rows(sampling.iter().map(|s| s.row(0)));
        self.record_submit(|pass, ctx| self.sampling.record(ctx, pass, sampling.len() as u32, 0));
        self.draws_fed_next = None;
        let step = SampledStep {
            number: 0, // fed to nothing: `draws_fed_next` is cleared
            streams: Vec::new(),
            read: self
                .model
                .ctx
                .read_later(&self.sampled, 0, sampling.len())?,
            top: self.read_top_later(sampling)?,
        };
        self.wait_draws(step)
    }

    fn write_sample_rows(&self, rows: impl Iterator<Item = SampleRow>) {
        let rows: Vec<SampleRow> = rows.collect();
        self.model
            .ctx
            .queue
            .write_buffer(&self.sample_rows, 0, bytemuck::cast_slice(&rows));
    }
}

/// One sampling setting per row.
fn check_sampling(rows: usize, sampling: &[RowSampling]) -> Result<(), ForwardError> {
    if rows != sampling.len() {
        return Err(ForwardError::SamplingRows {
            rows,
            settings: sampling.len(),
        });
    }
    Ok(())
}

/// The sampler's output as (id, log-prob) per row.
fn draws(out: Vec<Sampled>) -> Vec<(u32, f32)> {
    out.iter().map(|s| (s.id, s.logprob)).collect()
}

/// The sampler's output with each row's `top` slots (and how many it asked for) in order.
fn with_top(out: Vec<Sampled>, top: Option<(Vec<u32>, Vec<u32>)>) -> Vec<Draw> {
    let per_row = 2 * ops::sampling::TOP_SLOTS;
    out.iter()
        .enumerate()
        .map(|(r, s)| Draw {
            id: s.id,
            logprob: s.logprob,
            top: top.as_ref().map_or_else(Vec::new, |(slots, asked)| {
                let row = &slots[r * per_row..(r + 1) * per_row];
                ops::sampling::top_from_slots(row, asked[r] as usize)
            }),
        })
        .collect()
}

/// The per-step inputs of up to `max_rows` rows over a cache of `n_blocks` blocks.
fn step_inputs(ctx: &crate::gpu::GpuContext, max_rows: usize, n_blocks: usize) -> StepInputs {
    let mr = max_rows as u64;
    StepInputs {
        tokens: ctx.storage("tokens", mr * 4),
        positions: ctx.storage("positions", mr * 4),
        slots: ctx.storage("slots", mr * 4),
        tables: ctx.storage("tables", mr * n_blocks as u64 * 4),
        max_blocks: n_blocks,
    }
}

/// The paged KV cache: per layer, `n_blocks` blocks of f16 K, then as many of V.
fn kv_cache(model: &GpuModel, n_blocks: usize) -> KvCache {
    let (ctx, c) = (&model.ctx, &model.config);
    let kv_dim = c.n_kv_head * c.head_dim;
    let kv_bytes = (n_blocks * BLOCK_SIZE * kv_dim * 2) as u64; // f16
    let cache = |kind: &str| {
        (0..c.n_layer)
            .map(|l| ctx.storage(&format!("{kind}_cache.{l}"), kv_bytes))
            .collect()
    };
    KvCache {
        k: cache("k"),
        v: cache("v"),
    }
}

/// The final norm as f32 rows into `hidden` (switcher and verifier features).
fn final_hidden(model: &GpuModel, acts: &Activations, hidden: &wgpu::Buffer) -> Dispatch {
    let c = &model.config;
    ops::rmsnorm::rmsnorm(
        &model.ctx,
        "final_hidden",
        &acts.x,
        &model.output_norm,
        c.n_embd,
        c.rms_eps,
        hidden,
        &acts.xq,
        &acts.xs,
        false,
    )
}

/// The next token of each of `lm_rows` logits rows, sampled on the GPU: the settings
/// buffer in, the (id, log-prob) buffer out, and the launch.
fn gpu_sampling(
    ctx: &crate::gpu::GpuContext,
    logits: &wgpu::Buffer,
    n_vocab: usize,
    lm_rows: usize,
    next_tokens: &wgpu::Buffer,
) -> Result<(wgpu::Buffer, wgpu::Buffer, wgpu::Buffer, Dispatch), GpuError> {
    let [rows, out, top] = ops::sampling::SamplingIo::allocate(ctx, lm_rows);
    let io = ops::sampling::SamplingIo {
        rows: &rows,
        out: &out,
        next_tokens,
        top: &top,
    };
    let sampling = ops::sampling::sampling(ctx, "sampling", logits, n_vocab, &io)?;
    Ok((rows, out, top, sampling))
}

/// A launch's kernel kind: its label up to any `[`.
fn kernel_kind(d: &Dispatch) -> String {
    d.label.split('[').next().unwrap_or(&d.label).to_string()
}
