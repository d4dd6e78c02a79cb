//! Best-of-N over one prompt: prefill once with the base model (the switcher head, if any,
//! decides there whether the reasoning adapter decodes), fork N streams that share the
//! prompt's KV blocks, decode every live stream in one batched step per token (each weight
//! read once for all of them), sample each with its own seed (on the GPU, in the step's
//! own submission, so a step reads back token ids rather than logits), force the end of
//! thinking at the budget, stop each on EOS / stop string / its token cap, score finished candidates
//! with the verifier head on their own KV, and vote on the final answers.

use super::detokenize::IncrementalText;
use super::vote::{extract_answer, vote};
use crate::adapters::{Switcher, Verifier};
use crate::engine::{Budget, Engine, GenerateParams, Reasoning};
use crate::model::forward::{decode_pipelining, SampledStep, BLOCK_SIZE};
use crate::ops::sampling::{Draw, RowSampling, MAX_TOP_LOGPROBS};
use crate::sampling::{cpu_sampling, log_prob, Sampler, SamplingParams};
use anyhow::{bail, Result};
use std::sync::Arc;
use std::time::Instant;

/// How to vote over candidates.
#[derive(Clone, Debug, Default)]
pub struct VoteParams {
    /// Regex whose first group (or whole match) is the answer; default extraction otherwise.
    pub answer_regex: Option<regex::Regex>,
    /// Scores every finished candidate (its score is reported either way).
    pub verifier: Option<std::sync::Arc<Verifier>>,
    /// Each answer scores the sum of its candidates' verifier scores instead of their count.
    pub weighted: bool,
}

/// One candidate answer.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Candidate {
    pub index: usize,
    pub text: String,
    pub tokens: Vec<u32>,
    pub logprob: f32,
    pub answer: Option<String>,
    /// "eos", "stop", "length", "answer_length" (the answer cap after forcing) or "callback".
    pub finish_reason: String,
    /// Tokens up to and including the end-of-thinking marker (all, if it never came).
    pub thinking_tokens: usize,
    /// Tokens after it.
    pub answer_tokens: usize,
    /// Whether the budget forced the end of thinking.
    pub forced: bool,
    pub verifier_score: Option<f32>,
}

/// Result of [`generate_n`].
#[derive(Clone, Debug, serde::Serialize)]
pub struct BestOfN {
    pub candidates: Vec<Candidate>,
    /// The winning normalized answer, if any candidate had one.
    pub answer: Option<String>,
    /// Every distinct answer with its votes, best first.
    pub votes: Vec<(String, f32)>,
    pub prompt_tokens: usize,
    pub ttft_ms: f64,
    /// Generated tokens of all streams per second of decoding.
    pub decode_tokens_per_s: f64,
    /// Bytes of KV cache the streams hold at the end (shared prompt counted once).
    pub kv_bytes_used: u64,
    /// Whether the reasoning adapter decoded, and the switcher's probability if it decided.
    pub reasoning: bool,
    pub switcher_probability: Option<f32>,
}

/// One stream's text, stop and budget state: what [`Decoding`] and the server's scheduler
/// ([`super::serving`]) both keep per candidate.
pub(crate) struct StreamState {
    pub(crate) index: usize,
    pub(crate) stream: crate::kv::StreamId,
    /// Its settings (own seed); it samples with them on the CPU only under
    /// `EDGEREASON_CPU_SAMPLING=1`.
    pub(crate) sampler: Sampler,
    /// Tokens sampled so far (not forced): the GPU draw's step counter.
    pub(crate) sampled: u32,
    /// Most likely tokens to report beside each sampled one (0: none).
    pub(crate) top_logprobs: u32,
    pub(crate) tokens: Vec<u32>,
    /// The reply's text (special tokens left out), and with them (where the
    /// end-of-thinking marker is looked for), both decoded incrementally.
    pub(crate) text: IncrementalText,
    raw_text: IncrementalText,
    pub(crate) logprob: f32,
    pub(crate) finish: Option<&'static str>,
    /// Tokens sampled (or forced) but not yet run through the model.
    pub(crate) fed: usize,
    pub(crate) thinking_done: bool,
    pub(crate) thinking_tokens: usize,
    pub(crate) forced: bool,
    force_queue: std::collections::VecDeque<u32>,
    /// Tokens when the answer began (thinking closed, forcing text all in).
    answer_from: Option<usize>,
}

impl StreamState {
    /// Candidate `index` on cache stream `stream`, sampling with seed `sampling.seed +
    /// index` and reporting `params.top_logprobs` most likely tokens beside each sampled
    /// one; `opener` is fed before anything is sampled.
    pub(crate) fn new(
        index: usize,
        stream: crate::kv::StreamId,
        params: &GenerateParams,
        opener: &[u32],
    ) -> Self {
        let sampling = &params.sampling;
        StreamState {
            index,
            stream,
            sampler: Sampler::new(SamplingParams {
                seed: sampling.seed.wrapping_add(index as u64),
                ..sampling.clone()
            }),
            sampled: 0,
            top_logprobs: params.top_logprobs.min(MAX_TOP_LOGPROBS as usize) as u32,
            tokens: Vec::new(),
            text: IncrementalText::new(true),
            raw_text: IncrementalText::new(false),
            logprob: 0.0,
            finish: None,
            fed: 0,
            thinking_done: false,
            thinking_tokens: 0,
            forced: false,
            force_queue: opener.iter().copied().collect(),
            answer_from: None,
        }
    }

    /// Whether its next token will be the next draw: it goes on and has no forced token
    /// queued (it may still end on that draw).
    pub(crate) fn takes_its_draw(&self) -> bool {
        self.finish.is_none() && self.force_queue.is_empty()
    }

    /// Its GPU sampling settings for the next draw (step: tokens sampled so far).
    pub(crate) fn row_sampling(&self) -> RowSampling {
        RowSampling {
            params: self.sampler.params.clone(),
            step: self.sampled,
            top_logprobs: self.top_logprobs,
        }
    }

    /// Take the stream's next token: the next forced one, else `draw(sampler)` (the token
    /// sampled after its last one, with its log-prob). Ends the stream on EOS, a stop
    /// string, its token cap or the budget's answer cap (`finish`); returns the token it
    /// added, if any. While `finish` is `None` that token is to be fed to the model.
    pub(crate) fn advance(
        &mut self,
        engine: &Engine,
        params: &GenerateParams,
        draw: impl FnOnce(&mut Sampler) -> Draw,
    ) -> Result<Option<StreamToken>> {
        let (id, logprob, top_logprobs) = match self.force_queue.pop_front() {
            Some(id) => (id, None, Vec::new()),
            None => {
                let d = draw(&mut self.sampler);
                self.sampled += 1;
                self.logprob += d.logprob;
                if engine.eos_token_ids.contains(&d.id) {
                    self.finish = Some("eos");
                    return Ok(None);
                }
                (d.id, Some(d.logprob), d.top)
            }
        };
        self.tokens.push(id);
        let new = self.text.push(&engine.tokenizer, &self.tokens)?.to_string();
        let budget = params.budget.as_ref();
        if !self.thinking_done {
            self.track_thinking(engine, budget)?;
        }
        if self.thinking_done && self.force_queue.is_empty() && self.answer_from.is_none() {
            self.answer_from = Some(self.tokens.len());
        }
        let answering = self.answer_from.map_or(0, |from| self.tokens.len() - from);
        if params
            .stop
            .iter()
            .any(|s| self.text.text.ends_with(s.as_str()))
        {
            self.finish = Some("stop");
        } else if self.tokens.len() >= params.max_tokens {
            self.finish = Some("length");
        } else if budget.is_some_and(|b| answering >= b.answer_tokens) {
            self.finish = Some("answer_length");
        }
        if self.finish.is_none() {
            self.fed = self.tokens.len();
        }
        Ok(Some(StreamToken {
            stream: self.index,
            id,
            text: new,
            logprob,
            top_logprobs,
        }))
    }

    /// Count a thinking token; notice the end-of-thinking marker, or force it at the budget.
    fn track_thinking(&mut self, engine: &Engine, budget: Option<&Budget>) -> Result<()> {
        self.thinking_tokens += 1;
        let marker = budget.map_or("</think>", |b| b.end_marker.as_str());
        // With special tokens kept: some tokenizers (SmolLM2's) make </think> one.
        self.raw_text.push(&engine.tokenizer, &self.tokens)?;
        self.thinking_done = self.raw_text.text.contains(marker);
        // Budget forcing: out of thinking tokens with the reasoning still open.
        if let Some(b) = budget {
            if !self.thinking_done && !self.forced && self.thinking_tokens >= b.thinking_tokens {
                self.forced = true;
                let enc = engine
                    .tokenizer
                    .encode(b.force.as_str(), false)
                    .map_err(|e| anyhow::anyhow!("tokenizer: {e}"))?;
                self.force_queue.extend(enc.get_ids());
            }
        }
        Ok(())
    }
}

/// Each stream's first token, drawn on the GPU from the logits the prompt's prefill left
/// (every stream forked from that prompt, in chunks of the LM head's rows).
pub(crate) fn first_tokens(
    session: &mut crate::model::Session,
    live: &[StreamState],
) -> Result<Vec<Draw>> {
    let mut next_of = Vec::with_capacity(live.len());
    for chunk in live.chunks(session.lm_rows) {
        let settings: Vec<RowSampling> = chunk.iter().map(StreamState::row_sampling).collect();
        next_of.extend(session.sample_last(&settings)?);
    }
    Ok(next_of)
}

/// A stream's next token drawn on the CPU from its logits (`EDGEREASON_CPU_SAMPLING=1`),
/// with the `top_n` most likely tokens as the GPU sampler lists them.
pub(crate) fn cpu_draw(sampler: &mut Sampler, logits: &[f32], top_n: usize) -> Draw {
    let id = sampler.sample(logits);
    Draw {
        id,
        logprob: log_prob(logits, id),
        top: match top_n {
            0 => Vec::new(),
            n => crate::ops::sampling::top_reference(logits, n),
        },
    }
}

/// The tokens fed at the start of a reply the reasoning adapter decodes (its think opener).
pub(crate) fn think_opener(
    engine: &Engine,
    params: &GenerateParams,
    reasoning: bool,
) -> Result<Vec<u32>> {
    if !reasoning || params.think_prefix.is_empty() {
        return Ok(Vec::new());
    }
    Ok(engine
        .tokenizer
        .encode(params.think_prefix.as_str(), false)
        .map_err(|e| anyhow::anyhow!("tokenizer: {e}"))?
        .get_ids()
        .to_vec())
}

/// `params` with the token cap cut to what the context leaves after `prompt` and the
/// verifier's slots; refuses an empty run and a prompt the context cannot hold.
fn fit_to_context(
    engine: &Engine,
    prompt: &[u32],
    n: usize,
    params: &GenerateParams,
) -> Result<GenerateParams> {
    if prompt.is_empty() || n == 0 {
        bail!("need a prompt and at least one candidate");
    }
    let n_ctx = engine.n_ctx();
    if prompt.len() >= n_ctx {
        bail!(
            "prompt is {} tokens, longer than the context ({n_ctx}); shorten it or raise --ctx",
            prompt.len()
        );
    }
    let mut params = params.clone();
    params.max_tokens = params.max_tokens.min(n_ctx - prompt.len() - VERIFY_SLOTS);
    Ok(params)
}

/// The index in `session`'s adapter set of the adapter `name`.
fn adapter_index(session: &crate::model::Session, name: &str) -> Result<usize> {
    let set = session
        .lora
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("adapter '{name}' is not loaded (no adapters are)"))?;
    set.index(name).ok_or_else(|| {
        anyhow::anyhow!(
            "adapter '{name}' is not loaded (loaded: {})",
            set.adapters
                .iter()
                .map(|a| a.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })
}

/// The reasoning adapter `reasoning` names (its index in `session`'s set) and the switcher
/// head that decides whether it decodes, if any.
fn reasoning_adapter(
    session: &crate::model::Session,
    reasoning: &Reasoning,
) -> Result<(Option<usize>, Option<Arc<Switcher>>)> {
    Ok(match reasoning {
        Reasoning::Off => (None, None),
        Reasoning::On { adapter } => (Some(adapter_index(session, adapter)?), None),
        Reasoning::Auto { adapter, switcher } => (
            Some(adapter_index(session, adapter)?),
            Some(switcher.clone()),
        ),
    })
}

/// Prefill `prompt` into the main stream: the last position's logits, and with a switcher
/// its probability that the prompt wants reasoning (from the pooled hidden states).
fn encode_prompt(
    session: &mut crate::model::Session,
    prompt: &[u32],
    switcher: Option<&Switcher>,
) -> Result<(Vec<f32>, Option<f32>)> {
    Ok(match switcher {
        Some(sw) => {
            let (logits, pooled) =
                session.forward_pooled(prompt, |old, mean| sw.pool(old, mean))?;
            (logits, Some(sw.probability(&pooled)))
        }
        None => (session.forward(prompt)?, None),
    })
}

/// Fork `n` streams over the main stream's prompt (which is then released), each fed the
/// think opener first when the reasoning adapter decodes.
fn fork_streams(
    engine: &Engine,
    session: &mut crate::model::Session,
    n: usize,
    params: &GenerateParams,
    reasoning: bool,
) -> Result<Vec<StreamState>> {
    let streams = session.fork(session.main, n)?;
    session.release(session.main)?;
    let opener = think_opener(engine, params, reasoning)?;
    Ok(streams
        .iter()
        .enumerate()
        .map(|(i, &s)| StreamState::new(i, s, params, &opener))
        .collect())
}

/// One token of one stream, as [`Decoding`] yields them.
#[derive(Clone, Debug, PartialEq)]
pub struct StreamToken {
    /// Candidate index, 0..n.
    pub stream: usize,
    pub id: u32,
    /// Text this token completes (empty while it ends inside a UTF-8 character).
    pub text: String,
    /// Its log-probability when sampled (`None` for a forced token: the think opener or
    /// the budget's answer forcing).
    pub logprob: Option<f32>,
    /// The most likely tokens at its position with their log-probs, most likely first,
    /// where `GenerateParams::top_logprobs` asked (empty for forced tokens).
    pub top_logprobs: Vec<(u32, f32)>,
}

/// N candidates being decoded together: an iterator over every stream's tokens, one
/// batched step at a time. [`generate_n`] drives it with a callback; use it directly to
/// pull tokens, stop streams early, or interleave other work between steps.
///
/// ```no_run
/// # fn main() -> anyhow::Result<()> {
/// use edgereason::engine::{Engine, EngineOptions, GenerateParams};
/// use edgereason::sched::best_of_n::{Decoding, VoteParams};
/// let engine = Engine::load("smollm2-135m", &EngineOptions::default())?;
/// let prompt = engine.encode(&engine.chat_prompt(None, "What is 6*7?")?)?;
/// let mut run = Decoding::start(&engine, &prompt, 4, &GenerateParams::default())?;
/// while let Some(tok) = run.next() {
///     let tok = tok?;
///     print!("[{}]{}", tok.stream, tok.text);
/// }
/// let result = run.finish(&VoteParams::default())?;
/// println!("\nanswer: {:?}", result.answer);
/// # Ok(()) }
/// ```
pub struct Decoding<'e> {
    engine: &'e Engine,
    session: crate::model::Session,
    params: GenerateParams,
    live: Vec<StreamState>,
    /// Sampling on the GPU (the default): each stream's next token and its log-prob, drawn
    /// in the step that fed its last token.
    gpu_sampling: bool,
    next_of: Vec<Draw>,
    /// Sampled steps on the GPU's queue not read yet, each with its rows' stream indices.
    in_flight: Vec<(SampledStep, Vec<usize>)>,
    /// Submit each step fed by the last one's draws before reading them, where every
    /// stream will take its draw (see [`step`](Self::step)).
    pipelined: bool,
    /// Steps submitted fed the last one's draws, before reading them.
    fed_ahead: usize,
    /// Sampling on the CPU: each stream's logits after its last token.
    logits_of: Vec<Vec<f32>>,
    pending: std::collections::VecDeque<StreamToken>,
    prompt_tokens: usize,
    ttft_s: f64,
    decode_start: Instant,
    generated: usize,
    reasoning: bool,
    switcher_probability: Option<f32>,
}

/// The tokens one step added, and the rows (stream index, cache stream, token) that go on.
type StepRows = (Vec<StreamToken>, Vec<(usize, crate::kv::StreamId, u32)>);

/// Cache slots kept per stream for the verifier's prompt.
pub(crate) const VERIFY_SLOTS: usize = 64;

impl<'e> Decoding<'e> {
    /// Prefill `prompt` once and fork `n` streams over its KV blocks. Stream `i` samples
    /// with seed `params.sampling.seed + i`, so results are reproducible.
    pub fn start(
        engine: &'e Engine,
        prompt: &[u32],
        n: usize,
        params: &GenerateParams,
    ) -> Result<Self> {
        let params = fit_to_context(engine, prompt, n, params)?;
        let max_new = params.max_tokens;
        // Prompt once, then each stream's own tokens (+ a block each for copy-on-write, and
        // room for the verification prompt).
        let slots = prompt.len() + n * (max_new + VERIFY_SLOTS + BLOCK_SIZE) + BLOCK_SIZE;
        let mut session = engine.session_with(slots, Default::default())?;
        let (adapter, switcher) = reasoning_adapter(&session, &params.reasoning)?;
        // Masked LoRA: the prompt is encoded by the base model unless asked otherwise.
        if params.adapter_on_prompt {
            session.set_adapter(session.main, adapter)?;
        }
        let t0 = Instant::now();
        let (logits, switcher_probability) =
            encode_prompt(&mut session, prompt, switcher.as_deref())?;
        let ttft_s = t0.elapsed().as_secs_f64();
        let reasoning = adapter.is_some()
            && switcher
                .as_ref()
                .zip(switcher_probability)
                .is_none_or(|(sw, p)| p >= sw.threshold);
        session.set_adapter(session.main, if reasoning { adapter } else { None })?;
        let live = fork_streams(engine, &mut session, n, &params, reasoning)?;
        // Each stream's first token, from the prompt's last logits (still on the GPU).
        let gpu_sampling = !cpu_sampling();
        let mut next_of = Vec::new();
        if gpu_sampling {
            next_of = first_tokens(&mut session, &live)?;
        }
        Ok(Decoding {
            engine,
            session,
            params,
            reasoning,
            switcher_probability,
            live,
            gpu_sampling,
            next_of,
            in_flight: Vec::new(),
            pipelined: decode_pipelining(),
            fed_ahead: 0,
            logits_of: if gpu_sampling {
                Vec::new()
            } else {
                vec![logits; n]
            },
            pending: Default::default(),
            prompt_tokens: prompt.len(),
            ttft_s,
            decode_start: Instant::now(),
            generated: 0,
        })
    }

    /// Submit steps fed by the last step's draws before reading them (the default unless
    /// EDGEREASON_PIPELINE=0; see [`step`](Self::step)), or wait for each step's draws
    /// first. The tokens are the same either way.
    pub fn set_pipelining(&mut self, on: bool) {
        self.pipelined = on;
    }

    /// Steps so far submitted fed the last step's draws before the host read them.
    pub fn steps_fed_ahead(&self) -> usize {
        self.fed_ahead
    }

    /// Whether every stream has finished.
    pub fn is_finished(&self) -> bool {
        self.live.iter().all(|l| l.finish.is_some())
    }

    /// Stop stream `i` (its candidate keeps what it has, finish reason "stop").
    pub fn stop_stream(&mut self, i: usize) {
        self.stop_stream_with(i, "stop");
    }

    /// Stop stream `i` with this finish reason.
    pub fn stop_stream_with(&mut self, i: usize, reason: &'static str) {
        if let Some(l) = self.live.get_mut(i) {
            l.finish.get_or_insert(reason);
        }
    }

    /// Whether the reasoning adapter decodes these streams.
    pub fn reasoning(&self) -> bool {
        self.reasoning
    }

    /// Text of stream `i` so far.
    pub fn text(&self, i: usize) -> &str {
        &self.live[i].text.text
    }

    /// One batched step: take every live stream's next token (its next forced token, or
    /// the one the GPU sampled in the last step; from its logits on the CPU with
    /// `EDGEREASON_CPU_SAMPLING=1`), then advance all that go on in one forward pass, which
    /// also samples their next tokens. Returns the tokens added (empty once all finished).
    ///
    /// The forward pass is submitted, not waited for: the next call reads its draws. And
    /// where every stream of the last step will take its draw (none has forced tokens
    /// queued), the next step is submitted first, fed those draws on the GPU, so the GPU
    /// goes from step to step while the host reads, detokenizes and checks stop rules
    /// (`EDGEREASON_PIPELINE=0` waits instead). A stream that then ends (EOS, a stop
    /// string, its caps) has the token fed ahead taken back out of its cache, so the
    /// tokens and the cache are those of the unpipelined loop.
    pub fn step(&mut self) -> Result<Vec<StreamToken>> {
        let ahead = self.submit_ahead()?;
        for (step, indices) in std::mem::take(&mut self.in_flight) {
            let draws = self.session.wait_draws(step)?;
            for (i, next) in indices.into_iter().zip(draws) {
                self.next_of[i] = next;
            }
        }
        let (produced, rows) = self.advance_streams()?;
        match ahead {
            Some(ahead) => self.keep_ahead(ahead)?,
            None => self.submit_rows(&rows)?,
        }
        Ok(produced)
    }

    /// The step after the one in flight, fed its draws, if every stream in it will take
    /// its draw (none finished, none with forced tokens queued) and it was one launch.
    fn submit_ahead(&mut self) -> Result<Option<(SampledStep, Vec<usize>)>> {
        let [(last, indices)] = self.in_flight.as_slice() else {
            return Ok(None);
        };
        let unchanged = self.session.feeds(last);
        if !self.pipelined || !unchanged || !indices.iter().all(|&i| self.live[i].takes_its_draw())
        {
            return Ok(None);
        }
        let settings: Vec<RowSampling> = indices
            .iter()
            .map(|&i| RowSampling {
                step: self.live[i].sampled + 1,
                ..self.live[i].row_sampling()
            })
            .collect();
        let ahead = self.session.submit_fed(last, &settings)?;
        self.fed_ahead += 1;
        Ok(Some((ahead, indices.clone())))
    }

    /// The step fed ahead becomes the one in flight; streams that ended on the draw it
    /// was fed give that token back (the unpipelined loop never fed it).
    fn keep_ahead(&mut self, (ahead, indices): (SampledStep, Vec<usize>)) -> Result<()> {
        for &i in &indices {
            if self.live[i].finish.is_some() {
                self.session.truncate(self.live[i].stream, 1)?;
            }
        }
        self.in_flight.push((ahead, indices));
        Ok(())
    }

    /// Every live stream takes its next token; returns the tokens added and the rows
    /// (stream index, cache stream, token) of those that go on.
    fn advance_streams(&mut self) -> Result<StepRows> {
        let engine = self.engine;
        let mut produced = Vec::new();
        let mut rows = Vec::new();
        for l in self.live.iter_mut() {
            if l.finish.is_some() {
                continue;
            }
            // The GPU's draw for this stream, else its logits to draw from on the CPU.
            let source = match self.next_of.get(l.index) {
                Some(next) => Ok(next),
                None => Err(self.logits_of.get(l.index).ok_or_else(|| {
                    anyhow::anyhow!("stream {}: no sampled token and no logits", l.index)
                })?),
            };
            let top_n = l.top_logprobs as usize;
            let draw = |sampler: &mut Sampler| match source {
                Ok(next) => next.clone(),
                Err(lg) => cpu_draw(sampler, lg, top_n),
            };
            let Some(tok) = l.advance(engine, &self.params, draw)? else {
                continue;
            };
            self.generated += 1;
            let id = tok.id;
            produced.push(tok);
            if l.finish.is_none() {
                rows.push((l.index, l.stream, id));
            }
        }
        Ok((produced, rows))
    }

    /// One batched step for `rows` (in chunks of the LM head's row count). With GPU
    /// sampling the step also draws each row's next token (step counter: tokens the
    /// stream has sampled; a draw a forced token replaces is drawn again next step) and is
    /// left in flight; on the CPU it waits for the logits.
    fn submit_rows(&mut self, rows: &[(usize, crate::kv::StreamId, u32)]) -> Result<()> {
        for chunk in rows.chunks(self.session.lm_rows) {
            let batch: Vec<_> = chunk.iter().map(|&(_, s, id)| (s, id)).collect();
            let indices: Vec<usize> = chunk.iter().map(|r| r.0).collect();
            if self.gpu_sampling {
                let settings: Vec<RowSampling> = indices
                    .iter()
                    .map(|&i| self.live[i].row_sampling())
                    .collect();
                let step = self.session.submit_rows_sampled(&batch, &settings)?;
                self.in_flight.push((step, indices));
            } else {
                let out = self.session.forward_rows(&batch)?;
                for (i, lg) in indices.into_iter().zip(out) {
                    self.logits_of[i] = lg;
                }
            }
        }
        Ok(())
    }

    /// Verifier scores of the finished candidates (see [`verify_streams`]).
    fn verify(&mut self, verifier: &Verifier) -> Result<Vec<f32>> {
        verify_streams(&mut self.session, self.engine, verifier, &self.live)
    }

    /// Every candidate with its answer and verifier score, and the vote.
    pub fn finish(mut self, vote_params: &VoteParams) -> Result<BestOfN> {
        let decode_s = self.decode_start.elapsed().as_secs_f64();
        let kv_bytes_used = self.session.pool.used_blocks() as u64
            * BLOCK_SIZE as u64
            * self.session.kv_bytes_per_token();
        let scores = match &vote_params.verifier {
            Some(v) => Some(self.verify(v)?),
            None => None,
        };
        let (candidates, answer, votes) = conclude(self.live, self.reasoning, scores, vote_params)?;
        Ok(BestOfN {
            candidates,
            answer,
            votes,
            prompt_tokens: self.prompt_tokens,
            ttft_ms: self.ttft_s * 1e3,
            decode_tokens_per_s: self.generated as f64 / decode_s.max(1e-9),
            kv_bytes_used,
            reasoning: self.reasoning,
            switcher_probability: self.switcher_probability,
        })
    }
}

/// Verifier scores of finished candidates: each stream is continued by the verification
/// prompt (after any token it has not run yet; the adapter as while decoding), all streams
/// in one batched pass, and the head reads the final-norm hidden state at each stream's
/// last row.
pub(crate) fn verify_streams(
    session: &mut crate::model::Session,
    engine: &Engine,
    verifier: &Verifier,
    live: &[StreamState],
) -> Result<Vec<f32>> {
    let enc = engine
        .tokenizer
        .encode(verifier.prompt.as_str(), false)
        .map_err(|e| anyhow::anyhow!("tokenizer: {e}"))?;
    let prompt_ids = enc.get_ids();
    if prompt_ids.len() + 1 > VERIFY_SLOTS {
        bail!(
            "verification prompt is {} tokens; at most {} fit",
            prompt_ids.len(),
            VERIFY_SLOTS - 1
        );
    }
    let mut rows = Vec::new();
    let mut last_row = Vec::new();
    for l in live {
        rows.extend(
            l.tokens[l.fed..]
                .iter()
                .chain(prompt_ids)
                .map(|&t| (l.stream, t)),
        );
        last_row.push(rows.len() - 1);
    }
    let mut hidden = Vec::with_capacity(rows.len());
    for chunk in rows.chunks(session.max_rows) {
        hidden.extend(session.hidden_rows(chunk)?);
    }
    Ok(last_row
        .iter()
        .map(|&r| verifier.score(&hidden[r]))
        .collect())
}

/// Candidates, the winning answer and every answer's votes (best first).
pub(crate) type Concluded = (Vec<Candidate>, Option<String>, Vec<(String, f32)>);

/// The candidates of finished streams with their answers and verifier `scores`, and the
/// vote over them: (candidates, winning answer, votes best first).
pub(crate) fn conclude(
    live: Vec<StreamState>,
    reasoning: bool,
    scores: Option<Vec<f32>>,
    vote_params: &VoteParams,
) -> Result<Concluded> {
    // A reply thinks if the reasoning adapter decoded it or it closed a think block itself;
    // a plain chat reply is all answer.
    let thinking = |l: &StreamState| {
        if reasoning || l.thinking_done {
            l.thinking_tokens
        } else {
            0
        }
    };
    let candidates: Vec<Candidate> = live
        .into_iter()
        .enumerate()
        .map(|(i, l)| Candidate {
            index: l.index,
            answer: extract_answer(&l.text.text, vote_params.answer_regex.as_ref()),
            thinking_tokens: thinking(&l),
            answer_tokens: l.tokens.len() - thinking(&l),
            forced: l.forced,
            verifier_score: scores.as_ref().map(|s| s[i]),
            text: l.text.text,
            tokens: l.tokens,
            logprob: l.logprob,
            finish_reason: l.finish.unwrap_or("length").to_string(),
        })
        .collect();
    let answers: Vec<Option<String>> = candidates.iter().map(|c| c.answer.clone()).collect();
    let weights: Vec<f32> = match (&scores, vote_params.weighted) {
        (Some(s), true) => s.clone(),
        (None, true) => bail!("a weighted vote needs a verifier"),
        _ => vec![1.0; answers.len()],
    };
    let (answer, votes) = vote(&answers, &weights);
    Ok((candidates, answer, votes))
}

impl Iterator for Decoding<'_> {
    type Item = Result<StreamToken>;

    fn next(&mut self) -> Option<Self::Item> {
        while self.pending.is_empty() {
            if self.is_finished() {
                return None;
            }
            match self.step() {
                Ok(toks) => self.pending.extend(toks),
                Err(e) => {
                    self.live
                        .iter_mut()
                        .for_each(|l| l.finish = l.finish.or(Some("error")));
                    return Some(Err(e));
                }
            }
        }
        self.pending.pop_front().map(Ok)
    }
}

/// Generate `n` candidates for `prompt` and vote (see [`Decoding`]). `on_token(i, id, text)`
/// sees every stream's tokens as they come; returning `false` stops stream `i`.
pub fn generate_n(
    engine: &Engine,
    prompt: &[u32],
    n: usize,
    params: &GenerateParams,
    vote_params: &VoteParams,
    mut on_token: impl FnMut(usize, u32, &str) -> bool,
) -> Result<BestOfN> {
    let mut run = Decoding::start(engine, prompt, n, params)?;
    while !run.is_finished() {
        for t in run.step()? {
            if !on_token(t.stream, t.id, &t.text) {
                run.stop_stream(t.stream);
            }
        }
    }
    run.finish(vote_params)
}
