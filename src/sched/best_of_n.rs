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

/// Generate `n` candidates for `prompt`. Stream `i` samples with seed `params.seed + i`, so
/// results are reproducible. `on_token(i, id, text)` sees every stream's tokens as they
/// come; returning `false` stops stream `i`.
pub fn generate_n(
    engine: &Engine,
    prompt: &[u32],
    n: usize,
    params: &GenerateParams,
    vote_params: &VoteParams,
    mut on_token: impl FnMut(usize, u32, &str) -> bool,
) -> Result<BestOfN> {
    if prompt.is_empty() || n == 0 {
        bail!("need a prompt and at least one candidate");
    }
    let max_new = params.max_tokens;
    // Prompt once, then each stream's own tokens (+ a block each for copy-on-write).
    let slots = prompt.len() + n * (max_new + BLOCK_SIZE) + BLOCK_SIZE;
    if prompt.len() + max_new > engine.model.config.n_ctx {
        bail!("prompt ({}) + max tokens ({max_new}) exceed the model's context ({})", prompt.len(), engine.model.config.n_ctx);
    }
    let mut session = crate::model::Session::new(engine.model.clone(), slots, engine.options.max_rows);
    let t0 = Instant::now();
    let logits = session.forward(prompt)?;
    let ttft = t0.elapsed().as_secs_f64();
    let streams = session.fork(session.main, n)?;
    session.release(session.main)?;
    let mut live: Vec<Live> = streams
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
    let mut logits_of: Vec<Vec<f32>> = vec![logits; n];
    let t1 = Instant::now();
    let mut generated = 0usize;
    loop {
        // Sample every live stream from its own logits.
        let mut rows = Vec::new();
        for (l, lg) in live.iter_mut().zip(&logits_of) {
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
            generated += 1;
            let full = engine.decode(&l.tokens)?;
            if !full.ends_with('\u{FFFD}') {
                let new = full.get(l.text.len()..).unwrap_or("").to_string();
                l.text = full;
                if !on_token(l.index, id, &new) {
                    l.finish = Some("stop");
                }
            }
            if params.stop.iter().any(|s| l.text.ends_with(s.as_str())) {
                l.finish = Some("stop");
            } else if l.tokens.len() >= max_new {
                l.finish = Some("length");
            }
            if l.finish.is_none() {
                rows.push((l.index, l.stream, id));
            }
        }
        if rows.is_empty() {
            break;
        }
        // One batched step for all live streams (in chunks of the LM head's row count).
        for chunk in rows.chunks(session.lm_rows) {
            let batch: Vec<_> = chunk.iter().map(|&(_, s, id)| (s, id)).collect();
            let out = session.forward_rows(&batch)?;
            for (&(i, _, _), lg) in chunk.iter().zip(out) {
                logits_of[i] = lg;
            }
        }
    }
    let decode_s = t1.elapsed().as_secs_f64();
    let kv_bytes_used = session.pool.used_blocks() as u64 * BLOCK_SIZE as u64 * session.kv_bytes_per_token();
    let candidates: Vec<Candidate> = live
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
    Ok(BestOfN {
        candidates,
        answer,
        votes,
        prompt_tokens: prompt.len(),
        ttft_ms: ttft * 1e3,
        decode_tokens_per_s: generated as f64 / decode_s.max(1e-9),
        kv_bytes_used,
    })
}
