//! The continuous-batching scheduler: requests with different adapters decoded in one
//! batch give the tokens each gives alone; a shared prompt prefix comes from the prefix
//! cache and changes nothing; cancelled requests free their blocks; limits are checked
//! before any work.

mod common;
use common::*;
use edgereason::engine::{Budget, Engine, EngineOptions, GenerateParams, Reasoning};
use edgereason::loader::load_model;
use edgereason::sampling::SamplingParams;
use edgereason::sched::best_of_n::BestOfN;
use edgereason::sched::serving::{
    Event, Request, Scheduler, SchedulerOptions, SubmitError, Submitted,
};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn engine(max_rows: usize) -> Arc<Engine> {
    let e = Engine::from_host(
        load_model(&fixture("tiny-qwen2")).unwrap(),
        &EngineOptions {
            max_rows,
            ..Default::default()
        },
    )
    .unwrap();
    e.load_adapter("a", &fixture("lora/lora")).unwrap();
    e.load_adapter("b", &fixture("lora/lora-rslora")).unwrap();
    Arc::new(e)
}

fn params(max_tokens: usize, adapter: Option<&str>) -> GenerateParams {
    GenerateParams {
        max_tokens,
        reasoning: match adapter {
            Some(a) => Reasoning::On { adapter: a.into() },
            None => Reasoning::Off,
        },
        think_prefix: String::new(),
        ..Default::default()
    }
}

fn prompt(len: usize, seed: u32) -> Vec<u32> {
    (0..len as u32)
        .map(|i| 5 + (i * 17 + seed * 31) % 200)
        .collect()
}

/// Every event of a request until it ends: (started event's cached tokens, tokens per
/// candidate from the token events, the final result).
fn collect(mut s: Submitted) -> (usize, Vec<Vec<u32>>, BestOfN) {
    let mut cached = usize::MAX;
    let mut streamed: Vec<Vec<u32>> = Vec::new();
    while let Some(ev) = s.events.blocking_recv() {
        match ev {
            Event::Started { cached_tokens, .. } => cached = cached_tokens,
            Event::Token { stream, id, .. } => {
                if streamed.len() <= stream {
                    streamed.resize(stream + 1, Vec::new());
                }
                streamed[stream].push(id);
            }
            Event::Done(out) => return (cached, streamed, *out),
            Event::Failed(e) => panic!("request failed: {e}"),
        }
    }
    panic!("the event channel closed without Done")
}

fn settle(s: &Scheduler) -> edgereason::sched::serving::Metrics {
    let t = Instant::now();
    loop {
        let m = s.metrics();
        if m.running == 0 && m.queued == 0 {
            return m;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "scheduler never went idle: {m:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn requests_with_different_adapters_batch_together_and_match_each_alone() {
    let e = engine(16);
    let sched = Scheduler::start(e.clone(), SchedulerOptions::default()).unwrap();
    let reqs = [
        (prompt(21, 0), Some("a")),
        (prompt(9, 1), None),
        (prompt(30, 2), Some("b")),
    ];
    // All submitted before the loop admits any: their decode steps are one batch.
    let handles: Vec<_> = reqs
        .iter()
        .map(|(p, a)| {
            sched
                .submit(Request::new(p.clone(), params(12, *a)))
                .unwrap()
        })
        .collect();
    for (h, (p, a)) in handles.into_iter().zip(&reqs) {
        let (_, streamed, out) = collect(h);
        let alone = e.generate(p, &params(12, *a), |_, _| true).unwrap();
        assert_eq!(out.candidates[0].tokens, alone.tokens, "adapter {a:?}");
        assert_eq!(
            streamed[0], alone.tokens,
            "token events carry the same tokens"
        );
        assert_eq!(out.reasoning, a.is_some());
    }
    let m = settle(&sched);
    assert_eq!(m.completed, 3);
    assert_eq!(m.per_adapter.get("a"), Some(&1));
    assert_eq!(m.per_adapter.get("none"), Some(&1));
}

#[test]
fn a_shared_prefix_comes_from_the_cache_and_changes_nothing() {
    let e = engine(16);
    let sched = Scheduler::start(e.clone(), SchedulerOptions::default()).unwrap();
    let first = prompt(45, 3);
    let (cached, _, _) = collect(
        sched
            .submit(Request::new(first.clone(), params(4, None)))
            .unwrap(),
    );
    assert_eq!(cached, 0, "nothing cached yet");
    // Same first 40 tokens, another tail: two full blocks (32 tokens) are reused.
    let mut second = first[..40].to_vec();
    second.extend(prompt(7, 9));
    let (cached, _, out) = collect(
        sched
            .submit(Request::new(second.clone(), params(8, Some("a"))))
            .unwrap(),
    );
    assert_eq!(cached, 32);
    let alone = e
        .generate(&second, &params(8, Some("a")), |_, _| true)
        .unwrap();
    assert_eq!(out.candidates[0].tokens, alone.tokens);
    // The whole first prompt again: all but its last (partial) block's tokens are reused.
    let (cached, _, _) = collect(
        sched
            .submit(Request::new(first.clone(), params(4, None)))
            .unwrap(),
    );
    assert_eq!(cached, 32);
    let m = settle(&sched);
    assert_eq!(m.cached_prompt_tokens, 64);
    assert!(m.prefix_cache_entries >= 1);
}

#[test]
fn best_of_n_budget_and_cancellation_leave_no_blocks_behind() {
    let e = engine(16);
    let opts = SchedulerOptions {
        max_streams: 8,
        ..Default::default()
    };
    let sched = Scheduler::start(e.clone(), opts).unwrap();
    let sampled = GenerateParams {
        sampling: SamplingParams {
            temperature: 0.9,
            seed: 7,
            ..Default::default()
        },
        budget: Some(Budget {
            answer_tokens: 3,
            ..Budget::new(5)
        }),
        ..params(30, Some("a"))
    };
    let n4 = Request {
        n: 4,
        ..Request::new(prompt(20, 4), sampled.clone())
    };
    let kept = sched.submit(n4.clone()).unwrap();
    // Cancelled at once, cancelled after its first event, and one that waits in the queue
    // behind the stream cap and is dropped there.
    let gone = sched
        .submit(Request::new(prompt(50, 5), params(40, None)))
        .unwrap();
    drop(gone);
    let mut later = sched
        .submit(Request::new(prompt(33, 6), params(40, Some("b"))))
        .unwrap();
    let _ = later.events.blocking_recv();
    later.cancel();
    let queued = sched.submit(Request { n: 8, ..n4.clone() }).unwrap();
    drop(queued);
    let (_, _, out) = collect(kept);
    assert_eq!(out.candidates.len(), 4);
    for c in &out.candidates {
        // Budget 5: a candidate that thinks 5 tokens without closing is forced.
        let open = c.thinking_tokens >= 5 && !c.text.contains("</think>");
        assert!(c.forced || !open || c.finish_reason == "eos", "{c:?}");
    }
    assert!(
        out.candidates.iter().any(|c| c.forced),
        "{:?}",
        out.candidates
    );
    // Same seed, same candidates (each stream's seed is seed + index).
    let (_, _, again) = collect(sched.submit(n4).unwrap());
    for (a, b) in out.candidates.iter().zip(&again.candidates) {
        assert_eq!(a.tokens, b.tokens);
    }
    let m = settle(&sched);
    assert!(m.cancelled >= 2, "{m:?}");
    assert_eq!(
        m.kv_blocks_free + m.kv_blocks_cached_only,
        m.kv_blocks_total,
        "every block not held by the prefix cache is free again: {m:?}"
    );
}

#[test]
fn bad_requests_and_a_full_queue_are_refused_before_any_work() {
    let e = engine(16);
    let opts = SchedulerOptions {
        max_queue: 1,
        max_streams: 1,
        max_n: 4,
        ..Default::default()
    };
    let sched = Scheduler::start(e.clone(), opts).unwrap();
    let err = |r: Request| match sched.submit(r) {
        Err(SubmitError::Invalid(m)) => m,
        other => panic!("expected Invalid, got {:?}", other.map(|_| ())),
    };
    assert!(err(Request::new(vec![], params(4, None))).contains("empty"));
    assert!(err(Request {
        n: 5,
        ..Request::new(prompt(4, 0), params(4, None))
    })
    .contains("n = 5"));
    assert!(err(Request {
        n: 2,
        ..Request::new(prompt(4, 0), params(4, None))
    })
    .contains("temperature"));
    assert!(
        err(Request::new(prompt(4, 0), params(4, Some("nope")))).contains("'nope' is not loaded")
    );
    assert!(err(Request::new(prompt(4, 0), params(e.n_ctx(), None))).contains("context"));
    let mut hot = params(4, None);
    hot.sampling.top_p = 0.0;
    assert!(err(Request::new(prompt(4, 0), hot)).contains("top_p"));
    // One running (the stream cap is 1), one queued, the next refused.
    let long = params(200, None);
    let a = sched
        .submit(Request::new(prompt(8, 1), long.clone()))
        .unwrap();
    let mut refused = false;
    let mut held = vec![a];
    for i in 0..4 {
        match sched.submit(Request::new(prompt(8, 2 + i), long.clone())) {
            Ok(h) => held.push(h),
            Err(SubmitError::QueueFull(_)) => {
                refused = true;
                break;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(refused, "a queue of 1 behind a stream cap of 1 fills up");
    drop(held);
    let m = settle(&sched);
    assert!(m.rejected >= 1);
}

#[test]
fn a_reply_the_base_model_decoded_is_reused_by_the_next_turn() {
    let e = engine(16);
    let sched = Scheduler::start(e.clone(), SchedulerOptions::default()).unwrap();
    let first = prompt(20, 8);
    let (_, _, out) = collect(
        sched
            .submit(Request::new(first.clone(), params(30, None)))
            .unwrap(),
    );
    let reply = &out.candidates[0].tokens;
    // The next turn: the whole first exchange, then more.
    let mut next = first.clone();
    next.extend(reply);
    next.extend(prompt(9, 10));
    let (cached, _, _) = collect(
        sched
            .submit(Request::new(next.clone(), params(4, None)))
            .unwrap(),
    );
    // Everything in full blocks the first request's stream held (the prompt and the reply
    // but a last token that ended it by length, never fed) comes from the cache.
    let unfed = usize::from(out.candidates[0].finish_reason != "eos");
    let held = first.len() + reply.len() - unfed;
    assert_eq!(cached, held / 16 * 16, "reply of {} tokens", reply.len());
    assert!(cached > 16, "more than the first prompt's one full block");
    // A reply the adapter decoded is not kept: the next prompt is the base model's.
    let (_, _, out) = collect(
        sched
            .submit(Request::new(prompt(20, 11), params(30, Some("a"))))
            .unwrap(),
    );
    let mut after = prompt(20, 11);
    after.extend(&out.candidates[0].tokens);
    after.extend(prompt(9, 12));
    let (cached, _, _) = collect(sched.submit(Request::new(after, params(4, None))).unwrap());
    assert_eq!(cached, 16, "only the prompt's full block");
}

#[test]
fn running_requests_on_a_scheduler_batch_and_cancel_like_their_own_threads() {
    use edgereason::sched::best_of_n::VoteParams;
    use edgereason::sched::running::RunningRequest;
    let e = engine(16);
    let sched = Scheduler::start(e.clone(), SchedulerOptions::default()).unwrap();
    let reqs = [(prompt(14, 7), None), (prompt(25, 8), Some("a"))];
    // Both submitted before either is read: the scheduler decodes them in one batch.
    let runs: Vec<_> = reqs
        .iter()
        .map(|(p, a)| {
            RunningRequest::submit(&sched, p.clone(), 1, params(10, *a), VoteParams::default())
                .unwrap()
        })
        .collect();
    for (run, (p, a)) in runs.into_iter().zip(&reqs) {
        let mut pulled = Vec::new();
        while let Some(t) = run.next_token() {
            pulled.push(t.id);
        }
        let out = run.wait().unwrap();
        let alone = e.generate(p, &params(10, *a), |_, _| true).unwrap();
        assert_eq!(out.candidates[0].tokens, alone.tokens, "adapter {a:?}");
        assert_eq!(pulled, alone.tokens, "the token channel carries them too");
    }
    // Cancelled after its first token: the candidates still decoding end "cancelled", and
    // the caller gets the result (a candidate may have met its end token before).
    let sampled = GenerateParams {
        sampling: SamplingParams {
            temperature: 0.9,
            seed: 3,
            ..Default::default()
        },
        ..params(40, None)
    };
    let run =
        RunningRequest::submit(&sched, prompt(12, 9), 2, sampled, VoteParams::default()).unwrap();
    assert!(run.next_token().is_some());
    run.cancel();
    let out = run.wait().unwrap();
    assert_eq!(out.candidates.len(), 2);
    assert!(
        out.candidates
            .iter()
            .any(|c| c.finish_reason == "cancelled"),
        "{:?}",
        out.candidates
    );
    for c in &out.candidates {
        assert!(c.finish_reason != "length" && c.tokens.len() < 40, "{c:?}");
    }
    // Refused before any work, with the scheduler's reason.
    let err = RunningRequest::submit(
        &sched,
        prompt(5, 1),
        1,
        params(4, Some("zz")),
        VoteParams::default(),
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("'zz' is not loaded"), "{err}");
    let m = settle(&sched);
    assert_eq!(
        m.kv_blocks_free + m.kv_blocks_cached_only,
        m.kv_blocks_total
    );
}

#[test]
fn pipelined_serving_gives_the_tokens_of_step_by_step_serving() {
    // The same requests, all submitted at once (they join the batch turn by turn and leave
    // at different steps): sampled best-of-3, stop strings, budget forcing, caps.
    let e = engine(16);
    let sampled = |max_tokens, seed| GenerateParams {
        sampling: SamplingParams {
            temperature: 0.9,
            seed,
            ..Default::default()
        },
        ..params(max_tokens, Some("a"))
    };
    let serve = |pipelined: bool, reqs: &[Request]| {
        let opts = SchedulerOptions {
            pipelined,
            ..Default::default()
        };
        let sched = Scheduler::start(e.clone(), opts).unwrap();
        let handles: Vec<_> = reqs
            .iter()
            .map(|r| sched.submit(r.clone()).unwrap())
            .collect();
        let outs: Vec<_> = handles.into_iter().map(collect).collect();
        let m = settle(&sched);
        assert_eq!(
            m.kv_blocks_free + m.kv_blocks_cached_only,
            m.kv_blocks_total,
            "pipelined {pipelined}: every block back"
        );
        (outs, m)
    };
    let mut reqs = vec![
        Request::new(prompt(21, 0), sampled(30, 3)),
        Request {
            n: 3,
            // The verifier continues each candidate's cache: a token fed ahead and not
            // taken back would change its score.
            vote: edgereason::sched::best_of_n::VoteParams {
                verifier: Some(Arc::new(edgereason::adapters::Verifier::from_weights(
                    (0..e.model.config.n_embd)
                        .map(|i| ((i * 7 % 5) as f32 - 2.0) / 4.0)
                        .collect(),
                    0.1,
                    " Right?",
                ))),
                weighted: true,
                ..Default::default()
            },
            ..Request::new(prompt(9, 1), sampled(34, 5))
        },
        Request::new(prompt(30, 2), params(24, None)),
        Request::new(
            prompt(12, 3),
            GenerateParams {
                budget: Some(Budget {
                    answer_tokens: 3,
                    ..Budget::new(4)
                }),
                ..sampled(28, 9)
            },
        ),
    ];
    // A stop string request 1's candidates meet mid-reply: a piece of one's own text.
    let text: Vec<char> = serve(false, &reqs).0[1].2.candidates[2]
        .text
        .chars()
        .collect();
    reqs[1].params.stop = vec![text[text.len() / 2..text.len() / 2 + 2].iter().collect()];
    let (want, m0) = serve(false, &reqs);
    let (got, m1) = serve(true, &reqs);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g.1, w.1, "request {i}: token events");
        for (a, b) in g.2.candidates.iter().zip(&w.2.candidates) {
            assert_eq!(
                (&a.tokens, &a.finish_reason, a.logprob, a.verifier_score),
                (&b.tokens, &b.finish_reason, b.logprob, b.verifier_score),
                "request {i} candidate {}",
                b.index
            );
        }
    }
    assert_eq!(m0.decode_steps_fed_ahead, 0);
    assert!(
        m1.decode_steps_fed_ahead > 8 && m1.decode_steps_fed_ahead < m1.decode_steps,
        "{} of {} steps fed ahead",
        m1.decode_steps_fed_ahead,
        m1.decode_steps
    );
}

#[test]
fn an_idle_scheduler_builds_the_kernel_variants_its_steps_take() {
    // While idle the loop builds every pipeline a step can take, so requests that batch
    // 1..8 candidates, with adapters and without, never stop a step to compile one.
    let e = engine(16);
    let sched = Scheduler::start(e.clone(), SchedulerOptions::default()).unwrap();
    let t = Instant::now();
    while sched.metrics().pipelines_cold > 0 {
        assert!(t.elapsed() < Duration::from_secs(300), "never warmed up");
        std::thread::sleep(Duration::from_millis(20));
    }
    let warm = sched.metrics();
    assert!(warm.pipelines_warmed > 0, "{warm:?}");
    let before = e.ctx.stats.snapshot().pipelines_compiled;
    let handles: Vec<_> = [(1, Some("a")), (3, None), (4, Some("b"))]
        .into_iter()
        .enumerate()
        .map(|(i, (n, adapter))| {
            let mut p = params(6, adapter);
            p.sampling = SamplingParams {
                temperature: 0.7,
                seed: i as u64,
                ..Default::default()
            };
            let mut req = Request::new(prompt(20 + 7 * i, i as u32), p);
            req.n = n;
            sched.submit(req).unwrap()
        })
        .collect();
    for h in handles {
        collect(h);
    }
    settle(&sched);
    assert_eq!(
        e.ctx.stats.snapshot().pipelines_compiled,
        before,
        "a step built a pipeline after the warm-up"
    );
}
