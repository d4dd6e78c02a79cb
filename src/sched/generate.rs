//! [`Engine::generate`]: one stream, a callback per token. It is one stream of
//! [`Decoding`], so it lives here, above the engine, which never imports the scheduler.

use super::best_of_n::{Decoding, VoteParams};
use crate::engine::{Engine, GenerateParams, Generation};
use anyhow::Result;

impl Engine {
    /// Generate after `prompt`, calling `on_token(id, new_text)` for each token; return
    /// `false` from it to stop. (One stream of [`Decoding`].)
    pub fn generate(
        &self,
        prompt: &[u32],
        params: &GenerateParams,
        mut on_token: impl FnMut(u32, &str) -> bool,
    ) -> Result<Generation> {
        let mut run = Decoding::start(self, prompt, 1, params)?;
        while !run.is_finished() {
            for t in run.step()? {
                if !on_token(t.id, &t.text) {
                    run.stop_stream_with(0, "callback");
                }
            }
        }
        let out = run.finish(&VoteParams::default())?;
        let c = out
            .candidates
            .into_iter()
            .next()
            .ok_or_else(|| anyhow::anyhow!("generate: the decoding returned no candidate"))?;
        Ok(Generation {
            text: c.text,
            prompt_tokens: prompt.len(),
            logprob: c.logprob,
            finish_reason: c.finish_reason,
            thinking_tokens: c.thinking_tokens,
            answer_tokens: c.answer_tokens,
            forced: c.forced,
            reasoning: out.reasoning,
            switcher_probability: out.switcher_probability,
            ttft_ms: out.ttft_ms,
            prefill_tokens_per_s: prompt.len() as f64 / (out.ttft_ms / 1e3),
            decode_tokens_per_s: out.decode_tokens_per_s,
            tokens: c.tokens,
        })
    }
}
