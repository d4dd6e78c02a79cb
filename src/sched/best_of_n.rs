//! Best-of-N over one prompt: prefill once, fork N streams that share the prompt's KV
//! blocks, decode every live stream in one batched step per token (each weight read once
//! for all of them), sample each with its own seed, stop each on EOS / stop string / its
//! token cap, and vote on the final answers.

use super::vote::{extract_answer, vote};
use crate::engine::{Engine, GenerateParams};
use crate::model::forward::BLOCK_SIZE;
use crate::sampling::{log_prob, Sampler, SamplingParams};
use anyhow::{bail, Result};
use std::time::Instant;

/// How to vote over candidates.
#[derive(Clone, Debug, Default)]
pub struct VoteParams {
    /// Regex whose first group (or whole match) is the answer; default extraction otherwise.
    pub answer_regex: Option<regex::Regex>,
}

/// One candidate answer.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Candidate {
    pub index: usize,
    pub text: String,
    pub tokens: Vec<u32>,
    pub logprob: f32,
    pub answer: Option<String>,
    /// "eos", "stop" or "length".
    pub finish_reason: String,
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
}

struct Live {
    index: usize,
    stream: crate::kv::StreamId,
    sampler: Sampler,
    tokens: Vec<u32>,
    text: String,
    logprob: f32,
    finish: Option<&'static str>,
}

/// One token of one stream, as [`Decoding`] yields them.
#[derive(Clone, Debug, PartialEq)]
pub struct StreamToken {
    /// Candidate index, 0..n.
    pub stream: usize,
    pub id: u32,
    /// Text this token completes (empty while it ends inside a UTF-8 character).
    pub text: String,
}

/// N candidates being decoded together: an iterator over every stream's tokens, one
/// batched step at a time. [`generate_n`] drives it with a callback; use it directly to
/// pull tokens, stop streams early, or interleave other work between steps.
///
/// ```no_run
/// # fn main() -> anyhow::Result<()> {
/// use edgereason::{Engine, EngineOptions, GenerateParams};
/// use edgereason::sched::best_of_n::{Decoding, VoteParams};
/// let engine = Engine::load("smollm2-135m", &EngineOptions::default())?;
/// let prompt = engine.encode(&engine.chat_prompt(None, "What is 6*7?")?)?;
/// let mut run = Decoding::start(&engine, &prompt, 4, &GenerateParams::default())?;
/// while let Some(tok) = run.next() {
///     let tok = tok?;
///     print!("[{}]{}", tok.stream, tok.text);
/// }
/// let result = run.finish(&VoteParams::default());
/// println!("\nanswer: {:?}", result.answer);
/// # Ok(()) }
/// ```
pub struct Decoding<'e> {
    engine: &'e Engine,
    session: crate::model::Session,
    params: GenerateParams,
    live: Vec<Live>,
    logits_of: Vec<Vec<f32>>,
    pending: std::collections::VecDeque<StreamToken>,
    prompt_tokens: usize,
    ttft_s: f64,
    decode_start: Instant,
    generated: usize,
}

impl<'e> Decoding<'e> {
    /// Prefill `prompt` once and fork `n` streams over its KV blocks. Stream `i` samples
    /// with seed `params.sampling.seed + i`, so results are reproducible.
    pub fn start(engine: &'e Engine, prompt: &[u32], n: usize, params: &GenerateParams) -> Result<Self> {
        if prompt.is_empty() || n == 0 {
            bail!("need a prompt and at least one candidate");
        }
        let max_new = params.max_tokens;
        if prompt.len() + max_new > engine.model.config.n_ctx {
            bail!("prompt ({}) + max tokens ({max_new}) exceed the model's context ({})", prompt.len(), engine.model.config.n_ctx);
        }
        // Prompt once, then each stream's own tokens (+ a block each for copy-on-write).
        let slots = prompt.len() + n * (max_new + BLOCK_SIZE) + BLOCK_SIZE;
        let mut session = crate::model::Session::new(engine.model.clone(), slots, engine.options.max_rows);
        let t0 = Instant::now();
        let logits = session.forward(prompt)?;
        let ttft_s = t0.elapsed().as_secs_f64();
        let streams = session.fork(session.main, n)?;
        session.release(session.main)?;
        let live = streams
            .iter()
            .enumerate()
            .map(|(i, &s)| Live {
                index: i,
                stream: s,
                sampler: Sampler::new(SamplingParams { seed: params.sampling.seed.wrapping_add(i as u64), ..params.sampling.clone() }),
                tokens: Vec::new(),
                text: String::new(),
                logprob: 0.0,
                finish: None,
            })
            .collect();
        Ok(Decoding {
            engine,
            session,
            params: params.clone(),
            live,
            logits_of: vec![logits; n],
            pending: Default::default(),
            prompt_tokens: prompt.len(),
            ttft_s,
            decode_start: Instant::now(),
            generated: 0,
        })
    }

    /// Whether every stream has finished.
    pub fn is_finished(&self) -> bool {
        self.live.iter().all(|l| l.finish.is_some())
    }

    /// Stop stream `i` (its candidate keeps what it has, finish reason "stop").
    pub fn stop_stream(&mut self, i: usize) {
        if let Some(l) = self.live.get_mut(i) {
            l.finish.get_or_insert("stop");
        }
    }

    /// Text of stream `i` so far.
    pub fn text(&self, i: usize) -> &str {
        &self.live[i].text
    }

    /// One batched step: sample every live stream from its logits, then advance all that
    /// go on in one forward pass. Returns the tokens sampled (empty once all finished).
    pub fn step(&mut self) -> Result<Vec<StreamToken>> {
        let engine = self.engine;
        let max_new = self.params.max_tokens;
        let mut produced = Vec::new();
        let mut rows = Vec::new();
        for (l, lg) in self.live.iter_mut().zip(&self.logits_of) {
            if l.finish.is_some() {
                continue;
            }
            let id = l.sampler.sample(lg);
            l.logprob += log_prob(lg, id);
            if engine.eos_token_ids.contains(&id) {
                l.finish = Some("eos");
                continue;
            }
            l.tokens.push(id);
            self.generated += 1;
            let full = engine.decode(&l.tokens)?;
            let mut new = String::new();
            if !full.ends_with('\u{FFFD}') {
                new = full.get(l.text.len()..).unwrap_or("").to_string();
                l.text = full;
            }
            produced.push(StreamToken { stream: l.index, id, text: new });
            if self.params.stop.iter().any(|s| l.text.ends_with(s.as_str())) {
                l.finish = Some("stop");
            } else if l.tokens.len() >= max_new {
                l.finish = Some("length");
            }
            if l.finish.is_none() {
                rows.push((l.index, l.stream, id));
            }
        }
        // One batched step for all live streams (in chunks of the LM head's row count).
        for chunk in rows.chunks(self.session.lm_rows) {
            let batch: Vec<_> = chunk.iter().map(|&(_, s, id)| (s, id)).collect();
            let out = self.session.forward_rows(&batch)?;
            for (&(i, _, _), lg) in chunk.iter().zip(out) {
                self.logits_of[i] = lg;
            }
        }
        Ok(produced)
    }

    /// Every candidate with its answer, and the vote.
    pub fn finish(self, vote_params: &VoteParams) -> BestOfN {
        let decode_s = self.decode_start.elapsed().as_secs_f64();
        let kv_bytes_used = self.session.pool.used_blocks() as u64 * BLOCK_SIZE as u64 * self.session.kv_bytes_per_token();
        let candidates: Vec<Candidate> = self
            .live
            .into_iter()
            .map(|l| Candidate {
                index: l.index,
                answer: extract_answer(&l.text, vote_params.answer_regex.as_ref()),
                text: l.text,
                tokens: l.tokens,
                logprob: l.logprob,
                finish_reason: l.finish.unwrap_or("length").to_string(),
            })
            .collect();
        let answers: Vec<Option<String>> = candidates.iter().map(|c| c.answer.clone()).collect();
        let (answer, votes) = vote(&answers, &vec![1.0; answers.len()]);
        BestOfN {
            candidates,
            answer,
            votes,
            prompt_tokens: self.prompt_tokens,
            ttft_ms: self.ttft_s * 1e3,
            decode_tokens_per_s: self.generated as f64 / decode_s.max(1e-9),
            kv_bytes_used,
        }
    }
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
                    self.live.iter_mut().for_each(|l| l.finish = l.finish.or(Some("error")));
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
    Ok(run.finish(vote_params))
}
