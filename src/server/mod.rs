//! `edgereason serve`: an OpenAI-compatible HTTP server over the continuous-batching
//! [`Scheduler`]. Endpoints: `POST /v1/chat/completions`, `POST /v1/completions` (JSON, or
//! server-sent events with `stream: true`), `GET /v1/models`, `GET /health`, `GET /metrics`
//! (Prometheus text). Extensions in the request body: `reasoning` (auto|on|off), `adapter`,
//! `budget`, `state_budget`, `vote` (majority|weighted); with `n` > 1 the response carries
//! the voted answer and per-candidate fields under `edgereason`.
//!
//! ```no_run
//! # async fn run() -> anyhow::Result<()> {
//! use edgereason::engine::{Engine, EngineOptions};
//! use edgereason::sched::serving::{Scheduler, SchedulerOptions};
//! use edgereason::server::{openai::ServingDefaults, ServerState};
//! use std::sync::Arc;
//! let engine = Arc::new(Engine::load("smollm2-135m", &EngineOptions::default())?);
//! let defaults = ServingDefaults { max_tokens: 512, n_ctx: engine.n_ctx(), ..Default::default() };
//! let scheduler = Scheduler::start(engine, SchedulerOptions::default())?;
//! let state = Arc::new(ServerState::new(scheduler, defaults, "smollm2-135m", None));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! edgereason::server::serve(state, listener).await
//! # }
//! ```

pub mod openai;

use crate::engine::Engine;
use crate::sched::best_of_n::BestOfN;
use crate::sched::serving::{Event, Request, Scheduler, SubmitError, Submitted};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use openai::{
    finish_reason, parse, sendable_len, strip_stop, ApiError, Parsed, Prompt, ServingDefaults,
};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// What every handler shares.
pub struct ServerState {
    pub scheduler: Scheduler,
    pub defaults: ServingDefaults,
    pub model_name: String,
    pub api_key: Option<String>,
    next_id: AtomicU64,
}

impl ServerState {
    pub fn new(
        scheduler: Scheduler,
        defaults: ServingDefaults,
        model_name: &str,
        api_key: Option<String>,
    ) -> Self {
        ServerState {
            scheduler,
            defaults,
            model_name: model_name.to_string(),
            api_key,
            next_id: AtomicU64::new(1),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut r = (status, Json(self.body())).into_response();
        if self.status == 429 {
            r.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        r
    }
}

/// The routes.
pub fn router(state: Arc<ServerState>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Serve on `listener` until Ctrl-C.
pub async fn serve(
    state: Arc<ServerState>,
    listener: tokio::net::TcpListener,
) -> anyhow::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

fn authorize(state: &ServerState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(key) = &state.api_key else {
        return Ok(());
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if given == Some(key.as_str()) {
        return Ok(());
    }
    Err(ApiError {
        status: 401,
        message: "missing or wrong API key (Authorization: Bearer <key>)".into(),
        kind: "authentication_error",
        param: None,
    })
}

async fn models(
    State(state): State<Arc<ServerState>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    authorize(&state, &headers)?;
    Ok(Json(json!({
        "object": "list",
        "data": [{"id": state.model_name, "object": "model", "created": 0, "owned_by": "edgereason",
                  "adapters": state.defaults.adapters}],
    })))
}

async fn metrics(State(state): State<Arc<ServerState>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.scheduler.metrics().render(),
    )
}

async fn chat_completions(
    State(state): State<Arc<ServerState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    complete(state, headers, body, true)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn completions(
    State(state): State<Arc<ServerState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    complete(state, headers, body, false)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// Tokenize the prompt, fit max_tokens to the context left, submit.
fn submit(state: &ServerState, parsed: &mut Parsed) -> Result<(Submitted, usize), ApiError> {
    let engine = state.scheduler.engine();
    let tokens = match &parsed.prompt {
        Prompt::Chat(msgs) => engine.chat(msgs).and_then(|p| engine.encode(&p)),
        Prompt::Text(t) => engine.encode(t),
        Prompt::Tokens(t) => Ok(t.clone()),
    }
    .map_err(|e| ApiError::invalid("messages", format!("{e:#}")))?;
    let n_vocab = engine.model.config.n_vocab;
    if let Some(t) = tokens.iter().find(|&&t| t as usize >= n_vocab) {
        return Err(ApiError::invalid(
            "prompt",
            format!("token id {t} is outside the vocabulary ({n_vocab})"),
        ));
    }
    let left = state.defaults.n_ctx.saturating_sub(tokens.len());
    if left == 0 {
        return Err(ApiError::invalid(
            "messages",
            format!(
                "the prompt is {} tokens, the context is {}",
                tokens.len(),
                state.defaults.n_ctx
            ),
        ));
    }
    if !parsed.max_tokens_given {
        parsed.params.max_tokens = parsed.params.max_tokens.min(left);
    }
    let req = Request {
        prompt: tokens.clone(),
        n: parsed.n,
        params: parsed.params.clone(),
        vote: parsed.vote.clone(),
    };
    let sub = state.scheduler.submit(req).map_err(|e| match e {
        SubmitError::QueueFull(_) => ApiError {
            status: 429,
            message: e.to_string(),
            kind: "rate_limit_error",
            param: None,
        },
        SubmitError::Invalid(m) => {
            let param = if m.contains("max_tokens") {
                "max_tokens"
            } else {
                ""
            };
            ApiError::invalid(param, m)
        }
        SubmitError::Stopped => ApiError {
            status: 503,
            message: e.to_string(),
            kind: "server_error",
            param: None,
        },
    })?;
    Ok((sub, tokens.len()))
}

async fn complete(
    state: Arc<ServerState>,
    headers: HeaderMap,
    body: Bytes,
    chat: bool,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    let mut parsed = parse(&body, chat, &state.defaults)?;
    let (sub, _) = submit(&state, &mut parsed)?;
    let id = format!(
        "{}-{}",
        if chat { "chatcmpl" } else { "cmpl" },
        state.next_id.fetch_add(1, Ordering::Relaxed)
    );
    let reply = Reply {
        id,
        model: state.model_name.clone(),
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        chat,
        stops: parsed.params.stop.clone(),
        logprobs: parsed.logprobs,
        include_usage: parsed.include_usage,
        n: parsed.n,
    };
    if parsed.stream {
        Ok(stream(state, reply, sub).into_response())
    } else {
        Ok(Json(collect(&state, &reply, sub).await?).into_response())
    }
}

/// What a response needs besides the result.
#[derive(Clone)]
struct Reply {
    id: String,
    model: String,
    created: u64,
    chat: bool,
    stops: Vec<String>,
    logprobs: bool,
    include_usage: bool,
    n: usize,
}

impl Reply {
    fn object(&self, chunk: bool) -> &'static str {
        match (self.chat, chunk) {
            (true, false) => "chat.completion",
            (true, true) => "chat.completion.chunk",
            (false, _) => "text_completion",
        }
    }

    fn envelope(&self, chunk: bool, choices: Value) -> Value {
        json!({"id": self.id, "object": self.object(chunk), "created": self.created, "model": self.model, "choices": choices})
    }

    /// One choice of a chunk: a delta of text (and its tokens' log-probs), or the finish.
    fn chunk_choice(
        &self,
        index: usize,
        text: Option<&str>,
        logprobs: Option<Value>,
        finish: Option<&str>,
    ) -> Value {
        let mut c = if self.chat {
            let delta = match text {
                Some(t) => json!({"content": t}),
                None => json!({}),
            };
            json!({"index": index, "delta": delta})
        } else {
            json!({"index": index, "text": text.unwrap_or("")})
        };
        c["logprobs"] = logprobs.unwrap_or(Value::Null);
        c["finish_reason"] = finish.map_or(Value::Null, |f| json!(f));
        c
    }

    fn text_of(&self, c: &crate::sched::best_of_n::Candidate) -> String {
        if c.finish_reason == "stop" {
            strip_stop(&c.text, &self.stops).to_string()
        } else {
            c.text.clone()
        }
    }
}

/// A sampled token's text and log-prob, and the most likely tokens' at its position.
type TokenLogprob = (String, f32, Vec<(String, f32)>);

fn token_logprob(engine: &Engine, id: u32, logprob: f32, top: &[(u32, f32)]) -> TokenLogprob {
    let text = |id: u32| engine.decode(&[id]).unwrap_or_default();
    let top = top.iter().map(|&(t, lp)| (text(t), lp)).collect();
    (text(id), logprob, top)
}

/// Token log-probs in OpenAI's shape.
fn logprob_entries(entries: &[TokenLogprob]) -> Value {
    let entry = |t: &str, lp: f32| json!({"token": t, "logprob": lp, "bytes": t.as_bytes()});
    let content: Vec<Value> = entries
        .iter()
        .map(|(t, lp, top)| {
            let mut e = entry(t, *lp);
            e["top_logprobs"] = top.iter().map(|(t, lp)| entry(t, *lp)).collect();
            e
        })
        .collect();
    json!({"content": content})
}

fn usage(out: &BestOfN, cached: usize) -> Value {
    let completion: usize = out.candidates.iter().map(|c| c.tokens.len()).sum();
    json!({"prompt_tokens": out.prompt_tokens, "completion_tokens": completion,
           "total_tokens": out.prompt_tokens + completion,
           "prompt_tokens_details": {"cached_tokens": cached}})
}

/// The engine's own fields: the vote and each candidate's answer, score and budget use.
fn extension(out: &BestOfN) -> Value {
    let candidates: Vec<Value> = out
        .candidates
        .iter()
        .map(|c| {
            json!({"index": c.index, "answer": c.answer, "verifier_score": c.verifier_score,
                        "thinking_tokens": c.thinking_tokens, "answer_tokens": c.answer_tokens,
                        "forced": c.forced, "finish_reason": c.finish_reason})
        })
        .collect();
    json!({"answer": out.answer, "votes": out.votes, "reasoning": out.reasoning,
           "switcher_probability": out.switcher_probability, "ttft_ms": out.ttft_ms,
           "candidates": candidates})
}

fn failed(message: String) -> ApiError {
    ApiError {
        status: 500,
        message,
        kind: "server_error",
        param: None,
    }
}

/// Wait for the whole result (non-streaming).
async fn collect(
    state: &ServerState,
    reply: &Reply,
    mut sub: Submitted,
) -> Result<Value, ApiError> {
    let engine = state.scheduler.engine();
    let mut cached = 0;
    let mut lps: Vec<Vec<TokenLogprob>> = vec![Vec::new(); reply.n];
    while let Some(ev) = sub.events.recv().await {
        match ev {
            Event::Started { cached_tokens, .. } => cached = cached_tokens,
            Event::Token {
                stream,
                id,
                logprob: Some(lp),
                top_logprobs,
                ..
            } if reply.logprobs => {
                lps[stream].push(token_logprob(engine, id, lp, &top_logprobs));
            }
            Event::Token { .. } => {}
            Event::Failed(m) => return Err(failed(m)),
            Event::Done(out) => {
                let choices: Vec<Value> = out
                    .candidates
                    .iter()
                    .map(|c| {
                        let text = reply.text_of(c);
                        let mut v = if reply.chat {
                            json!({"index": c.index, "message": {"role": "assistant", "content": text}})
                        } else {
                            json!({"index": c.index, "text": text})
                        };
                        v["logprobs"] = if reply.logprobs { logprob_entries(&lps[c.index]) } else { Value::Null };
                        v["finish_reason"] = json!(finish_reason(&c.finish_reason));
                        v
                    })
                    .collect();
                let mut body = reply.envelope(false, json!(choices));
                body["usage"] = usage(&out, cached);
                body["edgereason"] = extension(&out);
                return Ok(body);
            }
        }
    }
    Err(failed("the scheduler dropped the request".into()))
}

/// Server-sent events: a chunk per token (text held back while it may begin a stop
/// string), then each choice's finish, the usage if asked, and `[DONE]`. A client that
/// goes away drops the request, which frees its rows and blocks.
fn stream(
    state: Arc<ServerState>,
    reply: Reply,
    sub: Submitted,
) -> Sse<impl tokio_stream::Stream<Item = Result<SseEvent, std::convert::Infallible>>> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<SseEvent, std::convert::Infallible>>(64);
    tokio::spawn(async move {
        tokio::select! {
            _ = pump(&state, &reply, sub, &tx) => {}
            _ = tx.closed() => {}
        }
    });
    Sse::new(tokio_stream::wrappers::ReceiverStream::new(rx)).keep_alive(KeepAlive::default())
}

/// Per choice while streaming: text so far and how much of it was sent.
#[derive(Clone, Default)]
struct Sent {
    text: String,
    sent: usize,
}

async fn pump(
    state: &ServerState,
    reply: &Reply,
    mut sub: Submitted,
    tx: &tokio::sync::mpsc::Sender<Result<SseEvent, std::convert::Infallible>>,
) {
    let send = |v: Value| async move {
        tx.send(Ok(SseEvent::default().data(v.to_string())))
            .await
            .is_ok()
    };
    let engine = state.scheduler.engine();
    let mut cached = 0;
    let mut sent = vec![Sent::default(); reply.n];
    if reply.chat {
        let first: Vec<Value> = (0..reply.n)
            .map(|i| json!({"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}))
            .collect();
        if !send(reply.envelope(true, json!(first))).await {
            return;
        }
    }
    while let Some(ev) = sub.events.recv().await {
        let chunk = match ev {
            Event::Started { cached_tokens, .. } => {
                cached = cached_tokens;
                continue;
            }
            Event::Token {
                stream,
                id,
                text,
                logprob,
                top_logprobs,
            } => {
                let s = &mut sent[stream];
                s.text.push_str(&text);
                let upto = sendable_len(&s.text, &reply.stops).max(s.sent);
                let delta = s.text[s.sent..upto].to_string();
                s.sent = upto;
                let lp = logprob
                    .filter(|_| reply.logprobs)
                    .map(|lp| logprob_entries(&[token_logprob(engine, id, lp, &top_logprobs)]));
                if delta.is_empty() && lp.is_none() {
                    continue;
                }
                reply.envelope(
                    true,
                    json!([reply.chunk_choice(stream, Some(&delta), lp, None)]),
                )
            }
            Event::Failed(m) => json!({"error": failed(m).body()["error"]}),
            Event::Done(out) => {
                finish_stream(reply, &out, cached, &mut sent, &send).await;
                break;
            }
        };
        if !send(chunk).await {
            return;
        }
    }
    let _ = tx.send(Ok(SseEvent::default().data("[DONE]"))).await;
}

/// The rest of each choice's text, its finish reason, then usage and the vote.
async fn finish_stream<F, Fut>(
    reply: &Reply,
    out: &BestOfN,
    cached: usize,
    sent: &mut [Sent],
    send: &F,
) where
    F: Fn(Value) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let choices: Vec<Value> = out
        .candidates
        .iter()
        .map(|c| {
            let text = reply.text_of(c);
            let rest = text.get(sent[c.index].sent..).unwrap_or("");
            reply.chunk_choice(
                c.index,
                (!rest.is_empty()).then_some(rest),
                None,
                Some(finish_reason(&c.finish_reason)),
            )
        })
        .collect();
    let mut last = reply.envelope(true, json!(choices));
    last["edgereason"] = extension(out);
    if !send(last).await {
        return;
    }
    if reply.include_usage {
        let mut u = reply.envelope(true, json!([]));
        u["usage"] = usage(out, cached);
        send(u).await;
    }
}
