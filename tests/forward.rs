//! The whole forward pass against (1) HF transformers' logits for tiny random Qwen2 and
//! Llama checkpoints (`tools/make_tiny_fixtures.py`), and (2) the plain-Rust f32
//! reference forward on the same weights; plus tokenization against HF's ids.

mod common;
use common::*;
use edgereason::engine::{Engine, EngineOptions};
use edgereason::loader::load_model;
use edgereason::model::reference::ReferenceModel;

fn engine_logits(engine: &Engine, ids: &[u32]) -> Vec<Vec<f32>> {
    let mut s = engine.session().unwrap();
    let mut out = vec![Vec::new(); ids.len()];
    s.forward_all(ids, |i, l| out[i] = l.to_vec()).unwrap();
    out
}

fn check_tiny(name: &str) {
    let dir = fixture(name);
    let expected = json(&format!("{name}/expected.json"));
    let host = load_model(&dir).unwrap();
    let reference_host = load_model(&dir).unwrap();
    let reference = ReferenceModel::new(&reference_host);
    // Small max_rows so prefill runs in several chunks and the M > 16 tile path is used.
    let engine = Engine::from_host(
        host,
        &EngineOptions {
            max_rows: 20,
            ..Default::default()
        },
    )
    .unwrap();
    let mut worst_gpu = 0f32;
    for case in expected["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let ids = u32s(&case["ids"]);
        assert_eq!(
            engine.encode(text).unwrap(),
            ids,
            "{name}: tokenization of {text:?}"
        );
        let hf: Vec<Vec<f32>> = case["logits"]
            .as_array()
            .unwrap()
            .iter()
            .map(f32s)
            .collect();
        // (1) the f32 reference equals transformers: loader, RoPE, GQA, biases, norms.
        let cpu = reference.forward(&ids);
        for (t, (c, h)) in cpu.iter().zip(&hf).enumerate() {
            let e = rel_max_err(c, h);
            assert!(
                e < 1e-4,
                "{name} {}: reference vs HF at position {t}: relative error {e}",
                case["name"]
            );
        }
        // (2) the GPU forward stays close. Its error is the int8 activation blocks' (each
        // matmul ~1% on these random 64-wide weights; the kernels themselves are exact to
        // 2e-3 against that arithmetic in tests/kernels.rs).
        let gpu = engine_logits(&engine, &ids);
        for (t, (g, h)) in gpu.iter().zip(&hf).enumerate() {
            let e = rel_max_err(g, h);
            worst_gpu = worst_gpu.max(e);
            assert!(
                e < 0.08,
                "{name} {}: GPU vs HF at position {t}: relative error {e}",
                case["name"]
            );
        }
        let agree = gpu
            .iter()
            .zip(&hf)
            .filter(|(g, h)| edgereason::sampling::argmax(g) == edgereason::sampling::argmax(h))
            .count();
        assert!(
            agree * 10 >= gpu.len() * 9,
            "{name}: argmax agrees at only {agree}/{} positions",
            gpu.len()
        );
    }
    eprintln!("{name}: worst GPU-vs-HF relative logit error {worst_gpu:.4}");
}

#[test]
fn tiny_qwen2_matches_transformers() {
    check_tiny("tiny-qwen2");
}

#[test]
fn tiny_llama_matches_transformers() {
    check_tiny("tiny-llama");
}

#[test]
fn steps_submitted_in_parts_equal_one_submission() {
    // A step split into command buffers at layer boundaries (GPUs take 4) records the same
    // launches in the same order: the logits and sampled tokens are bit-identical. (30
    // layers of random weights: the fixtures have 2.)
    let engine = Engine::load("synthetic:smollm2-135m", &EngineOptions::default()).unwrap();
    let prompt: Vec<u32> = (3..40).collect();
    let run = |parts: usize| {
        let mut s = engine.session().unwrap();
        s.set_submit_parts(Some(parts));
        let mut out = vec![s.forward(&prompt).unwrap()];
        let kids = s.fork(s.main, 2).unwrap();
        let rows: Vec<_> = kids.iter().map(|&k| (k, 7u32)).collect();
        out.extend(s.forward_rows(&rows).unwrap());
        let greedy = edgereason::ops::sampling::RowSampling {
            params: Default::default(),
            step: 0,
            top_logprobs: 0,
        };
        let ids = s
            .forward_rows_sampled(&rows, &[greedy.clone(), greedy])
            .unwrap();
        (out, ids, s.submit_parts())
    };
    let one = run(1);
    let layers = engine.model.config.n_layer;
    for parts in [2, 7, layers + 5] {
        let split = run(parts);
        assert_eq!(split.2, parts.min(layers), "parts clamp to the layer count");
        assert_eq!(split.0, one.0, "logits with {parts} parts");
        assert_eq!(split.1, one.1, "sampled tokens with {parts} parts");
    }
}

#[test]
fn a_prompt_fed_one_token_at_a_time_equals_one_prefill() {
    // The KV cache path (one token per step) gives the same logits as one prefill: prompt
    // steps take the same kernels at any row count (what makes a cached prefix exact).
    let host = load_model(&fixture("tiny-qwen2")).unwrap();
    let engine = Engine::from_host(host, &EngineOptions::default()).unwrap();
    let ids = engine.encode("The capital of France is Paris.").unwrap();
    let all = engine_logits(&engine, &ids);
    let mut s = engine.session().unwrap();
    for (t, &id) in ids.iter().enumerate() {
        let l = s.forward(&[id]).unwrap();
        let e = rel_max_err(&l, &all[t]);
        assert!(
            e < 1e-4,
            "position {t}: decode vs prefill relative error {e}"
        );
    }
}

#[test]
fn prompt_longer_than_context_is_a_clear_error() {
    let host = load_model(&fixture("tiny-llama")).unwrap();
    let engine = Engine::from_host(
        host,
        &EngineOptions {
            n_ctx: 8,
            ..Default::default()
        },
    )
    .unwrap();
    let ids: Vec<u32> = (0..12).collect();
    let err = engine
        .generate(&ids, &Default::default(), |_, _| true)
        .unwrap_err()
        .to_string();
    assert!(err.contains("longer than the context"), "{err}");
    let mut s = engine.session().unwrap();
    let err = s.forward(&ids).unwrap_err().to_string();
    assert!(err.contains("context full"), "{err}");
    let err = s.forward(&[100_000]).unwrap_err().to_string();
    assert!(err.contains("outside the vocabulary"), "{err}");
}

#[test]
fn forked_streams_decoded_together_match_separate_runs() {
    // A 13-token prompt fills part of one 16-slot block, which the main stream still holds:
    // every child's first token copies it (copy-on-write).
    let host = load_model(&fixture("tiny-qwen2")).unwrap();
    let engine = Engine::from_host(
        host,
        &EngineOptions {
            n_ctx: 128,
            ..Default::default()
        },
    )
    .unwrap();
    let prompt: Vec<u32> = (0..13).map(|i| 20 + 7 * i).collect();
    let nexts: [[u32; 3]; 2] = [[5, 77, 300], [42, 42, 9]];
    let mut s = engine.session().unwrap();
    s.forward(&prompt).unwrap();
    let kids = s.fork(s.main, 3).unwrap();
    let used_before = s.pool.used_blocks();
    let mut batched = Vec::new();
    for step in &nexts {
        let rows: Vec<_> = kids.iter().zip(step).map(|(&k, &t)| (k, t)).collect();
        batched.push(s.forward_rows(&rows).unwrap());
    }
    // The prompt's block, plus one copy per child.
    assert_eq!(used_before, 1);
    assert_eq!(s.pool.used_blocks(), 1 + 3);
    for (i, _) in kids.iter().enumerate() {
        let mut alone = engine.session().unwrap();
        alone.forward(&prompt).unwrap();
        for (step, want_rows) in nexts.iter().zip(&batched) {
            // A one-row decode step (`forward` would encode the token as a prompt).
            let l = alone
                .forward_rows(&[(alone.main, step[i])])
                .unwrap()
                .remove(0);
            let e = rel_max_err(&want_rows[i], &l);
            assert!(e < 1e-4, "stream {i}: batched vs alone relative error {e}");
        }
    }
}

#[test]
fn a_decode_step_is_one_recording_and_reads_back_only_the_sampled_ids() {
    let host = load_model(&fixture("tiny-qwen2")).unwrap();
    let engine = Engine::from_host(host, &EngineOptions::default()).unwrap();
    let mut s = engine.session().unwrap();
    let prompt: Vec<u32> = (1..40).collect();
    s.forward(&prompt).unwrap();
    let kids = s.fork(s.main, 3).unwrap();
    let rows: Vec<_> = kids.iter().map(|&k| (k, 5u32)).collect();
    let greedy: Vec<_> = (0..3)
        .map(|_| edgereason::ops::sampling::RowSampling {
            params: Default::default(),
            step: 0,
            top_logprobs: 0,
        })
        .collect();
    // The first step after the fork also copies the prompt's partly filled last block for
    // each stream (copy-on-write): in the same command buffer as the step.
    for _ in 0..2 {
        let before = engine.ctx.stats.snapshot();
        let sampled = s.forward_rows_sampled(&rows, &greedy).unwrap();
        let d = engine.ctx.stats.snapshot() - before;
        assert_eq!(sampled.len(), 3);
        // The step's launches in one pass per submission (one, or split at layers:
        // EDGEREASON_SUBMIT_PARTS), then the ids' read-back (a copy submitted on its own):
        // 8 bytes per row, no logits.
        let parts = s.submit_parts() as u64;
        assert_eq!(
            (d.passes, d.submits, d.readback_bytes),
            (parts, parts + 1, 3 * 8),
            "{d:?}"
        );
        let layers = engine.model.config.n_layer as u64;
        assert!(
            d.dispatches >= 5 * layers && d.dispatches <= 12 * layers + 4,
            "{} launches for {layers} layers",
            d.dispatches
        );
        assert!(d.host_encode_ns > 0);
    }
}

#[test]
fn a_one_stream_decode_step_has_no_norm_or_merge_launches() {
    // tiny-qwen2's head_dim (16) is too small for the RoPE and int8-output epilogues, so a
    // layer is: qkv, rope, attention, quantize, wo (+ next norm), gate|up (+ SwiGLU), down
    // (+ next norm) = 7, plus the embedding, the first layer's norm, and the head's norm,
    // LM head and sampling. A norm launch per layer, or a split merge, would show.
    let host = load_model(&fixture("tiny-qwen2")).unwrap();
    let engine = Engine::from_host(host, &EngineOptions::default()).unwrap();
    let mut s = engine.session().unwrap();
    let prompt: Vec<u32> = (1..100).collect();
    s.forward(&prompt).unwrap();
    let greedy = [edgereason::ops::sampling::RowSampling {
        params: Default::default(),
        step: 0,
        top_logprobs: 0,
    }];
    let before = engine.ctx.stats.snapshot();
    s.forward_rows_sampled(&[(s.main, 7)], &greedy).unwrap();
    let d = engine.ctx.stats.snapshot() - before;
    let layers = engine.model.config.n_layer as u64;
    if engine.ctx.adapter.device_type == "Cpu" {
        assert_eq!(d.dispatches, 7 * layers + 5, "{d:?}");
    } else {
        // GPUs split k (a reduce launch per matmul) and the keys (a merge) to fill the device.
        assert!(d.dispatches >= 7 * layers + 5, "{d:?}");
    }
}

#[test]
fn a_profiled_decode_step_runs_the_decode_steps_launches() {
    // `bench`'s per-kernel split of a decode step: the same launches as the step itself
    // (a prompt step of one row takes the prefill kernels, whose sums differ in the last
    // bits), so the same logits, bit for bit, and the same launch count.
    let host = load_model(&fixture("tiny-qwen2")).unwrap();
    let engine = Engine::from_host(host, &EngineOptions::default()).unwrap();
    let prompt: Vec<u32> = (1..60).collect();
    let run = |profiled: bool| {
        let mut s = engine.session().unwrap();
        s.forward(&prompt).unwrap();
        let kids = s.fork(s.main, 2).unwrap();
        let mut out = Vec::new();
        for rows in [vec![(s.main, 9u32)], vec![(kids[0], 4), (kids[1], 11)]] {
            let before = engine.ctx.stats.snapshot();
            let mut profile = edgereason::model::KernelProfile::default();
            let logits = match profiled {
                true => s.forward_rows_profiled(&rows, &mut profile).unwrap(),
                false => s.forward_rows(&rows).unwrap(),
            };
            let d = engine.ctx.stats.snapshot() - before;
            out.push((logits, d.dispatches, profile.ms.contains_key("lm_head")));
        }
        out
    };
    let (plain, profiled) = (run(false), run(true));
    for (i, (p, q)) in plain.iter().zip(&profiled).enumerate() {
        assert_eq!(q.0, p.0, "step {i}: logits");
        // The profile adds the sampling launch a sampled step ends with.
        assert_eq!(q.1, p.1 + 1, "step {i}: launches");
        assert!(q.2, "step {i}: the LM head is timed");
    }
}

#[test]
fn a_warmed_up_session_builds_no_pipeline_in_its_steps() {
    // Every variant a step can take — prompt chunks of any length, decode steps of 1..=8
    // rows (one stream, forked streams over a shared prefix), an adapter on some rows,
    // greedy and sampled rows — is built by `warm_up`, so no step stops to compile.
    use edgereason::ops::sampling::RowSampling;
    use edgereason::sampling::SamplingParams;
    use std::time::Duration;
    let host = load_model(&fixture("tiny-qwen2")).unwrap();
    let options = EngineOptions {
        max_rows: 8,
        ..Default::default()
    };
    let engine = Engine::from_host(host, &options).unwrap();
    engine
        .load_adapter("reasoning", &fixture("lora/lora"))
        .unwrap();
    let mut s = engine.session().unwrap();
    let first = s.warm_up(Duration::ZERO);
    assert!(first.compiled >= 1 && first.left > 0, "{first:?}");
    let rest = s.warm_up(Duration::MAX);
    assert_eq!(rest.left, 0, "{rest:?}");
    assert_eq!(s.warm_up(Duration::MAX), Default::default(), "nothing left");

    let compiled = || engine.ctx.stats.snapshot().pipelines_compiled;
    let before = compiled();
    s.forward(&(1..30).collect::<Vec<u32>>()).unwrap(); // chunks of 8, 8, 8, 5
    let kids = s.fork(s.main, 8).unwrap();
    s.set_adapter(kids[1], Some(0)).unwrap();
    let sampled = RowSampling {
        params: SamplingParams {
            temperature: 0.8,
            top_p: 0.9,
            seed: 3,
            ..Default::default()
        },
        step: 0,
        top_logprobs: 0,
    };
    for n in 1..=8 {
        let rows: Vec<_> = kids[..n].iter().map(|&k| (k, 7 + n as u32)).collect();
        let sampling = vec![sampled.clone(); n];
        s.forward_rows_sampled(&rows, &sampling).unwrap();
        s.forward_rows(&[(kids[0], 3)]).unwrap(); // one stream alone
    }
    assert_eq!(compiled(), before, "a step built a pipeline after warm_up");
}
