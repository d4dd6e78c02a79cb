//! Continuous batching: many requests share one GPU session. A [`Scheduler`] thread owns the
//! session; requests join at token boundaries and leave when done. Each loop turn runs at
//! most one prefill chunk (so a long prompt never freezes the streams already decoding),
//! then one batched decode step over every live stream of every request — each row with
//! its own adapter (or none), sampler, stop rules and budget. A request's `n` candidates
//! fork its prompt's KV blocks, as `--best-of` does.
//!
//! Prompts are always encoded by the base model (masked LoRA), so their KV blocks are
//! adapter-free and can serve any later request that starts the same way: the
//! [`PrefixCache`] keeps the full blocks of recent prompts and evicts the least recently
//! used when the pool needs room.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use edgereason::engine::{Engine, EngineOptions, GenerateParams};
//! use edgereason::sched::serving::{Event, Request, Scheduler, SchedulerOptions};
//! use std::sync::Arc;
//! let engine = Arc::new(Engine::load("smollm2-135m", &EngineOptions::default())?);
//! let sched = Scheduler::start(engine.clone(), SchedulerOptions::default())?;
//! let prompt = engine.encode(&engine.chat_prompt(None, "What is 6*7?")?)?;
//! let mut req = sched.submit(Request::new(prompt, GenerateParams::default()))?;
//! while let Some(ev) = req.events.blocking_recv() {
//!     match ev {
//!         Event::Token { text, .. } => print!("{text}"),
//!         Event::Done(result) => println!("\n{:?}", result.candidates[0].finish_reason),
//!         _ => {}
//!     }
//! }
//! # Ok(()) }
//! ```

use super::best_of_n::{
    conclude, first_tokens, think_opener, verify_streams, BestOfN, StreamState, VoteParams,
    VERIFY_SLOTS,
};
use crate::engine::{Engine, GenerateParams, Reasoning};
use crate::kv::StreamId;
use crate::model::forward::{decode_pipelining, BLOCK_SIZE};
use crate::model::{SampledStep, Session};
use crate::ops::sampling::{Draw, RowSampling};
use anyhow::{anyhow, bail, Result};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Instant;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

mod metrics;
mod prefix_cache;
pub use metrics::{Histogram, Metrics};
pub use prefix_cache::PrefixCache;

/// How the scheduler is sized.
#[derive(Clone, Debug)]
pub struct SchedulerOptions {
    /// Candidate streams decoded in one step at most (all requests together).
    pub max_streams: usize,
    /// Requests waiting for admission at most; beyond it `submit` says [`SubmitError::QueueFull`].
    pub max_queue: usize,
    /// Candidates one request may ask for (`n`).
    pub max_n: usize,
    /// KV cache slots of the shared pool (all streams, the prefix cache included).
    pub kv_tokens: usize,
    /// Keep finished prompts' KV blocks for later requests that start the same way.
    pub prefix_cache: bool,
    /// Submit a step fed the last one's draws before reading them where the batch is
    /// unchanged (see [`Decoding::step`](super::best_of_n::Decoding::step)); default: on
    /// unless EDGEREASON_PIPELINE=0.
    pub pipelined: bool,
    /// While idle, build the pipelines later steps will take (one at a time, so a request
    /// that arrives waits for one compile at most): no request then stalls on a kernel
    /// variant's first use. Default: on.
    pub warm_up: bool,
}

impl Default for SchedulerOptions {
    fn default() -> Self {
        Self {
            max_streams: 16,
            max_queue: 64,
            max_n: 16,
            kv_tokens: 16384,
            prefix_cache: true,
            pipelined: decode_pipelining(),
            warm_up: true,
        }
    }
}

/// One request: a tokenized prompt, `n` candidates and how to generate and vote.
#[derive(Clone, Debug)]
pub struct Request {
    pub prompt: Vec<u32>,
    pub n: usize,
    pub params: GenerateParams,
    pub vote: VoteParams,
}

impl Request {
    /// One candidate of `prompt`, no vote.
    pub fn new(prompt: Vec<u32>, params: GenerateParams) -> Self {
        Request {
            prompt,
            n: 1,
            params,
            vote: VoteParams::default(),
        }
    }
}

/// What a request's receiver sees, in order: `Started`, its tokens, then `Done` or `Failed`.
#[derive(Clone, Debug)]
pub enum Event {
    /// The prompt is encoded: `cached_tokens` of it came from the prefix cache.
    Started {
        prompt_tokens: usize,
        cached_tokens: usize,
        reasoning: bool,
        switcher_probability: Option<f32>,
    },
    /// A token of candidate `stream`, with the most likely tokens at its position where
    /// the request asked (`GenerateParams::top_logprobs`).
    Token {
        stream: usize,
        id: u32,
        text: String,
        logprob: Option<f32>,
        top_logprobs: Vec<(u32, f32)>,
    },
    /// Every candidate finished: the candidates, the vote and timings.
    Done(Box<BestOfN>),
    Failed(String),
}

/// Why a request was not taken.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SubmitError {
    #[error("the queue is full ({0} requests waiting); retry later")]
    QueueFull(usize),
    #[error("{0}")]
    Invalid(String),
    #[error("the scheduler has stopped")]
    Stopped,
}

/// A submitted request: its events, and cancellation (also on drop).
pub struct Submitted {
    pub events: UnboundedReceiver<Event>,
    cancel: Arc<AtomicBool>,
}

impl Submitted {
    /// Stop the request: its rows leave the next step and their blocks return to the pool.
    /// A request already decoding then ends with its candidates so far (finish reason
    /// "cancelled") in `Done`, if its receiver is still open; one still in the queue or
    /// encoding its prompt just closes.
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }

    /// The flag [`cancel`](Self::cancel) sets, for a canceller held elsewhere.
    pub(crate) fn cancel_flag(&self) -> Arc<AtomicBool> {
        self.cancel.clone()
    }
}

impl Drop for Submitted {
    fn drop(&mut self) {
        self.cancel();
    }
}

struct Job {
    req: Request,
    events: UnboundedSender<Event>,
    cancel: Arc<AtomicBool>,
    submitted: Instant,
}

/// The handle: submit requests, read metrics. The loop runs on its own thread until the
/// handle is dropped.
pub struct Scheduler {
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    queued: Arc<AtomicUsize>,
    metrics: Arc<Mutex<Metrics>>,
    engine: Arc<Engine>,
    options: SchedulerOptions,
    kv_blocks: usize,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Scheduler {
    /// Start the loop over a new session of `options.kv_tokens` cache slots.
    pub fn start(engine: Arc<Engine>, options: SchedulerOptions) -> Result<Self> {
        if options.max_streams == 0 || options.max_n == 0 {
            return Err(anyhow!("max_streams and max_n must be at least 1"));
        }
        let (tx, rx) = mpsc::channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let session = engine.session_with(options.kv_tokens, Default::default())?;
        let metrics = Arc::new(Mutex::new(Metrics {
            pipelines_cold: session.cold_pipelines(),
            ..Default::default()
        }));
        let kv_blocks = session.pool.total_blocks();
        let mut lp = Loop {
            engine: engine.clone(),
            session,
            options: options.clone(),
            jobs: rx,
            queued: queued.clone(),
            metrics: metrics.clone(),
            queue: VecDeque::new(),
            running: Vec::new(),
            cache: PrefixCache::default(),
            in_flight: Vec::new(),
            warm: !options.warm_up,
        };
        let thread = std::thread::Builder::new()
            .name("edgereason-scheduler".into())
            .spawn(move || lp.run())?;
        Ok(Scheduler {
            jobs: Mutex::new(Some(tx)),
            queued,
            metrics,
            engine,
            options,
            kv_blocks,
            thread: Some(thread),
        })
    }

    /// Queue `req` after checking it (limits, sampling values, adapters) before any work.
    pub fn submit(&self, req: Request) -> Result<Submitted, SubmitError> {
        self.validate(&req).map_err(SubmitError::Invalid)?;
        let waiting = self.queued.load(Ordering::Relaxed);
        if waiting >= self.options.max_queue {
            crate::sync::lock(&self.metrics).rejected += 1;
            return Err(SubmitError::QueueFull(waiting));
        }
        let (events, rx) = unbounded_channel();
        let cancel = Arc::new(AtomicBool::new(false));
        let job = Job {
            req,
            events,
            cancel: cancel.clone(),
            submitted: Instant::now(),
        };
        let jobs = crate::sync::lock(&self.jobs);
        let tx = jobs.as_ref().ok_or(SubmitError::Stopped)?;
        self.queued.fetch_add(1, Ordering::Relaxed);
        tx.send(job).map_err(|_| SubmitError::Stopped)?;
        Ok(Submitted { events: rx, cancel })
    }

    fn validate(&self, req: &Request) -> Result<(), String> {
        let n_ctx = self.engine.n_ctx();
        if req.prompt.is_empty() {
            return Err("the prompt is empty".into());
        }
        if req.n == 0 || req.n > self.options.max_n {
            return Err(format!("n = {}: must be 1..={}", req.n, self.options.max_n));
        }
        if req.n > 1 && req.params.sampling.temperature == 0.0 {
            return Err(format!(
                "n = {} with temperature 0 gives {} identical greedy candidates: set a temperature > 0",
                req.n, req.n
            ));
        }
        req.params.sampling.validate().map_err(|e| e.to_string())?;
        let need = req.prompt.len() + req.params.max_tokens;
        if need > n_ctx {
            return Err(format!("the prompt ({} tokens) plus max_tokens ({}) is {need} tokens, more than the context ({n_ctx})", req.prompt.len(), req.params.max_tokens));
        }
        if request_blocks(req, 0) > self.kv_blocks {
            return Err(format!("the request needs {} KV blocks, the server's cache has {} (fewer candidates or tokens)", request_blocks(req, 0), self.kv_blocks));
        }
        if let Some(name) = adapter_name(&req.params.reasoning) {
            if !self.engine.adapter_names().iter().any(|a| a == name) {
                return Err(format!("adapter '{name}' is not loaded"));
            }
        }
        if req.vote.weighted && req.vote.verifier.is_none() {
            return Err("a weighted vote needs a verifier".into());
        }
        Ok(())
    }

    /// A snapshot of the counters, with the queue and pool as they are now.
    pub fn metrics(&self) -> Metrics {
        let mut m = crate::sync::lock(&self.metrics).clone();
        m.queued = self.queued.load(Ordering::Relaxed);
        m
    }

    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    pub fn options(&self) -> &SchedulerOptions {
        &self.options
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        crate::sync::lock(&self.jobs).take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn adapter_name(r: &Reasoning) -> Option<&str> {
    match r {
        Reasoning::Off => None,
        Reasoning::On { adapter } | Reasoning::Auto { adapter, .. } => Some(adapter),
    }
}

/// KV blocks a request may take at most: its prompt (less `cached` tokens already in the
/// cache) and each candidate's tokens plus the verifier's prompt, with a copy-on-write
/// block each.
pub(crate) fn request_blocks(req: &Request, cached: usize) -> usize {
    let prompt = (req.prompt.len() - cached).div_ceil(BLOCK_SIZE) + 1;
    prompt + req.n * stream_blocks(req.params.max_tokens)
}

fn stream_blocks(tokens: usize) -> usize {
    (tokens + VERIFY_SLOTS).div_ceil(BLOCK_SIZE) + 1
}

/// A request in the loop.
struct Running {
    job: Job,
    phase: Phase,
    /// Candidate streams: (cache stream, state); next sampled token of each.
    streams: Vec<StreamState>,
    next_of: Vec<Draw>,
    adapter: Option<usize>,
    reasoning: bool,
    switcher_probability: Option<f32>,
    prompt_done: Instant,
    last_token: Option<Instant>,
    generated: usize,
}

enum Phase {
    /// Encoding the prompt on `stream`: `done` tokens are in the cache (`cached` of them
    /// from the prefix cache); `pooled` is the switcher's state so far.
    Prefill {
        stream: StreamId,
        done: usize,
        cached: usize,
        pooled: Option<Vec<f32>>,
    },
    Decode,
}

struct Loop {
    engine: Arc<Engine>,
    session: Session,
    options: SchedulerOptions,
    jobs: mpsc::Receiver<Job>,
    queued: Arc<AtomicUsize>,
    metrics: Arc<Mutex<Metrics>>,
    queue: VecDeque<Job>,
    running: Vec<Running>,
    cache: PrefixCache,
    /// Decode steps on the GPU's queue whose draws are not read yet.
    in_flight: Vec<SampledStep>,
    /// Every pipeline a step can take is built (or warming up is off).
    warm: bool,
}

impl Loop {
    fn run(&mut self) {
        loop {
            if !self.take_jobs() {
                break;
            }
            self.drop_cancelled();
            self.admit();
            self.prefill_one();
            if let Err(e) = self.decode_step() {
                self.fail_decoding(&e);
            }
            self.finish_done();
            self.publish();
        }
        for r in std::mem::take(&mut self.running) {
            let _ = r
                .job
                .events
                .send(Event::Failed("the server is shutting down".into()));
        }
    }

    /// Move submitted jobs into the queue; when idle, warm up until one comes, then wait
    /// for one. False once the handle is gone and nothing is left to do.
    fn take_jobs(&mut self) -> bool {
        let idle = |lp: &Self| lp.running.is_empty() && lp.queue.is_empty();
        if idle(self) && !self.warm_up_until_a_job() {
            return false;
        }
        if idle(self) {
            match self.jobs.recv() {
                Ok(j) => self.queue.push_back(j),
                Err(_) => return false,
            }
        }
        while let Ok(j) = self.jobs.try_recv() {
            self.queue.push_back(j);
        }
        true
    }

    /// Idle: build pipelines one at a time until they are all built or a job arrives
    /// (queued). False once the handle is gone.
    fn warm_up_until_a_job(&mut self) -> bool {
        while !self.warm {
            match self.jobs.try_recv() {
                Ok(j) => {
                    self.queue.push_back(j);
                    return true;
                }
                Err(mpsc::TryRecvError::Empty) => {
                    let done = self.session.warm_up(std::time::Duration::ZERO);
                    self.warm = done.left == 0;
                    if self.warm {
                        // A server is stopped, not dropped: keep what the driver compiled now.
                        let _ = self.session.model.ctx.save_pipelines();
                    }
                    self.publish();
                    crate::sync::lock(&self.metrics).pipelines_warmed += done.compiled;
                }
                Err(mpsc::TryRecvError::Disconnected) => return false,
            }
        }
        true
    }

    fn is_cancelled(job: &Job) -> bool {
        job.cancel.load(Ordering::Relaxed) || job.events.is_closed()
    }

    /// Requests whose client went away leave at once, their blocks back in the pool.
    fn drop_cancelled(&mut self) {
        let before = self.queue.len();
        self.queue.retain(|j| !Self::is_cancelled(j));
        let dropped = before - self.queue.len();
        self.queued.fetch_sub(dropped, Ordering::Relaxed);
        let mut cancelled = dropped;
        let mut i = 0;
        while i < self.running.len() {
            let r = &mut self.running[i];
            let listening = !r.job.events.is_closed();
            if listening && Self::is_cancelled(&r.job) && matches!(r.phase, Phase::Decode) {
                // The caller still reads: its candidates end here and `finish_done`
                // sends them (cancelled once: the flag stays set).
                if r.streams.iter().any(|s| s.finish.is_none()) {
                    r.streams
                        .iter_mut()
                        .filter(|s| s.finish.is_none())
                        .for_each(|s| s.finish = Some("cancelled"));
                    cancelled += 1;
                }
                i += 1;
            } else if Self::is_cancelled(&r.job) {
                let r = self.running.swap_remove(i);
                self.release(&r);
                cancelled += 1;
            } else {
                i += 1;
            }
        }
        crate::sync::lock(&self.metrics).cancelled += cancelled as u64;
    }

    fn release(&mut self, r: &Running) {
        if let Phase::Prefill { stream, .. } = r.phase {
            let _ = self.session.release(stream);
        }
        for s in &r.streams {
            let _ = self.session.release(s.stream);
        }
    }

    fn live_streams(&self) -> usize {
        self.running.iter().map(|r| r.job.req.n).sum()
    }

    /// Blocks the running requests may still take (prompt rest and each candidate's cap).
    fn blocks_promised(&self) -> usize {
        let pool = &self.session.pool;
        self.running
            .iter()
            .map(|r| match &r.phase {
                Phase::Prefill { done, .. } => {
                    let rest = r.job.req.prompt.len() - done;
                    rest.div_ceil(BLOCK_SIZE)
                        + 1
                        + r.job.req.n * stream_blocks(r.job.req.params.max_tokens)
                }
                Phase::Decode => r
                    .streams
                    .iter()
                    .filter(|s| s.finish.is_none())
                    .map(|s| {
                        let have = pool.table(s.stream).map_or(0, |t| t.len());
                        let cap =
                            r.job.req.prompt.len() + r.job.req.params.max_tokens + VERIFY_SLOTS;
                        cap.div_ceil(BLOCK_SIZE).saturating_sub(have) + 1
                    })
                    .sum(),
            })
            .sum()
    }

    /// Start queued requests (first come, first served) while streams and blocks allow,
    /// evicting cached prefixes for room.
    fn admit(&mut self) {
        while let Some(job) = self.queue.front() {
            if self.live_streams() + job.req.n > self.options.max_streams {
                return;
            }
            let cached = self.cached_prefix(&job.req);
            let need = request_blocks(&job.req, cached.map_or(0, |c| c.1)) + self.blocks_promised();
            while self.session.pool.free_blocks() < need && self.cache.evict_one(&mut self.session)
            {
            }
            if self.session.pool.free_blocks() < need {
                return;
            }
            let Some(job) = self.queue.pop_front() else {
                return;
            };
            self.queued.fetch_sub(1, Ordering::Relaxed);
            self.start(job);
        }
    }

    /// The cached prefix this request can start from: (cache stream, tokens), never the
    /// whole prompt (its last token is run to get the first logits). Requests whose
    /// switcher pools the prompt, or whose adapter encodes it, take none.
    fn cached_prefix(&self, req: &Request) -> Option<(StreamId, usize)> {
        let pooled = matches!(req.params.reasoning, Reasoning::Auto { .. });
        if !self.options.prefix_cache || pooled || req.params.adapter_on_prompt {
            return None;
        }
        self.cache
            .longest(&req.prompt[..req.prompt.len() - 1])
            .filter(|&(_, n)| n > 0)
    }

    fn start(&mut self, job: Job) {
        let (stream, cached) = match self.cached_prefix(&job.req) {
            Some((entry, n)) => match self.session.fork_prefix(entry, n) {
                Ok(s) => {
                    self.cache.touch(entry);
                    (s, n)
                }
                Err(_) => (self.session.create_stream(), 0),
            },
            None => (self.session.create_stream(), 0),
        };
        let adapter = adapter_name(&job.req.params.reasoning)
            .and_then(|name| self.session.lora.as_ref().and_then(|set| set.index(name)));
        if job.req.params.adapter_on_prompt {
            let _ = self.session.set_adapter(stream, adapter);
        }
        let mut m = crate::sync::lock(&self.metrics);
        m.admitted += 1;
        m.prompt_tokens += job.req.prompt.len() as u64;
        m.cached_prompt_tokens += cached as u64;
        drop(m);
        self.running.push(Running {
            job,
            phase: Phase::Prefill {
                stream,
                done: cached,
                cached,
                pooled: None,
            },
            streams: Vec::new(),
            next_of: Vec::new(),
            adapter,
            reasoning: false,
            switcher_probability: None,
            prompt_done: Instant::now(),
            last_token: None,
            generated: 0,
        });
    }

    /// One chunk (the session's row count) of the oldest prompt still being encoded; a
    /// failure fails that request only.
    fn prefill_one(&mut self) {
        let Some(i) = self
            .running
            .iter()
            .position(|r| matches!(r.phase, Phase::Prefill { .. }))
        else {
            return;
        };
        if let Err(e) = self.prefill_chunk(i) {
            let r = self.running.swap_remove(i);
            self.release(&r);
            crate::sync::lock(&self.metrics).failed += 1;
            let _ = r.job.events.send(Event::Failed(format!("{e:#}")));
        }
    }

    fn prefill_chunk(&mut self, i: usize) -> Result<()> {
        let max_rows = self.session.max_rows;
        let r = &mut self.running[i];
        let Phase::Prefill {
            stream,
            done,
            pooled,
            ..
        } = &mut r.phase
        else {
            bail!("prefill_chunk: request {i} is not prefilling");
        };
        let end = (*done + max_rows).min(r.job.req.prompt.len());
        let chunk = &r.job.req.prompt[*done..end];
        match &r.job.req.params.reasoning {
            Reasoning::Auto { switcher, .. } => {
                let mut fold = |mean: &[f32]| *pooled = Some(switcher.pool(pooled.take(), mean));
                self.session.prefill(*stream, chunk, Some(&mut fold))?;
            }
            _ => self.session.prefill(*stream, chunk, None)?,
        }
        *done = end;
        if end == r.job.req.prompt.len() {
            self.begin_decoding(i)?;
        }
        Ok(())
    }

    /// The prompt is in: the switcher decides, the prompt is kept for later requests, `n`
    /// candidates fork it and draw their first tokens from its last logits.
    fn begin_decoding(&mut self, i: usize) -> Result<()> {
        let r = &mut self.running[i];
        let Phase::Prefill {
            stream,
            cached,
            pooled,
            ..
        } = &r.phase
        else {
            bail!("begin_decoding: request {i} is not prefilling");
        };
        let (stream, cached) = (*stream, *cached);
        let params = &r.job.req.params;
        r.reasoning = r.adapter.is_some();
        if let (Reasoning::Auto { switcher, .. }, Some(p)) = (&params.reasoning, pooled) {
            let prob = switcher.probability(p);
            r.switcher_probability = Some(prob);
            r.reasoning &= prob >= switcher.threshold;
        }
        self.session
            .set_adapter(stream, if r.reasoning { r.adapter } else { None })?;
        let opener = think_opener(&self.engine, params, r.reasoning)?;
        let kids = self.session.fork(stream, r.job.req.n)?;
        r.streams = kids
            .iter()
            .enumerate()
            .map(|(k, &s)| StreamState::new(k, s, params, &opener))
            .collect();
        if self.options.prefix_cache && !params.adapter_on_prompt {
            self.cache
                .insert(&mut self.session, stream, &r.job.req.prompt)?;
        }
        r.phase = Phase::Decode;
        self.session.release(stream)?;
        r.next_of = first_tokens(&mut self.session, &r.streams)?;
        r.prompt_done = Instant::now();
        let ttft = r.job.submitted.elapsed().as_secs_f64();
        let decoder = match r.reasoning {
            true => adapter_name(&params.reasoning).unwrap_or("none"),
            false => "none",
        };
        let mut m = crate::sync::lock(&self.metrics);
        m.ttft.observe(ttft);
        *m.per_adapter.entry(decoder.to_string()).or_default() += 1;
        drop(m);
        let _ = r.job.events.send(Event::Started {
            prompt_tokens: r.job.req.prompt.len(),
            cached_tokens: cached,
            reasoning: r.reasoning,
            switcher_probability: r.switcher_probability,
        });
        Ok(())
    }

    /// Advance every decoding candidate of every request by one token: take the draws of
    /// the step in flight, then submit the next batched step (in chunks of the LM head's
    /// row count) and leave it in flight, so the rest of the turn (admitting, prompt
    /// chunks, answers) overlaps the GPU. Where the batch is the one in flight, unchanged,
    /// and every candidate takes its draw, the next step is submitted first, fed those
    /// draws on the GPU (as [`Decoding::step`](super::best_of_n::Decoding::step) does).
    fn decode_step(&mut self) -> Result<()> {
        let ahead = self.submit_ahead()?;
        for step in std::mem::take(&mut self.in_flight) {
            let streams = step.streams().to_vec();
            let draws = self.session.wait_draws(step)?;
            let at = self.locate();
            for (s, next) in streams.iter().zip(draws) {
                // A request cancelled meanwhile has left: its rows are dropped.
                if let Some(&(ri, k)) = at.get(s) {
                    self.running[ri].next_of[k] = next;
                }
            }
        }
        let rows = self.advance_streams()?;
        let fed_ahead = ahead.is_some();
        match ahead {
            Some(step) => self.keep_ahead(step)?,
            None => self.submit_rows(&rows)?,
        }
        let mut m = crate::sync::lock(&self.metrics);
        m.generated_tokens += rows.len() as u64;
        m.peak_step_streams = m.peak_step_streams.max(rows.len());
        m.decode_steps += !rows.is_empty() as u64;
        m.decode_steps_fed_ahead += fed_ahead as u64;
        Ok(())
    }

    /// Where each decoding candidate's cache stream is: (request, candidate).
    fn locate(&self) -> std::collections::HashMap<StreamId, (usize, usize)> {
        let mut at = std::collections::HashMap::new();
        for (ri, r) in self.running.iter().enumerate() {
            if matches!(r.phase, Phase::Decode) {
                for (k, s) in r.streams.iter().enumerate() {
                    at.insert(s.stream, (ri, k));
                }
            }
        }
        at
    }

    /// The step after the one in flight, fed its draws, if it was the whole batch in one
    /// launch and nothing changed since: no step wrote the tokens (a prompt chunk, a new
    /// request's first draws), every candidate still decodes and takes its draw.
    fn submit_ahead(&mut self) -> Result<Option<SampledStep>> {
        let [last] = self.in_flight.as_slice() else {
            return Ok(None);
        };
        if !self.options.pipelined || !self.session.feeds(last) {
            return Ok(None);
        }
        let at = self.locate();
        let live = self
            .running
            .iter()
            .filter(|r| matches!(r.phase, Phase::Decode))
            .flat_map(|r| r.streams.iter().filter(|s| s.finish.is_none()))
            .count();
        let mut settings = Vec::with_capacity(live);
        for s in last.streams() {
            match at.get(s).map(|&(ri, k)| &self.running[ri].streams[k]) {
                Some(st) if st.takes_its_draw() => settings.push(RowSampling {
                    step: st.sampled + 1,
                    ..st.row_sampling()
                }),
                _ => return Ok(None),
            }
        }
        if settings.len() != live {
            return Ok(None);
        }
        Ok(Some(self.session.submit_fed(last, &settings)?))
    }

    /// The step fed ahead is the one in flight; candidates that ended on the draw it was
    /// fed take that token back out of their caches.
    fn keep_ahead(&mut self, step: SampledStep) -> Result<()> {
        let at = self.locate();
        for s in step.streams() {
            if let Some(&(ri, k)) = at.get(s) {
                if self.running[ri].streams[k].finish.is_some() {
                    self.session.truncate(*s, 1)?;
                }
            }
        }
        self.in_flight.push(step);
        Ok(())
    }

    /// Every decoding candidate takes its next token (sent to its request); returns the
    /// rows (request, candidate, cache stream, token) of those that go on.
    fn advance_streams(&mut self) -> Result<Vec<(usize, usize, StreamId, u32)>> {
        let engine = self.engine.clone();
        let mut rows = Vec::new();
        for (ri, r) in self.running.iter_mut().enumerate() {
            if !matches!(r.phase, Phase::Decode) {
                continue;
            }
            for s in r.streams.iter_mut().filter(|s| s.finish.is_none()) {
                let next = std::mem::take(&mut r.next_of[s.index]);
                let Some(tok) = s.advance(&engine, &r.job.req.params, |_| next)? else {
                    continue;
                };
                r.generated += 1;
                if s.finish.is_none() {
                    rows.push((ri, s.index, s.stream, tok.id));
                }
                let _ = r.job.events.send(Event::Token {
                    stream: tok.stream,
                    id: tok.id,
                    text: tok.text,
                    logprob: tok.logprob,
                    top_logprobs: tok.top_logprobs,
                });
            }
            let now = Instant::now();
            if let Some(t) = r.last_token.replace(now) {
                crate::sync::lock(&self.metrics)
                    .inter_token
                    .observe((now - t).as_secs_f64());
            }
        }
        Ok(rows)
    }

    /// Submit one batched step of `rows`, in chunks of the LM head's row count, each left
    /// in flight.
    fn submit_rows(&mut self, rows: &[(usize, usize, StreamId, u32)]) -> Result<()> {
        for chunk in rows.chunks(self.session.lm_rows) {
            let batch: Vec<_> = chunk.iter().map(|&(_, _, s, id)| (s, id)).collect();
            let settings: Vec<RowSampling> = chunk
                .iter()
                .map(|&(ri, k, _, _)| self.running[ri].streams[k].row_sampling())
                .collect();
            let step = self.session.submit_rows_sampled(&batch, &settings)?;
            self.in_flight.push(step);
        }
        Ok(())
    }

    /// Requests whose candidates all finished: verify, vote, answer, free their blocks.
    fn finish_done(&mut self) {
        let mut i = 0;
        while i < self.running.len() {
            let r = &self.running[i];
            let done =
                matches!(r.phase, Phase::Decode) && r.streams.iter().all(|s| s.finish.is_some());
            if !done {
                i += 1;
                continue;
            }
            let mut r = self.running.swap_remove(i);
            let result = self.conclude(&mut r);
            self.release(&r);
            let mut m = crate::sync::lock(&self.metrics);
            match result {
                Ok(out) => {
                    m.completed += 1;
                    let _ = r.job.events.send(Event::Done(Box::new(out)));
                }
                Err(e) => {
                    m.failed += 1;
                    let _ = r.job.events.send(Event::Failed(format!("{e:#}")));
                }
            }
        }
    }

    fn conclude(&mut self, r: &mut Running) -> Result<BestOfN> {
        let decode_s = r.prompt_done.elapsed().as_secs_f64();
        let scores = match &r.job.req.vote.verifier {
            Some(v) => Some(verify_streams(
                &mut self.session,
                &self.engine,
                v,
                &r.streams,
            )?),
            None => None,
        };
        let kv_bytes_used = self.session.pool.used_blocks() as u64
            * BLOCK_SIZE as u64
            * self.session.kv_bytes_per_token();
        self.cache_reply(r, scores.is_some())?;
        let streams: Vec<StreamState> = std::mem::take(&mut r.streams);
        let ids: Vec<StreamId> = streams.iter().map(|s| s.stream).collect();
        let (candidates, answer, votes) = conclude(streams, r.reasoning, scores, &r.job.req.vote)?;
        // The streams are gone from `r`: release them here.
        for s in ids {
            let _ = self.session.release(s);
        }
        Ok(BestOfN {
            candidates,
            answer,
            votes,
            prompt_tokens: r.job.req.prompt.len(),
            ttft_ms: (r.prompt_done - r.job.submitted).as_secs_f64() * 1e3,
            decode_tokens_per_s: r.generated as f64 / decode_s.max(1e-9),
            kv_bytes_used,
            reasoning: r.reasoning,
            switcher_probability: r.switcher_probability,
        })
    }

    /// A reply the base model decoded extends its prompt in the prefix cache, so the next
    /// turn of a conversation reuses it rather than encoding it again. (Its KV is the
    /// decode steps'; replies an adapter decoded are not kept: prompts are the base model's.)
    fn cache_reply(&mut self, r: &Running, verified: bool) -> Result<()> {
        let params = &r.job.req.params;
        if !self.options.prefix_cache || r.reasoning || params.adapter_on_prompt || verified {
            return Ok(());
        }
        let [s] = r.streams.as_slice() else {
            return Ok(());
        };
        let mut tokens = r.job.req.prompt.clone();
        tokens.extend(&s.tokens[..s.fed]);
        self.cache.insert(&mut self.session, s.stream, &tokens)
    }

    /// A failed decode step fails the requests that were decoding.
    fn fail_decoding(&mut self, e: &anyhow::Error) {
        self.in_flight.clear();
        let (failed, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.running)
            .into_iter()
            .partition(|r| matches!(r.phase, Phase::Decode));
        self.running = kept;
        crate::sync::lock(&self.metrics).failed += failed.len() as u64;
        for r in failed {
            self.release(&r);
            let _ = r.job.events.send(Event::Failed(format!("{e:#}")));
        }
    }

    /// The gauges as they are after this turn.
    fn publish(&mut self) {
        let pool = &self.session.pool;
        let mut m = crate::sync::lock(&self.metrics);
        m.running = self.running.len();
        m.live_streams = self.live_streams();
        m.kv_blocks_total = pool.total_blocks();
        m.kv_blocks_free = pool.free_blocks();
        m.kv_blocks_cached_only = self.cache.exclusive_blocks(&self.session);
        m.prefix_cache_entries = self.cache.len();
        m.pipelines_compiled = self.session.model.ctx.stats.snapshot().pipelines_compiled;
        // Once warmed up nothing is cold: no scan of the launches every turn.
        let warmed_up = self.warm && self.options.warm_up;
        m.pipelines_cold = if warmed_up {
            0
        } else {
            self.session.cold_pipelines()
        };
    }
}
