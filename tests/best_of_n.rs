//! Best-of-N over a shared prompt: reproducible per-stream sampling, greedy streams equal
//! the single-stream generation, and KV memory of P + N·S slots (plus block rounding).

mod common;
use common::*;
use edgereason::engine::{Engine, EngineOptions, GenerateParams};
use edgereason::loader::load_model;
use edgereason::sampling::SamplingParams;
use edgereason::sched::best_of_n::{generate_n, VoteParams};

fn engine() -> Engine {
    Engine::from_host(
        load_model(&fixture("tiny-llama")).unwrap(),
        &EngineOptions::default(),
    )
    .unwrap()
}

#[test]
fn greedy_candidates_equal_single_stream_generation() {
    let e = engine();
    let prompt = e.encode("The capital of France is").unwrap();
    let params = GenerateParams {
        max_tokens: 10,
        ..Default::default()
    };
    let single = e.generate(&prompt, &params, |_, _| true).unwrap();
    let out = generate_n(
        &e,
        &prompt,
        3,
        &params,
        &VoteParams::default(),
        |_, _, _| true,
    )
    .unwrap();
    for c in &out.candidates {
        assert_eq!(c.tokens, single.tokens, "candidate {}", c.index);
    }
}

#[test]
fn sampled_candidates_are_reproducible_and_differ() {
    let e = engine();
    let prompt = e.encode("Once upon a time").unwrap();
    let params = GenerateParams {
        max_tokens: 12,
        sampling: SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            seed: 7,
        },
        ..Default::default()
    };
    let a = generate_n(
        &e,
        &prompt,
        5,
        &params,
        &VoteParams::default(),
        |_, _, _| true,
    )
    .unwrap();
    let b = generate_n(
        &e,
        &prompt,
        5,
        &params,
        &VoteParams::default(),
        |_, _, _| true,
    )
    .unwrap();
    let toks = |r: &edgereason::sched::best_of_n::BestOfN| {
        r.candidates
            .iter()
            .map(|c| c.tokens.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(toks(&a), toks(&b), "same seed, same candidates");
    let distinct: std::collections::HashSet<_> = toks(&a).into_iter().collect();
    assert!(distinct.len() > 1, "streams have their own seeds");
    // Candidate i with seed s + i equals a single-stream run with that seed.
    let p1 = GenerateParams {
        sampling: SamplingParams {
            seed: 7 + 3,
            ..params.sampling.clone()
        },
        ..params.clone()
    };
    let single = e.generate(&prompt, &p1, |_, _| true).unwrap();
    assert_eq!(a.candidates[3].tokens, single.tokens);
}

#[test]
fn shared_prompt_kv_is_p_plus_n_s() {
    let e = engine();
    let prompt: Vec<u32> = (0..70).map(|i| 10 + (i * 13) % 300).collect();
    let (n, s) = (8usize, 20usize);
    let params = GenerateParams {
        max_tokens: s,
        stop: vec![],
        ..Default::default()
    };
    let out = generate_n(
        &e,
        &prompt,
        n,
        &params,
        &VoteParams::default(),
        |_, _, _| true,
    )
    .unwrap();
    let block = edgereason::model::forward::BLOCK_SIZE;
    let used_slots = out.kv_bytes_used as usize / kv_bytes_per_token(&e);
    // Full prompt blocks once, then per stream its partial prompt block copy + S tokens.
    let bound = (70 / block) * block + n * (70 % block + s).div_ceil(block) * block;
    assert!(
        used_slots <= bound,
        "{used_slots} slots used, bound {bound}"
    );
    assert!(
        used_slots < n * (70 + s) / 2,
        "prompt must be shared, not copied per stream"
    );
}

fn kv_bytes_per_token(e: &Engine) -> usize {
    let c = &e.model.config;
    2 * c.n_layer * c.n_kv_head * c.head_dim * 2
}

#[test]
fn iterator_yields_every_streams_tokens_and_streams_stop() {
    use edgereason::sched::best_of_n::Decoding;
    let e = engine();
    let prompt = e.encode("Once upon a time").unwrap();
    let params = GenerateParams {
        max_tokens: 9,
        sampling: SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            seed: 3,
        },
        ..Default::default()
    };
    let want = generate_n(
        &e,
        &prompt,
        4,
        &params,
        &VoteParams::default(),
        |_, _, _| true,
    )
    .unwrap();
    let mut run = Decoding::start(&e, &prompt, 4, &params).unwrap();
    let mut got = vec![Vec::new(); 4];
    while let Some(t) = run.next() {
        let t = t.unwrap();
        got[t.stream].push(t.id);
        // Stream 2 stops after its third token; the others go on unchanged.
        if t.stream == 2 && got[2].len() == 3 {
            run.stop_stream(2);
        }
    }
    let out = run.finish(&VoteParams::default()).unwrap();
    for c in &want.candidates {
        let expect: Vec<u32> = if c.index == 2 {
            c.tokens[..3].to_vec()
        } else {
            c.tokens.clone()
        };
        assert_eq!(
            got[c.index], expect,
            "stream {} through the iterator",
            c.index
        );
        assert_eq!(
            out.candidates[c.index].tokens, expect,
            "stream {} candidate",
            c.index
        );
    }
    assert_eq!(out.candidates[2].finish_reason, "stop");
}
