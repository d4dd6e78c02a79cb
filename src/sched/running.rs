//! A generation on its own thread: tokens arrive through a channel as they are decoded, and
//! any thread may cancel it. This is what the C ABI's `er_request` and the Python package's
//! token iterator are built on (a caller that pulls tokens must not hold the GPU loop).
//! [`RunningRequest::spawn`] decodes on a thread of its own; [`RunningRequest::submit`]
//! hands the request to a [`Scheduler`], whose steps batch it with every other request.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use edgereason::engine::{Engine, EngineOptions, GenerateParams};
//! use edgereason::sched::{best_of_n::VoteParams, running::RunningRequest};
//! use std::sync::Arc;
//! let engine = Arc::new(Engine::load("smollm2-135m", &EngineOptions::default())?);
//! let prompt = engine.encode(&engine.chat_prompt(None, "What is 6*7?")?)?;
//! let run = RunningRequest::spawn(engine, prompt, 1, GenerateParams::default(), VoteParams::default());
//! let cancel = run.canceller(); // e.g. for a "stop" button on another thread
//! while let Some(tok) = run.next_token() {
//!     print!("{}", tok.text);
//! }
//! # drop(cancel);
//! println!("\n{:?}", run.wait()?.candidates[0].finish_reason);
//! # Ok(()) }
//! ```

use super::best_of_n::{BestOfN, Decoding, StreamToken, VoteParams};
use super::serving::{Event, Request, Scheduler, SchedulerOptions, SubmitError};
use crate::engine::{Engine, GenerateParams};
use anyhow::{anyhow, Result};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, OnceLock};
use std::thread::JoinHandle;

/// One engine's requests from many callers (an app's threads, a binding's users): each
/// goes to a [`Scheduler`] started on first use, so concurrent requests share decode
/// steps. A request the scheduler cannot take (more KV than its pool, a full queue, or a
/// scheduler that could not start) runs on a thread of its own as before
/// ([`RunningRequest::spawn`]), and reports any error of its own from `wait`.
///
/// ```no_run
/// # fn main() -> anyhow::Result<()> {
/// use edgereason::engine::{Engine, EngineOptions, GenerateParams};
/// use edgereason::sched::{best_of_n::VoteParams, running::SharedScheduler};
/// use std::sync::Arc;
/// let engine = Arc::new(Engine::load("smollm2-135m", &EngineOptions::default())?);
/// let requests = Arc::new(SharedScheduler::new(engine.clone()));
/// let threads: Vec<_> = ["What is 6*7?", "Name a planet."]
///     .into_iter()
///     .map(|q| {
///         let (engine, requests) = (engine.clone(), requests.clone());
///         std::thread::spawn(move || -> anyhow::Result<String> {
///             let prompt = engine.encode(&engine.chat_prompt(None, q)?)?;
///             let params = GenerateParams::default();
///             let run = requests.start(prompt, 1, params, VoteParams::default());
///             Ok(run.wait()?.candidates[0].text.clone()) // both decoded in one batch
///         })
///     })
///     .collect();
/// for t in threads {
///     println!("{}", t.join().unwrap()?);
/// }
/// # Ok(()) }
/// ```
pub struct SharedScheduler {
    engine: Arc<Engine>,
    scheduler: OnceLock<Option<Scheduler>>,
}

impl SharedScheduler {
    /// Nothing is allocated until the first request.
    pub fn new(engine: Arc<Engine>) -> Self {
        SharedScheduler {
            engine,
            scheduler: OnceLock::new(),
        }
    }

    /// The scheduler's pool holds four full contexts: four streams at the context's
    /// length, or many shorter ones (a prompt's blocks are shared by its candidates).
    fn options(&self) -> SchedulerOptions {
        SchedulerOptions {
            kv_tokens: 4 * self.engine.n_ctx(),
            ..Default::default()
        }
    }

    /// Start `n` candidates of `prompt`, batched with every other request of this engine.
    pub fn start(
        &self,
        prompt: Vec<u32>,
        n: usize,
        params: GenerateParams,
        vote: VoteParams,
    ) -> RunningRequest {
        let scheduler = self
            .scheduler
            .get_or_init(|| Scheduler::start(self.engine.clone(), self.options()).ok());
        if let Some(s) = scheduler {
            if let Ok(run) =
                RunningRequest::submit(s, prompt.clone(), n, params.clone(), vote.clone())
            {
                return run;
            }
        }
        RunningRequest::spawn(self.engine.clone(), prompt, n, params, vote)
    }

    /// The scheduler's counters, once one has started.
    pub fn metrics(&self) -> Option<super::serving::Metrics> {
        self.scheduler.get()?.as_ref().map(Scheduler::metrics)
    }
}

/// Stops a [`RunningRequest`] from any thread: every stream ends at the next step, with
/// finish reason "cancelled". Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Canceller(Arc<AtomicBool>);

impl Canceller {
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// `n` candidates for one prompt (best-of-N with the vote, or one stream for `n` = 1)
/// decoding on a worker thread. Dropping it cancels the work and waits for the thread.
pub struct RunningRequest {
    tokens: mpsc::Receiver<StreamToken>,
    cancel: Canceller,
    worker: Option<JoinHandle<Result<BestOfN>>>,
}

impl RunningRequest {
    /// Start decoding. Errors (a prompt longer than the context, an adapter that is not
    /// loaded, ...) come from [`wait`](Self::wait), after the token channel closes.
    pub fn spawn(
        engine: Arc<Engine>,
        prompt: Vec<u32>,
        n: usize,
        params: GenerateParams,
        vote: VoteParams,
    ) -> Self {
        let (tx, tokens) = mpsc::channel();
        let cancel = Canceller::default();
        let flag = cancel.clone();
        let worker = std::thread::spawn(move || {
            let mut run = Decoding::start(&engine, &prompt, n, &params)?;
            while !run.is_finished() {
                if flag.is_cancelled() {
                    (0..n).for_each(|i| run.stop_stream_with(i, "cancelled"));
                    break;
                }
                for t in run.step()? {
                    // A closed receiver (the caller stopped reading) does not stop
                    // decoding: `wait` still gets the whole result.
                    let _ = tx.send(t);
                }
            }
            run.finish(&vote)
        });
        RunningRequest {
            tokens,
            cancel,
            worker: Some(worker),
        }
    }

    /// The same request through a [`Scheduler`]: it shares every decode step with the
    /// scheduler's other requests (continuous batching) instead of taking the GPU in turns,
    /// so concurrent callers (threads of an app, a binding's users) cost little more than
    /// one. Refused at once with the scheduler's reason (limits, sampling values, an
    /// adapter that is not loaded); later failures come from [`wait`](Self::wait). A
    /// cancel after the first token ends every candidate with finish reason "cancelled".
    pub fn submit(
        scheduler: &Scheduler,
        prompt: Vec<u32>,
        n: usize,
        params: GenerateParams,
        vote: VoteParams,
    ) -> Result<Self, SubmitError> {
        let request = Request {
            prompt,
            n,
            params,
            vote,
        };
        let mut submitted = scheduler.submit(request)?;
        let cancel = Canceller(submitted.cancel_flag());
        let (tx, tokens) = mpsc::channel();
        let worker = std::thread::spawn(move || {
            while let Some(event) = submitted.events.blocking_recv() {
                match event {
                    Event::Token {
                        stream,
                        id,
                        text,
                        logprob,
                        top_logprobs,
                    } => {
                        let _ = tx.send(StreamToken {
                            stream,
                            id,
                            text,
                            logprob,
                            top_logprobs,
                        });
                    }
                    Event::Done(result) => return Ok(*result),
                    Event::Failed(e) => return Err(anyhow!(e)),
                    Event::Started { .. } => {}
                }
            }
            Err(anyhow!(
                "the request ended without a result (cancelled before its first token, or the scheduler stopped)"
            ))
        });
        Ok(RunningRequest {
            tokens,
            cancel,
            worker: Some(worker),
        })
    }

    /// A handle that cancels this request from elsewhere.
    pub fn canceller(&self) -> Canceller {
        self.cancel.clone()
    }

    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    /// The next token of any stream, blocking until one is decoded; `None` once every
    /// stream has finished (or failed).
    pub fn next_token(&self) -> Option<StreamToken> {
        self.tokens.recv().ok()
    }

    /// The next token if one is ready now.
    pub fn try_next_token(&self) -> Option<StreamToken> {
        self.tokens.try_recv().ok()
    }

    /// Wait for the end and return the candidates and the vote (tokens not yet read are
    /// dropped).
    pub fn wait(mut self) -> Result<BestOfN> {
        self.join()
    }

    fn join(&mut self) -> Result<BestOfN> {
        let worker = self
            .worker
            .take()
            .ok_or_else(|| anyhow!("already waited"))?;
        worker
            .join()
            .map_err(|_| anyhow!("the generation thread panicked"))?
    }
}

impl Drop for RunningRequest {
    fn drop(&mut self) {
        if self.worker.is_some() {
            self.cancel.cancel();
            let _ = self.join();
        }
    }
}
