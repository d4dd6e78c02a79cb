//! `import edgereason`: the engine from Python (pyo3, built by maturin).
//!
//! ```python
//! import edgereason
//! eng = edgereason.Engine.load("smollm2-135m", load_shipped=True)
//! prompt = eng.chat([{"role": "user", "content": "What is 12 + 30?"}])
//! stream = eng.generate(prompt, max_tokens=64)
//! for tok in stream:            # tokens as they are decoded (the GIL is released)
//!     print(tok.text, end="", flush=True)
//! print(stream.result["candidates"][0]["finish_reason"])
//! best = eng.best_of(prompt, n=8, reasoning="on", vote="weighted")
//! print(best["answer"], best["votes"])
//! ```
//!
//! Every call that touches the GPU releases the GIL. Results are plain dicts (the same
//! fields as `edgereason run --json`); `score` returns numpy arrays.

// As the engine: no unwrap, expect or panic on an input path (src/lib.rs).
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::unreachable,
    clippy::todo,
    clippy::unimplemented
)]
// pyo3 0.22's #[pymethods] expansion converts PyErr into itself.
#![allow(clippy::useless_conversion)]

use ::edgereason as er;
use er::adapters::{Switcher, Verifier};
use er::engine::{Budget, GenerateParams};
use er::sampling::SamplingParams;
use er::sched::best_of_n::{BestOfN, VoteParams};
use er::sched::heads::{Heads, ReasoningMode};
use er::sched::running::{Canceller, RunningRequest, SharedScheduler};
use numpy::{IntoPyArray, PyArrayMethods};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

/// The engine's failures (a missing file, a prompt longer than the context, a GPU error).
fn failed(e: anyhow::Error) -> PyErr {
    PyRuntimeError::new_err(er::error_line(&e))
}

fn bad(e: impl std::fmt::Display) -> PyErr {
    PyValueError::new_err(e.to_string())
}

/// A prompt: text as the model reads it (apply `Engine.chat` first for a chat model) or
/// token ids.
#[derive(FromPyObject)]
enum Prompt {
    Text(String),
    Ids(Vec<u32>),
}

/// A model on a GPU with its adapters and heads.
#[pyclass(frozen, module = "edgereason")]
struct Engine {
    engine: Arc<er::engine::Engine>,
    heads: Arc<Heads>,
    /// Every generate/best_of call goes through one scheduler: calls from several
    /// threads share decode steps.
    requests: SharedScheduler,
}

/// One token of one candidate.
#[pyclass(frozen, get_all, module = "edgereason")]
struct Token {
    /// Candidate index.
    stream: usize,
    id: u32,
    /// Text this token completes ("" while it ends inside a UTF-8 character).
    text: String,
    /// Its log-probability (None for a forced token: the think opener, budget forcing).
    logprob: Option<f32>,
    /// [(id, log-prob)] of the most likely tokens at its position, most likely first,
    /// where `generate(top_logprobs=n)` asked.
    top_logprobs: Vec<(u32, f32)>,
}

#[pymethods]
impl Token {
    fn __repr__(&self) -> String {
        format!(
            "Token(stream={}, id={}, text={:?}, logprob={:?})",
            self.stream, self.id, self.text, self.logprob
        )
    }
}

/// The tokens of a running generation, as an iterator; `result` after the end.
#[pyclass(frozen, module = "edgereason")]
struct TokenStream {
    run: Mutex<Option<RunningRequest>>,
    cancel: Canceller,
    result: Mutex<Option<PyObject>>,
}

/// What `generate` and `best_of` take besides the prompt.
struct Options<'a> {
    max_tokens: usize,
    sampling: SamplingParams,
    stop: Vec<String>,
    reasoning: &'a str,
    adapter: Option<&'a str>,
    budget: Option<usize>,
    answer_tokens: usize,
    vote: &'a str,
    answer_regex: Option<&'a str>,
}

impl Engine {
    fn tokens(&self, prompt: Prompt) -> PyResult<Vec<u32>> {
        match prompt {
            Prompt::Text(t) => self.engine.encode(&t).map_err(failed),
            Prompt::Ids(ids) => Ok(ids),
        }
    }

    fn params(&self, o: Options) -> PyResult<(GenerateParams, VoteParams)> {
        o.sampling.validate().map_err(bad)?;
        let mode: ReasoningMode = o.reasoning.parse().map_err(bad)?;
        let reasoning = (self.heads)
            .reasoning(&self.engine, mode, o.adapter, o.budget.is_some())
            .map_err(bad)?;
        let weighted = match o.vote {
            "majority" => false,
            "weighted" => true,
            v => return Err(bad(format!("vote '{v}': expected majority or weighted"))),
        };
        let answer_regex = o
            .answer_regex
            .map(regex::Regex::new)
            .transpose()
            .map_err(|e| bad(format!("answer_regex: {e}")))?;
        let vote = self.heads.vote(weighted, answer_regex).map_err(bad)?;
        let params = GenerateParams {
            max_tokens: o.max_tokens,
            sampling: o.sampling,
            stop: o.stop,
            reasoning,
            budget: o.budget.map(|t| Budget {
                answer_tokens: o.answer_tokens,
                ..Budget::new(t)
            }),
            ..Default::default()
        };
        Ok((params, vote))
    }
}

/// A serde value as Python objects (through the json module: results are small).
fn to_py<T: serde::Serialize>(py: Python<'_>, value: &T) -> PyResult<PyObject> {
    let json = serde_json::to_string(value).map_err(|e| failed(e.into()))?;
    Ok(py
        .import_bound("json")?
        .call_method1("loads", (json,))?
        .unbind())
}

fn result_dict(py: Python<'_>, r: &BestOfN) -> PyResult<PyObject> {
    to_py(py, r)
}

#[pymethods]
impl Engine {
    /// Load a model: a registry name (pulled into the cache on first use), a .gguf file
    /// or an HF directory. `load_shipped` also loads adapters/<model>/ (the reasoning
    /// adapters, the switcher and the verifier).
    #[staticmethod]
    #[pyo3(signature = (model, *, device=None, n_ctx=0, max_rows=256, int4_only=false, load_shipped=false))]
    fn load(
        py: Python<'_>,
        model: &str,
        device: Option<String>,
        n_ctx: usize,
        max_rows: usize,
        int4_only: bool,
        load_shipped: bool,
    ) -> PyResult<Self> {
        if max_rows == 0 {
            return Err(bad("max_rows must be at least 1"));
        }
        let opts = er::engine::EngineOptions {
            device,
            n_ctx,
            max_rows,
            int4_only,
            ..Default::default()
        };
        py.allow_threads(|| {
            let engine = Arc::new(er::engine::Engine::load(model, &opts)?);
            let heads = Arc::new(Heads::default());
            if load_shipped {
                heads.load_shipped(&engine, model)?;
            }
            Ok(Engine {
                requests: SharedScheduler::new(engine.clone()),
                engine,
                heads,
            })
        })
        .map_err(failed)
    }

    /// Where the model came from.
    #[getter]
    fn source(&self) -> String {
        self.engine.source.clone()
    }

    /// Tokens one stream may hold (prompt + reply).
    #[getter]
    fn n_ctx(&self) -> usize {
        self.engine.n_ctx()
    }

    /// The GPU adapter it runs on.
    #[getter]
    fn device(&self) -> String {
        self.engine.ctx.describe()
    }

    /// The shared scheduler's counters, or None before the first generate/best_of:
    /// requests admitted, completed and cancelled, tokens generated, and
    /// `peak_step_streams`, the most streams one decode step decoded (above 1 once calls
    /// from several threads were batched), and the kernel variants built in all and while
    /// idle (`pipelines_compiled`, `pipelines_warmed`: the scheduler builds them between calls).
    fn scheduler_metrics(&self) -> Option<HashMap<&'static str, u64>> {
        let m = self.requests.metrics()?;
        Some(HashMap::from([
            ("admitted", m.admitted),
            ("completed", m.completed),
            ("cancelled", m.cancelled),
            ("generated_tokens", m.generated_tokens),
            ("peak_step_streams", m.peak_step_streams as u64),
            ("pipelines_compiled", m.pipelines_compiled),
            ("pipelines_warmed", m.pipelines_warmed),
        ]))
    }

    /// Names of the loaded LoRA adapters.
    #[getter]
    fn adapters(&self) -> Vec<String> {
        self.engine.adapter_names()
    }

    fn encode(&self, text: &str) -> PyResult<Vec<u32>> {
        self.engine.encode(text).map_err(failed)
    }

    fn decode(&self, ids: Vec<u32>) -> PyResult<String> {
        self.engine.decode(&ids).map_err(failed)
    }

    /// The chat template applied to `messages` (dicts with "role" and "content"),
    /// opening the assistant's reply.
    fn chat(&self, messages: Vec<HashMap<String, String>>) -> PyResult<String> {
        let msgs = messages
            .into_iter()
            .enumerate()
            .map(|(i, m)| match (m.get("role"), m.get("content")) {
                (Some(r), Some(c)) => Ok(er::loader::chat_template::ChatMessage::new(r, c)),
                _ => Err(bad(format!("messages[{i}] needs 'role' and 'content'"))),
            })
            .collect::<PyResult<Vec<_>>>()?;
        self.engine.chat(&msgs).map_err(failed)
    }

    /// Load the PEFT adapter in `path` as `name` (checked against this model).
    fn load_adapter(&self, py: Python<'_>, name: &str, path: &str) -> PyResult<()> {
        py.allow_threads(|| self.engine.load_adapter(name, path.as_ref()))
            .map_err(failed)
    }

    fn unload_adapter(&self, name: &str) -> PyResult<()> {
        self.engine.unload_adapter(name).map_err(failed)
    }

    /// Load the switcher head used by `reasoning="auto"`.
    #[pyo3(signature = (path, threshold=None))]
    fn load_switcher(&self, path: &str, threshold: Option<f32>) -> PyResult<()> {
        let mut s = Switcher::load(path.as_ref(), self.engine.model.config.n_embd)
            .map_err(|e| failed(e.into()))?;
        if let Some(t) = threshold {
            s.threshold = t;
        }
        self.heads.set_switcher(Some(s));
        Ok(())
    }

    /// Load the verifier head that scores best-of-N candidates.
    fn load_verifier(&self, path: &str) -> PyResult<()> {
        let v = Verifier::load(path.as_ref(), self.engine.model.config.n_embd)
            .map_err(|e| failed(e.into()))?;
        self.heads.set_verifier(Some(v));
        Ok(())
    }

    /// Start generating after `prompt` (text or ids); iterate the result for tokens.
    /// `reasoning` is "off", "on" or "auto"; `budget` caps thinking tokens;
    /// `top_logprobs` (≤ 20) lists that many most likely tokens on each token.
    #[pyo3(signature = (prompt, *, max_tokens=256, temperature=0.0, top_p=1.0, top_k=0, seed=0,
        stop=Vec::new(), reasoning="off", adapter=None, budget=None, answer_tokens=64,
        top_logprobs=0))]
    #[allow(clippy::too_many_arguments)]
    fn generate(
        &self,
        prompt: Prompt,
        max_tokens: usize,
        temperature: f32,
        top_p: f32,
        top_k: usize,
        seed: u64,
        stop: Vec<String>,
        reasoning: &str,
        adapter: Option<&str>,
        budget: Option<usize>,
        answer_tokens: usize,
        top_logprobs: usize,
    ) -> PyResult<TokenStream> {
        if top_logprobs > er::ops::sampling::MAX_TOP_LOGPROBS as usize {
            return Err(bad(format!("top_logprobs {top_logprobs}: at most 20")));
        }
        let sampling = SamplingParams {
            temperature,
            top_p,
            top_k,
            seed,
        };
        let (params, vote) = self.params(Options {
            max_tokens,
            sampling,
            stop,
            reasoning,
            adapter,
            budget,
            answer_tokens,
            vote: "majority",
            answer_regex: None,
        })?;
        let params = GenerateParams {
            top_logprobs,
            ..params
        };
        let tokens = self.tokens(prompt)?;
        let run = self.requests.start(tokens, 1, params, vote);
        Ok(TokenStream {
            cancel: run.canceller(),
            run: Mutex::new(Some(run)),
            result: Mutex::new(None),
        })
    }

    /// `n` sampled candidates decoded together, then the vote (majority, or weighted by
    /// the verifier). Returns a dict: candidates, answer, votes, timings.
    #[pyo3(signature = (prompt, n=8, *, max_tokens=256, temperature=0.8, top_p=1.0, top_k=0,
        seed=0, stop=Vec::new(), reasoning="off", adapter=None, budget=None, answer_tokens=64,
        vote="majority", answer_regex=None))]
    #[allow(clippy::too_many_arguments)]
    fn best_of(
        &self,
        py: Python<'_>,
        prompt: Prompt,
        n: usize,
        max_tokens: usize,
        temperature: f32,
        top_p: f32,
        top_k: usize,
        seed: u64,
        stop: Vec<String>,
        reasoning: &str,
        adapter: Option<&str>,
        budget: Option<usize>,
        answer_tokens: usize,
        vote: &str,
        answer_regex: Option<&str>,
    ) -> PyResult<PyObject> {
        if n == 0 || (n > 1 && temperature == 0.0) {
            return Err(bad(
                "best_of needs n >= 1, and a temperature > 0 when n > 1",
            ));
        }
        let sampling = SamplingParams {
            temperature,
            top_p,
            top_k,
            seed,
        };
        let (params, vote) = self.params(Options {
            max_tokens,
            sampling,
            stop,
            reasoning,
            adapter,
            budget,
            answer_tokens,
            vote,
            answer_regex,
        })?;
        let tokens = self.tokens(prompt)?;
        let r = py
            .allow_threads(|| self.requests.start(tokens, n, params, vote).wait())
            .map_err(failed)?;
        result_dict(py, &r)
    }

    /// Teacher-forced log-probabilities of `tokens[1:]` given their prefixes; with
    /// `adapter`, the first `prompt_len` tokens are the base model's (masked LoRA).
    /// Returns numpy arrays: tokens (n), logprobs (n-1), top5_ids and top5_logits (n-1, 5),
    /// and mean_nll, perplexity.
    #[pyo3(signature = (prompt, *, adapter=None, prompt_len=0))]
    fn score<'py>(
        &self,
        py: Python<'py>,
        prompt: Prompt,
        adapter: Option<&str>,
        prompt_len: usize,
    ) -> PyResult<Bound<'py, PyDict>> {
        let tokens = self.tokens(prompt)?;
        let s = py
            .allow_threads(|| match adapter {
                Some(a) => self.engine.score_with_adapter(&tokens, a, prompt_len),
                None => self.engine.score(&tokens),
            })
            .map_err(failed)?;
        let rows = s.positions.len();
        let top = |f: &dyn Fn(&(u32, f32)) -> f64| -> Vec<f64> {
            s.positions
                .iter()
                .flat_map(|p| (0..5).map(move |k| p.top5.get(k).map_or(f64::NAN, f)))
                .collect()
        };
        let ids: Vec<u32> = top(&|t| t.0 as f64).iter().map(|&v| v as u32).collect();
        let logits: Vec<f32> = top(&|t| t.1 as f64).iter().map(|&v| v as f32).collect();
        let d = PyDict::new_bound(py);
        d.set_item("tokens", s.tokens.clone().into_pyarray_bound(py))?;
        let lp: Vec<f32> = s.positions.iter().map(|p| p.logprob).collect();
        d.set_item("logprobs", lp.into_pyarray_bound(py))?;
        d.set_item("top5_ids", ids.into_pyarray_bound(py).reshape([rows, 5])?)?;
        d.set_item(
            "top5_logits",
            logits.into_pyarray_bound(py).reshape([rows, 5])?,
        )?;
        d.set_item("mean_nll", s.mean_nll)?;
        d.set_item("perplexity", s.perplexity)?;
        Ok(d)
    }

    fn __repr__(&self) -> String {
        format!(
            "Engine({:?} on {})",
            self.engine.source,
            self.engine.ctx.describe()
        )
    }
}

#[pymethods]
impl TokenStream {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<Token>> {
        let mut guard = self.lock_run()?;
        let Some(run) = guard.as_mut() else {
            return Ok(None);
        };
        match py.allow_threads(move || run.next_token()) {
            Some(t) => Ok(Some(Token {
                stream: t.stream,
                id: t.id,
                text: t.text,
                logprob: t.logprob,
                top_logprobs: t.top_logprobs,
            })),
            None => {
                drop(guard);
                self.finish(py)?;
                Ok(None)
            }
        }
    }

    /// Stop generating (from any thread); the iterator ends at the next step, and the
    /// candidate's finish reason is "cancelled".
    fn cancel(&self) {
        self.cancel.cancel();
    }

    /// The finished generation as a dict (waits for the end; unread tokens are dropped).
    #[getter]
    fn result(&self, py: Python<'_>) -> PyResult<PyObject> {
        self.finish(py)?;
        match self
            .result
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
        {
            Some(r) => Ok(r.clone_ref(py)),
            None => Err(PyRuntimeError::new_err(
                "the generation failed (its error was raised when it ended)",
            )),
        }
    }
}

impl TokenStream {
    /// The running request, if this thread may have it now. Never waits for the lock with
    /// the GIL held: the thread that holds it may be waiting for the GIL to return a token.
    fn lock_run(&self) -> PyResult<std::sync::MutexGuard<'_, Option<RunningRequest>>> {
        match self.run.try_lock() {
            Ok(guard) => Ok(guard),
            Err(std::sync::TryLockError::Poisoned(p)) => Ok(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => Err(PyRuntimeError::new_err(
                "the stream is being read on another thread (cancel() may be called from any thread)",
            )),
        }
    }

    fn finish(&self, py: Python<'_>) -> PyResult<()> {
        let Some(run) = self.lock_run()?.take() else {
            return Ok(());
        };
        let r = py.allow_threads(|| run.wait()).map_err(failed)?;
        *self.result.lock().unwrap_or_else(PoisonError::into_inner) = Some(result_dict(py, &r)?);
        Ok(())
    }
}

/// The module: `Engine`, `Token`, `TokenStream`, and `__version__`.
#[pymodule]
#[pyo3(name = "edgereason")]
fn edgereason_py(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Engine>()?;
    m.add_class::<Token>()?;
    m.add_class::<TokenStream>()?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
