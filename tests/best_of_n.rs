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

#[test]
fn pipelined_decoding_gives_the_tokens_and_cache_of_step_by_step_decoding() {
    use edgereason::adapters::Verifier;
    use edgereason::engine::Budget;
    use edgereason::sched::best_of_n::{BestOfN, Decoding};
    let e = engine();
    let prompt = e.encode("Let me think").unwrap();
    let d = e.model.config.n_embd;
    let verifier = std::sync::Arc::new(Verifier::from_weights(
        (0..d).map(|i| ((i * 29 % 13) as f32 - 6.0) / 8.0).collect(),
        0.2,
        " Correct?",
    ));
    let run = |params: &GenerateParams, pipelined: bool| -> (Vec<Vec<u32>>, BestOfN) {
        let mut run = Decoding::start(&e, &prompt, 6, params).unwrap();
        run.set_pipelining(pipelined);
        let mut fed_ahead = 0;
        let mut got = vec![Vec::new(); 6];
        while let Some(t) = run.next() {
            let t = t.unwrap();
            got[t.stream].push(t.id);
            // Stream 4 is stopped by its caller mid-reply.
            if t.stream == 4 && got[4].len() == 5 {
                run.stop_stream(4);
            }
            fed_ahead = run.steps_fed_ahead();
        }
        // Fed ahead wherever no stream had forced tokens queued or had ended: most steps.
        assert_eq!(fed_ahead > 3, pipelined, "{fed_ahead} steps fed ahead");
        let out = run
            .finish(&VoteParams {
                verifier: Some(verifier.clone()),
                ..Default::default()
            })
            .unwrap();
        (got, out)
    };
    let sampled = GenerateParams {
        max_tokens: 16,
        sampling: SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            seed: 5,
        },
        ..Default::default()
    };
    // A stop string some streams meet mid-reply: a piece of stream 1's own text.
    let free = run(&sampled, false).1;
    let text: Vec<char> = free.candidates[1].text.chars().collect();
    let stop: String = text[text.len() / 3..text.len() / 3 + 2].iter().collect();
    let cases = [
        (
            "sampled, stop strings",
            GenerateParams {
                stop: vec![stop],
                ..sampled.clone()
            },
        ),
        (
            "budget forcing",
            GenerateParams {
                budget: Some(Budget {
                    answer_tokens: 4,
                    ..Budget::new(5)
                }),
                ..sampled.clone()
            },
        ),
    ];
    for (what, params) in cases {
        let (want_tokens, want) = run(&params, false);
        let (got_tokens, got) = run(&params, true);
        assert_eq!(got_tokens, want_tokens, "{what}: tokens as they came");
        let finishes: std::collections::HashSet<&str> = want
            .candidates
            .iter()
            .map(|c| c.finish_reason.as_str())
            .collect();
        assert!(
            finishes.len() > 1,
            "{what}: streams end in different ways: {finishes:?}"
        );
        for (g, w) in got.candidates.iter().zip(&want.candidates) {
            assert_eq!(g.tokens, w.tokens, "{what}: candidate {}", w.index);
            assert_eq!(
                g.finish_reason, w.finish_reason,
                "{what}: candidate {}",
                w.index
            );
            assert_eq!(g.logprob, w.logprob, "{what}: candidate {}", w.index);
            // The verifier continues each stream's cache: a token fed ahead and not taken
            // back would change its score.
            assert_eq!(
                g.verifier_score, w.verifier_score,
                "{what}: candidate {}",
                w.index
            );
        }
        assert_eq!(got.kv_bytes_used, want.kv_bytes_used, "{what}");
    }
}

#[test]
fn each_sampled_token_comes_with_the_most_likely_tokens_where_asked() {
    // Decoding (pipelined steps and the first tokens drawn from the prompt's logits) hands
    // each sampled token its position's top tokens, the same as the logits say.
    use edgereason::sched::best_of_n::Decoding;
    let e = engine();
    let prompt = e.encode("The capital of France is").unwrap();
    let params = GenerateParams {
        max_tokens: 6,
        top_logprobs: 4,
        ..Default::default()
    };
    let run = Decoding::start(&e, &prompt, 2, &params).unwrap();
    let mut tokens = vec![Vec::new(); 2];
    let mut seen = 0;
    for tok in run {
        let tok = tok.unwrap();
        assert_eq!(tok.top_logprobs.len(), 4, "{tok:?}");
        assert_eq!(
            tok.top_logprobs[0].0, tok.id,
            "greedy takes the most likely"
        );
        assert!((tok.top_logprobs[0].1 - tok.logprob.unwrap()).abs() < 1e-4);
        tokens[tok.stream].push((tok.id, tok.top_logprobs.clone()));
        seen += 1;
    }
    assert!(seen >= 2);
    // The same positions scored by the forward pass (its prompt kernels sum in another
    // order, from activations quantized apart): the listed tokens are a top 4 there, their
    // log-probs within 0.05.
    let mut s = e.session().unwrap();
    let ids: Vec<u32> = tokens[0].iter().map(|t| t.0).collect();
    let mut logits = Vec::new();
    s.forward_all(&[prompt.clone(), ids].concat(), |_, l| {
        logits.push(l.to_vec())
    })
    .unwrap();
    for (i, (_, top)) in tokens[0].iter().enumerate() {
        let l = &logits[prompt.len() - 1 + i];
        let lp = |id: u32| edgereason::sampling::log_prob(l, id);
        for &(id, got) in top {
            assert!(
                (got - lp(id)).abs() < 0.05,
                "position {i} token {id}: {got} vs {}",
                lp(id)
            );
        }
        let lowest = top.iter().map(|t| t.1).fold(f32::INFINITY, f32::min);
        let best_left = (0..l.len() as u32)
            .filter(|id| top.iter().all(|t| t.0 != *id))
            .map(lp)
            .fold(f32::NEG_INFINITY, f32::max);
        assert!(
            best_left <= lowest + 0.05,
            "position {i}: a token left out is more likely"
        );
    }
}
