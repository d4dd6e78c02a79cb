//! OpenAI request fields → a scheduler `[`Request`]`, and the response bodies. Fields are read
//! one by one from the JSON value so every wrong type or value names its field (`param`)
//! in a 400, as OpenAI's errors do. Unknown fields are ignored (clients send extras).

use crate::adapters::{Switcher, Verifier};
use crate::engine::{budget_statement, Budget, GenerateParams, Reasoning};
use crate::loader::chat_template::ChatMessage;
use crate::sampling::SamplingParams;
use crate::sched::best_of_n::VoteParams;
use serde_json::{json, Map, Value};
use std::sync::Arc;

/// A 4xx/5xx with an OpenAI-style body.
#[derive(Debug)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
}

impl ApiError {
    pub fn invalid(param: &str, message: impl Into<String>) -> Self {
        ApiError {
            status: 400,
            message: message.into(),
            kind: "invalid_request_error",
            param: (!param.is_empty()).then(|| param.to_string()),
        }
    }

    pub fn body(&self) -> Value {
        json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": Value::Null}})
    }
}

/// What the server loaded at start: the adapters' heads, and the defaults requests get.
#[derive(Clone, Default)]
pub struct ServingDefaults {
    pub adapters: Vec<String>,
    pub switcher: Option<Arc<Switcher>>,
    pub verifier: Option<Arc<Verifier>>,
    /// max_tokens when the request gives none (capped by the context left).
    pub max_tokens: usize,
    /// Context length per request.
    pub n_ctx: usize,
}

/// The prompt as the request gives it.
pub enum Prompt {
    Chat(Vec<ChatMessage>),
    Text(String),
    Tokens(Vec<u32>),
}

/// A parsed request: everything but the tokenized prompt.
pub struct Parsed {
    pub prompt: Prompt,
    pub n: usize,
    pub params: GenerateParams,
    pub vote: VoteParams,
    pub stream: bool,
    pub include_usage: bool,
    pub logprobs: bool,
    /// Whether `max_tokens` was given (else it is the default, capped by what is left).
    pub max_tokens_given: bool,
}

fn field<'a>(o: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    o.get(name).filter(|v| !v.is_null())
}

fn number(o: &Map<String, Value>, name: &str) -> Result<Option<f64>, ApiError> {
    match field(o, name) {
        None => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| ApiError::invalid(name, format!("'{name}' must be a number"))),
    }
}

fn integer(
    o: &Map<String, Value>,
    name: &str,
    min: u64,
    max: u64,
) -> Result<Option<u64>, ApiError> {
    match field(o, name) {
        None => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) if (min..=max).contains(&n) => Ok(Some(n)),
            _ => Err(ApiError::invalid(
                name,
                format!("'{name}' must be an integer in {min}..={max}"),
            )),
        },
    }
}

fn boolean(o: &Map<String, Value>, name: &str) -> Result<bool, ApiError> {
    match field(o, name) {
        None => Ok(false),
        Some(v) => v
            .as_bool()
            .ok_or_else(|| ApiError::invalid(name, format!("'{name}' must be a boolean"))),
    }
}

fn string<'a>(o: &'a Map<String, Value>, name: &str) -> Result<Option<&'a str>, ApiError> {
    match field(o, name) {
        None => Ok(None),
        Some(v) => v
            .as_str()
            .map(Some)
            .ok_or_else(|| ApiError::invalid(name, format!("'{name}' must be a string"))),
    }
}

/// `stop`: a string or up to four strings.
fn stops(o: &Map<String, Value>) -> Result<Vec<String>, ApiError> {
    let bad = || {
        ApiError::invalid(
            "stop",
            "'stop' must be a string or an array of up to 4 non-empty strings",
        )
    };
    let list: Vec<String> = match field(o, "stop") {
        None => return Ok(Vec::new()),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) if a.len() <= 4 => a
            .iter()
            .map(|v| v.as_str().map(str::to_string).ok_or_else(bad))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(bad()),
    };
    if list.iter().any(String::is_empty) {
        return Err(bad());
    }
    Ok(list)
}

/// `messages`: roles system/user/assistant (developer as system), content a string or
/// text parts.
fn messages(o: &Map<String, Value>) -> Result<Vec<ChatMessage>, ApiError> {
    let bad = |m: String| ApiError::invalid("messages", m);
    let list = field(o, "messages")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("'messages' must be a non-empty array".into()))?;
    if list.is_empty() {
        return Err(bad("'messages' must be a non-empty array".into()));
    }
    list.iter()
        .enumerate()
        .map(|(i, m)| {
            let role = m.get("role").and_then(Value::as_str).unwrap_or("");
            let role = match role {
                "system" | "developer" => "system",
                "user" | "assistant" => role,
                _ => {
                    return Err(bad(format!(
                        "messages[{i}].role must be system, developer, user or assistant"
                    )))
                }
            };
            let content = match m.get("content") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(parts)) => parts
                    .iter()
                    .map(|p| {
                        match (
                            p.get("type").and_then(Value::as_str),
                            p.get("text").and_then(Value::as_str),
                        ) {
                            (Some("text"), Some(t)) => Ok(t.to_string()),
                            _ => Err(bad(format!(
                                "messages[{i}].content: only text parts are supported"
                            ))),
                        }
                    })
                    .collect::<Result<String, _>>()?,
                Some(Value::Null) | None if role == "assistant" => String::new(),
                _ => {
                    return Err(bad(format!(
                        "messages[{i}].content must be a string or text parts"
                    )))
                }
            };
            Ok(ChatMessage::new(role, content))
        })
        .collect()
}

/// `prompt` of /v1/completions: a string, one string in an array, or token ids.
fn completion_prompt(o: &Map<String, Value>) -> Result<Prompt, ApiError> {
    let bad = || {
        ApiError::invalid(
            "prompt",
            "'prompt' must be a string, an array of one string, or an array of token ids",
        )
    };
    match field(o, "prompt") {
        Some(Value::String(s)) => Ok(Prompt::Text(s.clone())),
        Some(Value::Array(a)) => match a.as_slice() {
            [Value::String(s)] => Ok(Prompt::Text(s.clone())),
            [] => Err(bad()),
            ids => ids
                .iter()
                .map(|v| v.as_u64().map(|id| id.min(u32::MAX as u64) as u32))
                .collect::<Option<Vec<u32>>>()
                .map(Prompt::Tokens)
                .ok_or_else(bad),
        },
        _ => Err(bad()),
    }
}

fn sampling(o: &Map<String, Value>, n: usize) -> Result<SamplingParams, ApiError> {
    // Greedy by default as the CLI; several candidates sample at the CLI's best-of temperature.
    let temperature = number(o, "temperature")?.unwrap_or(if n > 1 { 0.8 } else { 0.0 }) as f32;
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid(
            "temperature",
            "'temperature' must be in [0, 2]",
        ));
    }
    let top_p = number(o, "top_p")?.unwrap_or(1.0) as f32;
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::invalid("top_p", "'top_p' must be in (0, 1]"));
    }
    let top_k = integer(o, "top_k", 0, u32::MAX as u64)?.unwrap_or(0) as usize;
    let seed = match field(o, "seed") {
        None => rand::random::<u64>(),
        Some(v) => v
            .as_i64()
            .map(|s| s as u64)
            .ok_or_else(|| ApiError::invalid("seed", "'seed' must be an integer"))?,
    };
    if n > 1 && temperature == 0.0 {
        return Err(ApiError::invalid("n", format!("n = {n} with temperature 0 gives {n} identical greedy candidates: set a temperature > 0")));
    }
    Ok(SamplingParams {
        temperature,
        top_k,
        top_p,
        seed,
    })
}

/// The extensions: `reasoning` (auto|on|off), `adapter`, `budget`, `state_budget`, `vote`.
fn reasoning(
    o: &Map<String, Value>,
    d: &ServingDefaults,
) -> Result<(Reasoning, Option<Budget>), ApiError> {
    let budget = integer(o, "budget", 1, 1 << 20)?.map(|t| Budget::new(t as usize));
    let named = string(o, "adapter")?;
    if let Some(a) = named {
        if !d.adapters.iter().any(|x| x == a) {
            return Err(ApiError::invalid(
                "adapter",
                format!(
                    "adapter '{a}' is not loaded (loaded: {})",
                    d.adapters.join(", ")
                ),
            ));
        }
    }
    let default_adapter = match budget {
        Some(_) if d.adapters.iter().any(|a| a == "reasoning-budget") => Some("reasoning-budget"),
        _ => d
            .adapters
            .iter()
            .find(|a| *a == "reasoning")
            .map(String::as_str),
    };
    let adapter = named.or(default_adapter);
    let auto_default = d.switcher.is_some() && adapter.is_some();
    let mode = string(o, "reasoning")?.unwrap_or(if auto_default {
        "auto"
    } else if named.is_some() {
        "on"
    } else {
        "off"
    });
    let r = match (mode, adapter) {
        ("off", _) => Reasoning::Off,
        ("on", Some(a)) => Reasoning::On { adapter: a.into() },
        ("auto", Some(a)) => match &d.switcher {
            Some(sw) => Reasoning::Auto {
                adapter: a.into(),
                switcher: sw.clone(),
            },
            None => return Err(ApiError::invalid(
                "reasoning",
                "'reasoning': 'auto' needs a switcher head and none is loaded; use 'on' or 'off'",
            )),
        },
        ("on" | "auto", None) => {
            return Err(ApiError::invalid(
                "reasoning",
                "no reasoning adapter is loaded",
            ))
        }
        _ => {
            return Err(ApiError::invalid(
                "reasoning",
                "'reasoning' must be auto, on or off",
            ))
        }
    };
    Ok((r, budget))
}

/// The vote over `n` candidates; the verifier scores them when there are several.
fn vote(o: &Map<String, Value>, d: &ServingDefaults, n: usize) -> Result<VoteParams, ApiError> {
    let weighted = match string(o, "vote")? {
        None | Some("majority") => false,
        Some("weighted") => true,
        Some(_) => {
            return Err(ApiError::invalid(
                "vote",
                "'vote' must be majority or weighted",
            ))
        }
    };
    if weighted && d.verifier.is_none() {
        return Err(ApiError::invalid(
            "vote",
            "a weighted vote needs a verifier head and none is loaded",
        ));
    }
    Ok(VoteParams {
        answer_regex: None,
        verifier: d.verifier.clone().filter(|_| n > 1),
        weighted,
    })
}

/// Parse a /v1/chat/completions (`chat`) or /v1/completions body.
pub fn parse(body: &[u8], chat: bool, d: &ServingDefaults) -> Result<Parsed, ApiError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid("", format!("the body is not valid JSON: {e}")))?;
    let o = v
        .as_object()
        .ok_or_else(|| ApiError::invalid("", "the body must be a JSON object"))?;
    let mut prompt = if chat {
        Prompt::Chat(messages(o)?)
    } else {
        completion_prompt(o)?
    };
    let n = integer(o, "n", 1, 64)?.unwrap_or(1) as usize;
    let max_given = integer(o, "max_completion_tokens", 1, u32::MAX as u64)?.or(integer(
        o,
        "max_tokens",
        1,
        u32::MAX as u64,
    )?);
    let (reasoning, budget) = reasoning(o, d)?;
    if let (Some(b), true, Prompt::Chat(msgs)) = (&budget, boolean(o, "state_budget")?, &mut prompt)
    {
        if let Some(last) = msgs.iter_mut().rev().find(|m| m.role == "user") {
            last.content.push_str(&budget_statement(b.thinking_tokens));
        }
    }
    let (logprobs, top_logprobs) = logprobs_fields(o, chat)?;
    let include_usage = field(o, "stream_options")
        .and_then(|s| s.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    Ok(Parsed {
        prompt,
        n,
        params: GenerateParams {
            max_tokens: max_given.map_or(d.max_tokens, |m| m as usize),
            sampling: sampling(o, n)?,
            stop: stops(o)?,
            reasoning,
            budget,
            top_logprobs,
            ..Default::default()
        },
        vote: vote(o, d, n)?,
        stream: boolean(o, "stream")?,
        include_usage,
        logprobs,
        max_tokens_given: max_given.is_some(),
    })
}

/// Whether to return each token's log-prob, and how many most likely alternatives with
/// it: chat's `logprobs` (bool) and `top_logprobs` (0-20, only with `logprobs`), or the
/// legacy completions' `logprobs` (0-5: both at once).
fn logprobs_fields(o: &Map<String, Value>, chat: bool) -> Result<(bool, usize), ApiError> {
    if !chat {
        let k = integer(o, "logprobs", 0, 5)?;
        return Ok((k.is_some(), k.unwrap_or(0) as usize));
    }
    let logprobs = boolean(o, "logprobs")?;
    let top = integer(o, "top_logprobs", 0, 20)?.unwrap_or(0) as usize;
    if top > 0 && !logprobs {
        return Err(ApiError::invalid(
            "top_logprobs",
            "top_logprobs needs \"logprobs\": true",
        ));
    }
    Ok((logprobs, top))
}

/// OpenAI's finish reason for ours.
pub fn finish_reason(ours: &str) -> &'static str {
    match ours {
        "length" | "answer_length" => "length",
        _ => "stop",
    }
}

/// How many leading bytes of `text` can be sent: none of a possible start of a stop string
/// is held back, so a client never sees a stop string it asked to end on.
pub fn sendable_len(text: &str, stops: &[String]) -> usize {
    let mut keep = text.len();
    for s in stops {
        for (i, _) in s.char_indices().skip(1).chain([(s.len(), ' ')]) {
            let head = &s[..i];
            if text.ends_with(head) {
                keep = keep.min(text.len() - head.len());
            }
        }
    }
    keep
}

/// `text` without the stop string it ended on (finish reason "stop").
pub fn strip_stop<'a>(text: &'a str, stops: &[String]) -> &'a str {
    stops
        .iter()
        .find_map(|s| text.strip_suffix(s.as_str()))
        .unwrap_or(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> ServingDefaults {
        ServingDefaults {
            adapters: vec!["reasoning".into()],
            max_tokens: 64,
            n_ctx: 512,
            ..Default::default()
        }
    }

    fn err(body: &str) -> ApiError {
        match parse(body.as_bytes(), true, &defaults()) {
            Err(e) => e,
            Ok(_) => panic!("accepted {body}"),
        }
    }

    #[test]
    fn wrong_fields_name_themselves() {
        let msgs = r#""messages":[{"role":"user","content":"hi"}]"#;
        assert_eq!(err("{").param, None);
        assert_eq!(err(r#"{"messages":[]}"#).param.as_deref(), Some("messages"));
        assert_eq!(
            err(r#"{"messages":[{"role":"robot","content":"x"}]}"#)
                .param
                .as_deref(),
            Some("messages")
        );
        for (f, v) in [
            ("temperature", "\"hot\""),
            ("temperature", "3"),
            ("top_p", "0"),
            ("n", "0"),
            ("max_tokens", "-1"),
            ("stop", "[1]"),
            ("seed", "\"x\""),
            ("stream", "1"),
            ("reasoning", "\"maybe\""),
            ("adapter", "\"nope\""),
            ("vote", "\"weighted\""),
            ("top_logprobs", "3"),
            ("top_logprobs", "21"),
        ] {
            let e = err(&format!("{{{msgs},\"{f}\":{v}}}"));
            assert_eq!(e.param.as_deref(), Some(f), "{f}: {}", e.message);
        }
        let n3 = parse(format!("{{{msgs},\"n\":3}}").as_bytes(), true, &defaults()).unwrap();
        assert_eq!(
            n3.params.sampling.temperature, 0.8,
            "n > 1 samples by default"
        );
        let e = err(&format!("{{{msgs},\"n\":3,\"temperature\":0}}"));
        assert_eq!(e.param.as_deref(), Some("n"), "n > 1 greedy is refused");
    }

    #[test]
    fn logprobs_fields_ask_for_the_most_likely_tokens() {
        let msgs = r#""messages":[{"role":"user","content":"hi"}]"#;
        let chat = |extra: &str| {
            parse(format!("{{{msgs}{extra}}}").as_bytes(), true, &defaults()).unwrap()
        };
        let p = chat(r#","logprobs":true,"top_logprobs":5"#);
        assert!(p.logprobs);
        assert_eq!(p.params.top_logprobs, 5);
        let p = chat(r#","logprobs":true"#);
        assert_eq!((p.logprobs, p.params.top_logprobs), (true, 0));
        let c = parse(br#"{"prompt":"hi","logprobs":2}"#, false, &defaults()).unwrap();
        assert_eq!((c.logprobs, c.params.top_logprobs), (true, 2));
        let c = parse(br#"{"prompt":"hi"}"#, false, &defaults()).unwrap();
        assert_eq!((c.logprobs, c.params.top_logprobs), (false, 0));
    }

    #[test]
    fn fields_reach_the_generate_params() {
        let p = parse(br#"{"messages":[{"role":"system","content":"be brief"},{"role":"user","content":[{"type":"text","text":"2+2?"}]}],"max_tokens":9,"temperature":0.5,"top_p":0.9,"seed":3,"stop":"\n","n":2,"reasoning":"on","budget":40,"state_budget":true,"stream":true}"#, true, &defaults()).unwrap();
        assert_eq!(p.n, 2);
        assert_eq!(p.params.max_tokens, 9);
        assert_eq!(
            (
                p.params.sampling.temperature,
                p.params.sampling.top_p,
                p.params.sampling.seed
            ),
            (0.5, 0.9, 3)
        );
        assert_eq!(p.params.stop, vec!["\n".to_string()]);
        assert!(
            matches!(p.params.reasoning, Reasoning::On { ref adapter } if adapter == "reasoning")
        );
        assert_eq!(p.params.budget.unwrap().thinking_tokens, 40);
        assert!(p.stream);
        let Prompt::Chat(m) = p.prompt else { panic!() };
        assert_eq!(m[1].content, format!("2+2?{}", budget_statement(40)));
        assert!(
            matches!(parse(br#"{"prompt":[1,2,3]}"#, false, &defaults()).unwrap().prompt, Prompt::Tokens(ref t) if t == &[1, 2, 3])
        );
    }

    #[test]
    fn completion_prompts_take_text_or_ids_and_refuse_mixtures() {
        let prompt = |v: &str| {
            parse(
                format!(r#"{{"prompt":{v}}}"#).as_bytes(),
                false,
                &defaults(),
            )
        };
        assert!(matches!(prompt(r#"["hi"]"#).unwrap().prompt, Prompt::Text(ref t) if t == "hi"));
        assert!(matches!(prompt("[7]").unwrap().prompt, Prompt::Tokens(ref t) if t == &[7]));
        for bad in [
            "[]",
            r#"["a","b"]"#,
            r#"[1,"b"]"#,
            "[-1]",
            "[1.5]",
            "{}",
            "3",
        ] {
            let e = prompt(bad)
                .err()
                .unwrap_or_else(|| panic!("accepted prompt {bad}"));
            assert_eq!(e.param.as_deref(), Some("prompt"), "{bad}");
        }
    }

    #[test]
    fn stop_strings_are_held_back_and_stripped() {
        let stops = vec!["END".to_string()];
        assert_eq!(sendable_len("hello E", &stops), 6);
        assert_eq!(sendable_len("hello EN", &stops), 6);
        assert_eq!(sendable_len("hello", &stops), 5);
        assert_eq!(strip_stop("hello END", &stops), "hello ");
    }
}
