//! Crossing the boundary: C strings and arrays in, results out. A result handed to C is a
//! `#[repr(C)]` view whose pointers point into an owner (CStrings and vectors) kept alive
//! behind its `owner` field until the matching free.

use crate::{
    er_candidate, er_generate_params, er_generate_params_init, er_result, er_score, er_vote_count,
    invalid, CallError,
};
use edgereason::engine::Score;
use edgereason::sched::best_of_n::BestOfN;
use std::ffi::{c_char, c_void, CStr, CString};
use std::mem::MaybeUninit;

/// A borrowed, UTF-8 C string; `name` says which argument in the error.
pub(crate) unsafe fn c_str<'a>(p: *const c_char, name: &str) -> Result<&'a str, CallError> {
    opt_c_str(p, name)?.ok_or_else(|| invalid(format!("{name} is NULL")))
}

/// As [`c_str`], NULL allowed.
pub(crate) unsafe fn opt_c_str<'a>(
    p: *const c_char,
    name: &str,
) -> Result<Option<&'a str>, CallError> {
    if p.is_null() {
        return Ok(None);
    }
    CStr::from_ptr(p)
        .to_str()
        .map(Some)
        .map_err(|e| invalid(format!("{name} is not UTF-8: {e}")))
}

/// `n` elements at `p` (NULL allowed when `n` is 0).
pub(crate) unsafe fn slice<'a, T>(p: *const T, n: usize, name: &str) -> Result<&'a [T], CallError> {
    match (p.is_null(), n) {
        (_, 0) => Ok(&[]),
        (true, _) => Err(invalid(format!("{name} is NULL but its length is {n}"))),
        (false, _) => Ok(std::slice::from_raw_parts(p, n)),
    }
}

/// A C string of `s` (a NUL inside, which no token text should hold, ends it there).
pub(crate) fn owned_c_string(s: impl Into<Vec<u8>>) -> CString {
    let mut bytes = s.into();
    if let Some(nul) = bytes.iter().position(|&b| b == 0) {
        bytes.truncate(nul);
    }
    CString::new(bytes).unwrap_or_default()
}

/// The caller's params, or the defaults for NULL.
pub(crate) unsafe fn params_or_default(p: *const er_generate_params) -> er_generate_params {
    match p.as_ref() {
        Some(p) => std::ptr::read(p),
        None => {
            let mut d = MaybeUninit::uninit();
            er_generate_params_init(d.as_mut_ptr());
            d.assume_init()
        }
    }
}

fn ptr_or_null(s: &Option<CString>) -> *const c_char {
    s.as_ref().map_or(std::ptr::null(), |s| s.as_ptr())
}

/// What an [`er_result`]'s pointers point into.
pub(crate) struct ResultOwner {
    strings: Vec<CString>,
    answers: Vec<Option<CString>>,
    tokens: Vec<Vec<u32>>,
    candidates: Vec<er_candidate>,
    answer: Option<CString>,
    votes: Vec<er_vote_count>,
    vote_answers: Vec<CString>,
}

impl ResultOwner {
    pub(crate) fn into_raw(r: BestOfN) -> *mut er_result {
        let mut o = Box::new(ResultOwner {
            strings: Vec::new(),
            answers: Vec::new(),
            tokens: Vec::new(),
            candidates: Vec::new(),
            answer: r.answer.map(owned_c_string),
            votes: Vec::new(),
            vote_answers: r
                .votes
                .iter()
                .map(|(a, _)| owned_c_string(a.as_str()))
                .collect(),
        });
        for c in &r.candidates {
            o.strings.push(owned_c_string(c.text.as_str()));
            o.strings.push(owned_c_string(c.finish_reason.as_str()));
            o.answers.push(c.answer.as_deref().map(owned_c_string));
            o.tokens.push(c.tokens.clone());
        }
        // The vectors are complete: pointers into their heap buffers stay valid.
        let candidates = r
            .candidates
            .iter()
            .enumerate()
            .map(|(i, c)| er_candidate {
                text: o.strings[2 * i].as_ptr(),
                tokens: o.tokens[i].as_ptr(),
                n_tokens: o.tokens[i].len(),
                logprob: c.logprob,
                answer: ptr_or_null(&o.answers[i]),
                finish_reason: o.strings[2 * i + 1].as_ptr(),
                thinking_tokens: c.thinking_tokens,
                answer_tokens: c.answer_tokens,
                forced: c.forced,
                verifier_score: c.verifier_score.unwrap_or(f32::NAN),
            })
            .collect();
        o.candidates = candidates;
        o.votes = r
            .votes
            .iter()
            .zip(&o.vote_answers)
            .map(|((_, v), a)| er_vote_count {
                answer: a.as_ptr(),
                votes: *v,
            })
            .collect();
        let view = er_result {
            candidates: o.candidates.as_ptr(),
            n_candidates: o.candidates.len(),
            answer: ptr_or_null(&o.answer),
            votes: o.votes.as_ptr(),
            n_votes: o.votes.len(),
            prompt_tokens: r.prompt_tokens,
            reasoning: r.reasoning,
            switcher_probability: r.switcher_probability.unwrap_or(f32::NAN),
            ttft_ms: r.ttft_ms,
            decode_tokens_per_s: r.decode_tokens_per_s,
            owner: Box::into_raw(o).cast::<c_void>(),
        };
        Box::into_raw(Box::new(view))
    }

    /// Free a view made by [`into_raw`](Self::into_raw) and its owner.
    pub(crate) unsafe fn free(r: *mut er_result) {
        let view = Box::from_raw(r);
        if !view.owner.is_null() {
            drop(Box::from_raw(view.owner.cast::<ResultOwner>()));
        }
    }
}

/// What an [`er_score`]'s pointers point into.
pub(crate) struct ScoreOwner {
    logprobs: Vec<f32>,
}

impl ScoreOwner {
    pub(crate) fn into_raw(s: Score) -> *mut er_score {
        let o = Box::new(ScoreOwner {
            logprobs: s.positions.iter().map(|p| p.logprob).collect(),
        });
        let view = er_score {
            logprobs: o.logprobs.as_ptr(),
            n_logprobs: o.logprobs.len(),
            mean_nll: s.mean_nll,
            perplexity: s.perplexity,
            owner: Box::into_raw(o).cast::<c_void>(),
        };
        Box::into_raw(Box::new(view))
    }

    pub(crate) unsafe fn free(s: *mut er_score) {
        let view = Box::from_raw(s);
        if !view.owner.is_null() {
            drop(Box::from_raw(view.owner.cast::<ScoreOwner>()));
        }
    }
}
