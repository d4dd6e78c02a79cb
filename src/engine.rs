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

use crate::adapters::{LoraAdapter, LoraApply, LoraSet, Switcher};
use crate::gpu::{GpuContext, GpuError};
use crate::loader::chat_template::{ChatMessage, ChatTemplate};
use crate::loader::HostModel;
use crate::model::{GpuModel, Session};
use crate::sampling::{log_prob, SamplingParams};
use anyhow::{bail, Context, Result};
use std::sync::Arc;

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
        Self {
            device: None,
            n_ctx: 0,
            max_rows: 256,
            progress: false,
            int4_only: false,
        }
    }
}

/// What to generate.
#[derive(Clone, Debug)]
pub struct GenerateParams {
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Generation also stops when the text ends with one of these.
    pub stop: Vec<String>,
    /// Whether the reasoning adapter decodes (the prompt is always encoded by the base
    /// model, so its KV cache serves either choice).
    pub reasoning: Reasoning,
    /// Apply the adapter to the prompt too (unmasked LoRA; for comparison).
    pub adapter_on_prompt: bool,
    /// Cap on thinking tokens (budget forcing).
    pub budget: Option<Budget>,
    /// Fed (not sampled) at the start of each stream when the reasoning adapter decodes, as
    /// reasoning chat templates open the reply. With masked LoRA the first token after the
    /// prompt is predicted at the prompt's last position, by the base model; the opener puts
    /// the adapter in charge from the first sampled token, as in training, where the
    /// response began with it.
    pub think_prefix: String,
    /// Report this many most likely tokens (with log-probs) beside each sampled one, at
    /// most 20 (OpenAI's `top_logprobs`); 0: none. Listed by the GPU sampler in the step
    /// that draws the token.
    pub top_logprobs: usize,
}

impl Default for GenerateParams {
    fn default() -> Self {
        Self {
            max_tokens: 256,
            sampling: SamplingParams::default(),
            stop: Vec::new(),
            reasoning: Reasoning::Off,
            adapter_on_prompt: false,
            budget: None,
            think_prefix: "<think>\n".into(),
            top_logprobs: 0,
        }
    }
}

/// Which adapter decodes: none, a named one, or a named one when the switcher head,
/// computed during the base prefill, says the prompt needs it.
#[derive(Clone, Debug, Default)]
pub enum Reasoning {
    #[default]
    Off,
    On {
        adapter: String,
    },
    Auto {
        adapter: String,
        switcher: Arc<Switcher>,
    },
}

/// Budget forcing (as s1): when a stream has written `thinking_tokens` tokens without
/// closing its reasoning with `end_marker`, `force` is injected and the stream gets
/// `answer_tokens` more to answer.
#[derive(Clone, Debug)]
pub struct Budget {
    pub thinking_tokens: usize,
    pub end_marker: String,
    pub force: String,
    pub answer_tokens: usize,
}

impl Budget {
    /// A cap of `thinking_tokens` with the default delimiters (`</think>`, s1's
    /// `</think>\n\nFinal answer:`) and 64 answer tokens.
    pub fn new(thinking_tokens: usize) -> Self {
        Budget {
            thinking_tokens,
            end_marker: "</think>".into(),
            force: "</think>\n\nFinal answer:".into(),
            answer_tokens: 64,
        }
    }
}

/// What the RL-trained adapters expect at the end of the user message when a budget is set.
pub fn budget_statement(thinking_tokens: usize) -> String {
    format!("\n(Reasoning budget: {thinking_tokens} tokens.)")
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
    /// Tokens up to and including the end of thinking (all, if it never closed), and after.
    pub thinking_tokens: usize,
    pub answer_tokens: usize,
    /// Whether the budget forced the end of thinking.
    pub forced: bool,
    /// Whether the reasoning adapter decoded, and the switcher's probability if it decided.
    pub reasoning: bool,
    pub switcher_probability: Option<f32>,
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
    /// Resident LoRA adapters (rebuilt on load/unload; sessions keep the set they began with).
    adapters: std::sync::RwLock<Option<Arc<LoraSet>>>,
}

fn bar(show: bool, len: u64, msg: &str) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let b = indicatif::ProgressBar::new(len);
    b.set_style(
        indicatif::ProgressStyle::with_template("{msg:>12} [{bar:40}] {pos}/{len} {elapsed}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
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
            Some(t) => Some(
                ChatTemplate::new(t).with_context(|| format!("{}: chat template", host.source))?,
            ),
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
            adapters: Default::default(),
        })
    }

    /// Load the PEFT adapter in `dir` under `name` (replacing one of that name), checked
    /// against this model. The base weights are untouched; new sessions see it.
    pub fn load_adapter(&self, name: &str, dir: &std::path::Path) -> Result<()> {
        let mut a = LoraAdapter::load(dir, &self.model.config)?;
        a.name = name.to_string();
        self.add_adapter(a);
        Ok(())
    }

    /// Make `adapter` resident (replacing one of the same name).
    pub fn add_adapter(&self, adapter: LoraAdapter) {
        let mut list: Vec<Arc<LoraAdapter>> = self
            .adapter_set()
            .map(|s| s.adapters.clone())
            .unwrap_or_default();
        list.retain(|a| a.name != adapter.name);
        list.push(Arc::new(adapter));
        let set = LoraSet::upload(&self.ctx, &self.model.config, list);
        *crate::sync::write(&self.adapters) = Some(Arc::new(set));
    }

    /// Drop adapter `name`.
    pub fn unload_adapter(&self, name: &str) -> Result<()> {
        let list: Vec<Arc<LoraAdapter>> = self
            .adapter_set()
            .map(|s| s.adapters.clone())
            .unwrap_or_default();
        if !list.iter().any(|a| a.name == name) {
            return Err(crate::adapters::AdapterError::NotLoaded(name.into()).into());
        }
        let rest: Vec<_> = list.into_iter().filter(|a| a.name != name).collect();
        let set = (!rest.is_empty())
            .then(|| Arc::new(LoraSet::upload(&self.ctx, &self.model.config, rest)));
        *crate::sync::write(&self.adapters) = set;
        Ok(())
    }

    /// Names of the resident adapters.
    pub fn adapter_names(&self) -> Vec<String> {
        self.adapter_set()
            .map(|s| s.adapters.iter().map(|a| a.name.clone()).collect())
            .unwrap_or_default()
    }

    /// The current adapter set, if any adapter is loaded.
    pub fn adapter_set(&self) -> Option<Arc<LoraSet>> {
        crate::sync::read(&self.adapters).clone()
    }

    /// KV cache length a new stream gets: `--ctx`, never past the trained context.
    pub fn n_ctx(&self) -> usize {
        match self.options.n_ctx {
            0 => self.model.config.n_ctx.min(4096),
            n => n.min(self.model.config.n_ctx),
        }
    }

    /// A fresh stream (its own KV cache) that can use the resident adapters.
    pub fn session(&self) -> Result<Session, GpuError> {
        self.session_with(self.n_ctx(), LoraApply::Fused)
    }

    /// A session of `slots` cache slots, adapters applied as `apply` says (an error,
    /// naming the limit, when the device cannot hold it).
    pub fn session_with(&self, slots: usize, apply: LoraApply) -> Result<Session, GpuError> {
        Session::with_adapters(
            self.model.clone(),
            slots,
            self.options.max_rows,
            self.adapter_set(),
            apply,
        )
    }

    /// Token ids of `text` (BOS prepended when the model wants it; special tokens such as
    /// `<|im_start|>` in the text are recognised).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| anyhow::anyhow!("tokenizer: {e}"))?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        if self.add_bos {
            ids.extend(self.bos_token_id);
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer
            .decode(ids, true)
            .map_err(|e| anyhow::anyhow!("tokenizer: {e}"))
    }

    fn token_text(&self, id: u32) -> String {
        self.tokenizer.id_to_token(id).unwrap_or_default()
    }

    /// The chat template applied to one user turn (and an optional system prompt).
    pub fn chat_prompt(&self, system: Option<&str>, user: &str) -> Result<String> {
        let mut msgs = Vec::new();
        if let Some(s) = system {
            msgs.push(ChatMessage::new("system", s));
        }
        msgs.push(ChatMessage::new("user", user));
        self.chat(&msgs)
    }

    /// The chat template applied to a conversation (system, user and assistant turns),
    /// opening the assistant's next reply.
    pub fn chat(&self, msgs: &[ChatMessage]) -> Result<String> {
        let Some(t) = &self.chat_template else {
            bail!("{}: the model has no chat template; use --raw", self.source);
        };
        let bos = self
            .bos_token_id
            .map(|i| self.token_text(i))
            .unwrap_or_default();
        let eos = self
            .eos_token_ids
            .first()
            .map(|&i| self.token_text(i))
            .unwrap_or_default();
        t.render(msgs, true, &bos, &eos)
    }

    /// Teacher-forced log-probs of `tokens[1..]` given their prefixes, with an adapter for
    /// the positions from `prompt_len` on (the first `prompt_len` tokens are the prompt,
    /// encoded by the base model: masked LoRA).
    pub fn score_with_adapter(
        &self,
        tokens: &[u32],
        adapter: &str,
        prompt_len: usize,
    ) -> Result<Score> {
        self.score_inner(tokens, Some((Some(adapter), prompt_len)))
    }

    /// Teacher-forced log-probs of `tokens[1..]` given their prefixes.
    pub fn score(&self, tokens: &[u32]) -> Result<Score> {
        self.score_inner(tokens, None)
    }

    /// As [`score`](Self::score), running the first `prompt_len` tokens as their own
    /// prefill, as [`score_with_adapter`](Self::score_with_adapter) does: a chunk's kernel
    /// path depends on its row count, so only equally split runs compare bit for bit.
    pub fn score_split(&self, tokens: &[u32], prompt_len: usize) -> Result<Score> {
        self.score_inner(tokens, Some((None, prompt_len)))
    }

    fn score_inner(&self, tokens: &[u32], split: Option<(Option<&str>, usize)>) -> Result<Score> {
        if tokens.len() < 2 {
            bail!("need at least 2 tokens to score, got {}", tokens.len());
        }
        if tokens.len() > self.n_ctx() {
            bail!(
                "text is {} tokens, longer than the context ({}); raise --ctx",
                tokens.len(),
                self.n_ctx()
            );
        }
        let mut session = self.session()?;
        let mut positions = Vec::with_capacity(tokens.len() - 1);
        let score_from = |session: &mut Session,
                          from: usize,
                          upto: usize,
                          positions: &mut Vec<PositionScore>| {
            session.forward_all(&tokens[from..upto], |i, logits| {
                let i = from + i;
                let next = tokens[i + 1];
                let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
                idx.select_nth_unstable_by(4, |&a, &b| {
                    logits[b as usize].total_cmp(&logits[a as usize])
                });
                idx.truncate(5);
                idx.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
                positions.push(PositionScore {
                    token: next,
                    logprob: log_prob(logits, next),
                    top5: idx.iter().map(|&i| (i, logits[i as usize])).collect(),
                });
            })
        };
        let last = tokens.len() - 1;
        match split {
            None => score_from(&mut session, 0, last, &mut positions)?,
            Some((adapter, prompt_len)) => {
                let p = prompt_len.min(last);
                score_from(&mut session, 0, p, &mut positions)?;
                if let Some(name) = adapter {
                    let set = self
                        .adapter_set()
                        .with_context(|| format!("adapter '{name}' is not loaded"))?;
                    let index = set
                        .index(name)
                        .with_context(|| format!("adapter '{name}' is not loaded"))?;
                    session.set_adapter(session.main, Some(index))?;
                }
                score_from(&mut session, p, last, &mut positions)?;
            }
        }
        let mean_nll =
            -positions.iter().map(|p| p.logprob as f64).sum::<f64>() / positions.len() as f64;
        Ok(Score {
            tokens: tokens.to_vec(),
            positions,
            mean_nll,
            perplexity: mean_nll.exp(),
        })
    }
}
