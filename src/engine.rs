//! The library's front door: load a model onto a GPU, then generate, chat or score.
//!
//! ```no_run
//! use edgereason::engine::{Engine, EngineOptions, GenerateParams};
//! let engine = Engine::load("smollm2-135m", &EngineOptions::default())?;
//! let prompt = engine.chat_prompt(None, "What is the capital of France?")?;
//! let tokens = engine.encode(&prompt)?;
//! let out = engine.generate(&tokens, &GenerateParams::default(), |_id, text| {
//!     print!("{text}");
//!     true // keep going
//! })?;
//! println!("\n{:.1} tok/s", out.decode_tokens_per_s);
//! # anyhow::Ok(())
//! ```

use crate::gpu::GpuContext;
use crate::loader::chat_template::{ChatMessage, ChatTemplate};
use crate::loader::HostModel;
use crate::model::{GpuModel, Session};
use crate::sampling::{log_prob, Sampler, SamplingParams};
use anyhow::{bail, Context, Result};
use std::sync::Arc;
use std::time::Instant;

/// How to open a model.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// Adapter index or name/backend substring (`None`: `EDGEREASON_DEVICE`, else the best).
    pub device: Option<String>,
    /// KV cache length per stream (0: the model's context, capped at 4096).
    pub n_ctx: usize,
    /// Tokens per prefill step (the prefill matmul's M).
    pub max_rows: usize,
    /// Show progress bars on stderr.
    pub progress: bool,
    /// Run every matrix at int4, also those the file stores at 5-8 bits (which are
    /// otherwise kept at int8): smallest and fastest, less accurate.
    pub int4_only: bool,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self { device: None, n_ctx: 0, max_rows: 256, progress: false, int4_only: false }
    }
}

/// What to generate.
#[derive(Clone, Debug)]
pub struct GenerateParams {
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Generation also stops when the text ends with one of these.
    pub stop: Vec<String>,
}

impl Default for GenerateParams {
    fn default() -> Self {
        Self { max_tokens: 256, sampling: SamplingParams::default(), stop: Vec::new() }
    }
}

/// One finished generation with its timings.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Generation {
    pub text: String,
    pub tokens: Vec<u32>,
    pub prompt_tokens: usize,
    /// Sum of the chosen tokens' log-probabilities.
    pub logprob: f32,
    /// "eos", "stop", "length" or "callback".
    pub finish_reason: String,
    pub ttft_ms: f64,
    pub prefill_tokens_per_s: f64,
    pub decode_tokens_per_s: f64,
}

/// Per-position teacher-forced result.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PositionScore {
    /// The token that follows (scored).
    pub token: u32,
    pub logprob: f32,
    /// The five largest logits at this position: (id, logit).
    pub top5: Vec<(u32, f32)>,
}

/// `edgereason score`: log-probs of every token given its prefix.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Score {
    pub tokens: Vec<u32>,
    pub positions: Vec<PositionScore>,
    pub mean_nll: f64,
    pub perplexity: f64,
}

/// A model on a GPU with its tokenizer and chat template.
pub struct Engine {
    pub ctx: Arc<GpuContext>,
    pub model: Arc<GpuModel>,
    pub tokenizer: tokenizers::Tokenizer,
    pub chat_template: Option<ChatTemplate>,
    pub eos_token_ids: Vec<u32>,
    pub bos_token_id: Option<u32>,
    pub add_bos: bool,
    pub source: String,
    pub options: EngineOptions,
}

fn bar(show: bool, len: u64, msg: &str) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let b = indicatif::ProgressBar::new(len);
    b.set_style(indicatif::ProgressStyle::with_template("{msg:>12} [{bar:40}] {pos}/{len} {elapsed}").unwrap().progress_chars("=> "));
    b.set_message(msg.to_string());
    b
}

impl Engine {
    /// Load a model by registry name (pulled into the cache on first use) or path, or
    /// `synthetic:<name>` (random weights in a registry model's shapes, for benchmarks).
    pub fn load(spec: &str, options: &EngineOptions) -> Result<Self> {
        if let Some(host) = crate::loader::synthetic::synthetic_model(spec) {
            return Self::from_host(host, options);
        }
        let path = crate::pull::resolve_model(spec)?;
        let host = crate::loader::load_model(&path)?;
        Self::from_host(host, options)
    }

    /// Upload an already-loaded model.
    pub fn from_host(mut host: HostModel, options: &EngineOptions) -> Result<Self> {
        if options.int4_only {
            host.requantize_int8_to_int4();
        }
        let ctx = GpuContext::new(options.device.as_deref())?;
        let b = bar(options.progress, host.config.n_layer as u64, "upload");
        let model = GpuModel::upload(ctx.clone(), &host, |i, _| b.set_position(i as u64))?;
        b.finish_and_clear();
        let chat_template = match &host.chat_template {
            Some(t) => Some(ChatTemplate::new(t).with_context(|| format!("{}: chat template", host.source))?),
            None => None,
        };
        Ok(Engine {
            ctx,
            model: Arc::new(model),
            tokenizer: host.tokenizer,
            chat_template,
            eos_token_ids: host.eos_token_ids,
            bos_token_id: host.bos_token_id,
            add_bos: host.add_bos,
            source: host.source,
            options: options.clone(),
        })
    }

    /// KV cache length a new stream gets: `--ctx`, never past the trained context.
    pub fn n_ctx(&self) -> usize {
        match self.options.n_ctx {
            0 => self.model.config.n_ctx.min(4096),
            n => n.min(self.model.config.n_ctx),
        }
    }

    /// A fresh stream (its own KV cache).
    pub fn session(&self) -> Session {
        Session::new(self.model.clone(), self.n_ctx(), self.options.max_rows)
    }

    /// Token ids of `text` (BOS prepended when the model wants it; special tokens such as
    /// `<|im_start|>` in the text are recognised).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.tokenizer.encode(text, false).map_err(|e| anyhow::anyhow!("tokenizer: {e}"))?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        if self.add_bos {
            ids.extend(self.bos_token_id);
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer.decode(ids, true).map_err(|e| anyhow::anyhow!("tokenizer: {e}"))
    }

    fn token_text(&self, id: u32) -> String {
        self.tokenizer.id_to_token(id).unwrap_or_default()
    }

    /// The chat template applied to one user turn (and an optional system prompt).
    pub fn chat_prompt(&self, system: Option<&str>, user: &str) -> Result<String> {
        let Some(t) = &self.chat_template else {
            bail!("{}: the model has no chat template; use --raw", self.source);
        };
        let mut msgs = Vec::new();
        if let Some(s) = system {
            msgs.push(ChatMessage::new("system", s));
        }
        msgs.push(ChatMessage::new("user", user));
        let bos = self.bos_token_id.map(|i| self.token_text(i)).unwrap_or_default();
        let eos = self.eos_token_ids.first().map(|&i| self.token_text(i)).unwrap_or_default();
        t.render(&msgs, true, &bos, &eos)
    }

    /// Generate after `prompt`, calling `on_token(id, new_text)` for each token; return
    /// `false` from it to stop.
    pub fn generate(&self, prompt: &[u32], params: &GenerateParams, mut on_token: impl FnMut(u32, &str) -> bool) -> Result<Generation> {
        if prompt.is_empty() {
            bail!("empty prompt");
        }
        let n_ctx = self.n_ctx();
        if prompt.len() >= n_ctx {
            bail!("prompt is {} tokens, longer than the context ({n_ctx}); shorten it or raise --ctx", prompt.len());
        }
        let mut session = self.session();
        let mut sampler = Sampler::new(params.sampling.clone());
        let t0 = Instant::now();
        let mut logits = session.forward(prompt)?;
        let ttft = t0.elapsed().as_secs_f64();
        let max_new = params.max_tokens.min(n_ctx - prompt.len());
        let mut out = Vec::new();
        let mut text = String::new();
        let mut logprob = 0.0;
        let mut finish = "length";
        let t1 = Instant::now();
        for i in 0..max_new {
            let id = sampler.sample(&logits);
            logprob += log_prob(&logits, id);
            if self.eos_token_ids.contains(&id) {
                finish = "eos";
                break;
            }
            out.push(id);
            // Stream whole characters only: a token can end inside a UTF-8 sequence.
            let full = self.decode(&out)?;
            let new = if full.ends_with('\u{FFFD}') { "" } else { full.get(text.len()..).unwrap_or("") }.to_string();
            if !full.ends_with('\u{FFFD}') {
                text = full;
            }
            if !on_token(id, &new) {
                finish = "callback";
                break;
            }
            if params.stop.iter().any(|s| text.ends_with(s.as_str())) {
                finish = "stop";
                break;
            }
            if i + 1 < max_new {
                logits = session.forward(&[id])?;
            }
        }
        let decode_s = t1.elapsed().as_secs_f64();
        let n_dec = out.len().saturating_sub(1).max(1);
        Ok(Generation {
            text,
            prompt_tokens: prompt.len(),
            logprob,
            finish_reason: finish.into(),
            ttft_ms: ttft * 1e3,
            prefill_tokens_per_s: prompt.len() as f64 / ttft,
            decode_tokens_per_s: if out.len() > 1 { n_dec as f64 / decode_s } else { 0.0 },
            tokens: out,
        })
    }

    /// Teacher-forced log-probs of `tokens[1..]` given their prefixes.
    pub fn score(&self, tokens: &[u32]) -> Result<Score> {
        if tokens.len() < 2 {
            bail!("need at least 2 tokens to score, got {}", tokens.len());
        }
        if tokens.len() > self.n_ctx() {
            bail!("text is {} tokens, longer than the context ({}); raise --ctx", tokens.len(), self.n_ctx());
        }
        let mut session = self.session();
        let mut positions = Vec::with_capacity(tokens.len() - 1);
        session.forward_all(&tokens[..tokens.len() - 1], |i, logits| {
            let next = tokens[i + 1];
            let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
            idx.select_nth_unstable_by(4, |&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
            idx.truncate(5);
            idx.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
            positions.push(PositionScore { token: next, logprob: log_prob(logits, next), top5: idx.iter().map(|&i| (i, logits[i as usize])).collect() });
        })?;
        let mean_nll = -positions.iter().map(|p| p.logprob as f64).sum::<f64>() / positions.len() as f64;
        Ok(Score { tokens: tokens.to_vec(), positions, mean_nll, perplexity: mean_nll.exp() })
    }
}
