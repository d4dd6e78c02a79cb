//! LoRA adapters end to end: the PEFT loader and the CPU reference against PEFT in HF
//! transformers (`tools/train/make_adapter_fixture.py`), the GPU forward with fused LoRA
//! against both, masked LoRA (prompt KV bit-identical with and without an adapter), bad
//! adapters as one-line errors, the switcher's pooling, the verifier's features and budget
//! forcing.

mod common;
use common::*;
use edgereason::adapters::{LoraAdapter, Switcher, Verifier};
use edgereason::engine::{Budget, Engine, EngineOptions, GenerateParams, Reasoning};
use edgereason::loader::load_model;
use edgereason::model::reference::ReferenceModel;
use edgereason::sched::best_of_n::{Decoding, VoteParams};
use std::sync::Arc;

fn engine(name: &str, max_rows: usize) -> Engine {
    Engine::from_host(
        load_model(&fixture(name)).unwrap(),
        &EngineOptions {
            max_rows,
            ..Default::default()
        },
    )
    .unwrap()
}

fn rows(v: &serde_json::Value) -> Vec<Vec<f32>> {
    v.as_array().unwrap().iter().map(f32s).collect()
}

/// Logits at every position: the first `prompt_len` tokens by the base model, the rest with
/// adapter 0 (prompt_len 0: the adapter everywhere).
fn gpu_logits(e: &Engine, tokens: &[u32], prompt_len: usize, adapter: bool) -> Vec<Vec<f32>> {
    let mut s = e.session().unwrap();
    let mut out = Vec::new();
    s.forward_all(&tokens[..prompt_len], |_, l| out.push(l.to_vec()))
        .unwrap();
    if adapter {
        s.set_adapter(s.main, Some(0)).unwrap();
    }
    s.forward_all(&tokens[prompt_len..], |_, l| out.push(l.to_vec()))
        .unwrap();
    out
}

#[test]
fn lora_matches_peft_in_transformers() {
    for variant in ["lora", "lora-rslora"] {
        let expected = json(&format!("lora/{variant}/expected.json"));
        let tokens = u32s(&expected["tokens"]);
        let p = expected["prompt_len"].as_u64().unwrap() as usize;
        let (full, masked, base) = (
            rows(&expected["logits_full"]),
            rows(&expected["logits_masked"]),
            rows(&expected["logits_base"]),
        );
        let host = load_model(&fixture("tiny-qwen2")).unwrap();
        let adapter =
            LoraAdapter::load(&fixture(&format!("lora/{variant}")), &host.config).unwrap();
        assert_eq!(
            adapter.scale,
            if variant == "lora" { 2.0 } else { 4.0 },
            "PEFT scaling (alpha/r, rsLoRA alpha/sqrt(r))"
        );
        // (1) the f32 reference with the adapter equals PEFT: names, shapes, scaling, masking.
        let reference = ReferenceModel::new(&host);
        for (from, want, what) in [(0, &full, "full"), (p, &masked, "masked")] {
            let (got, _) = reference.forward_with(&tokens, Some((&adapter, from)));
            for (t, (g, w)) in got.iter().zip(want).enumerate() {
                let e = rel_max_err(g, w);
                assert!(
                    e < 1e-4,
                    "{variant} {what}: reference vs PEFT at position {t}: relative error {e}"
                );
            }
        }
        // (2) the GPU forward with fused LoRA: close to PEFT, and its change from the base
        // model close to PEFT's change (the int4 base's own error cancels there).
        let e = engine("tiny-qwen2", 20);
        e.load_adapter("a", &fixture(&format!("lora/{variant}")))
            .unwrap();
        for (from, want, what) in [(0, &full, "full"), (p, &masked, "masked")] {
            // The base model over the same chunks: a prefill chunk's path (int8 GEMV or f32
            // GEMM) depends on its row count, so only equal chunking is bit-comparable.
            let gpu_base = gpu_logits(&e, &tokens, from, false);
            let got = gpu_logits(&e, &tokens, from, true);
            let mut worst = 0f32;
            for t in 0..tokens.len() {
                let err = rel_max_err(&got[t], &want[t]);
                worst = worst.max(err);
                assert!(
                    err < 0.08,
                    "{variant} {what}: GPU vs PEFT at position {t}: relative error {err}"
                );
                let d_gpu: Vec<f32> = got[t]
                    .iter()
                    .zip(&gpu_base[t])
                    .map(|(a, b)| a - b)
                    .collect();
                let d_hf: Vec<f32> = want[t].iter().zip(&base[t]).map(|(a, b)| a - b).collect();
                if t >= from {
                    let de = rel_max_err(&d_gpu, &d_hf);
                    assert!(de < 0.15, "{variant} {what}: LoRA's change of the logits at position {t}: GPU vs PEFT relative error {de}");
                } else {
                    assert_eq!(
                        got[t], gpu_base[t],
                        "{variant} {what}: prompt position {t} must be the base model's exactly"
                    );
                }
            }
            eprintln!("{variant} {what}: worst GPU-vs-PEFT relative logit error {worst:.4}");
        }
    }
}

#[test]
fn prompt_kv_is_bit_identical_with_and_without_an_adapter() {
    let e = engine("tiny-qwen2", 16);
    let expected = json("lora/lora/expected.json");
    let tokens = u32s(&expected["tokens"]);
    let p = expected["prompt_len"].as_u64().unwrap() as usize;
    let prompt = &tokens[..p];
    let kv = |e: &Engine, adapter: Option<usize>| {
        let mut s = e.session().unwrap();
        s.set_adapter(s.main, adapter).unwrap();
        s.forward(prompt).unwrap();
        (0..e.model.config.n_layer)
            .map(|l| s.read_kv(l).unwrap())
            .collect::<Vec<_>>()
    };
    let without = kv(&e, None); // no adapter loaded at all: the plain kernels
    e.load_adapter("reasoning", &fixture("lora/lora")).unwrap();
    let masked = kv(&e, None); // adapter resident and chosen for decoding, prompt masked
    assert!(
        without == masked,
        "the prompt's KV cache must not depend on an adapter being selected"
    );
    let unmasked = kv(&e, Some(0)); // the adapter on the prompt too (the comparison option)
    assert!(
        without != unmasked,
        "applying the adapter to the prompt must change its KV (else the test proves nothing)"
    );
    // Through the generation API: the masked prompt's first-token logits are the base's.
    let greedy = |reasoning: Reasoning, on_prompt: bool| {
        let params = GenerateParams {
            max_tokens: 16,
            reasoning,
            adapter_on_prompt: on_prompt,
            ..Default::default()
        };
        e.generate(prompt, &params, |_, _| true).unwrap()
    };
    let base = greedy(Reasoning::Off, false);
    let with = greedy(
        Reasoning::On {
            adapter: "reasoning".into(),
        },
        false,
    );
    // Reasoning on: the reply opens with the think prefix (fed, so the adapter samples from
    // the first free token on); off: nothing is fed.
    let opener = e
        .tokenizer
        .encode("<think>\n", false)
        .unwrap()
        .get_ids()
        .to_vec();
    assert!(
        with.tokens.starts_with(&opener) && with.tokens.len() > opener.len(),
        "{:?}",
        with.tokens
    );
    assert!(!base.tokens.starts_with(&opener));
    assert!(with.reasoning && !base.reasoning);
}

#[test]
fn bad_adapters_are_clear_errors() {
    let cfg = load_model(&fixture("tiny-qwen2")).unwrap().config;
    let other = load_model(&fixture("tiny-llama")).unwrap().config;
    let dir = tempfile::tempdir().unwrap();
    let copy = |name: &str| {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        for f in ["adapter_config.json", "adapter_model.safetensors"] {
            std::fs::copy(fixture("lora/lora").join(f), d.join(f)).unwrap();
        }
        d
    };
    let err = |d: &std::path::Path, c| LoraAdapter::load(d, c).unwrap_err().to_string();
    // Another model's adapter: the first mismatching tensor is named with both shapes.
    let e = err(&fixture("lora/lora"), &other);
    assert!(
        e.contains("adapter_model.safetensors")
            && e.contains("lora_")
            && e.contains("another model"),
        "{e}"
    );
    // A wrong rank in the config.
    let d = copy("rank");
    let c = std::fs::read_to_string(d.join("adapter_config.json"))
        .unwrap()
        .replace("\"r\": 4", "\"r\": 8");
    std::fs::write(d.join("adapter_config.json"), c).unwrap();
    let e = err(&d, &cfg);
    assert!(
        e.contains("rank 4 but adapter_config.json says r = 8") && e.contains("lora_A"),
        "{e}"
    );
    // A target whose tensors are missing.
    let d = copy("missing");
    let bytes = std::fs::read(d.join("adapter_model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let kept: Vec<(String, safetensors::tensor::TensorView)> = st
        .tensors()
        .into_iter()
        .filter(|(n, _)| !n.contains("layers.1.mlp.down_proj.lora_B"))
        .collect();
    std::fs::write(
        d.join("adapter_model.safetensors"),
        safetensors::serialize(kept, None).unwrap(),
    )
    .unwrap();
    let e = err(&d, &cfg);
    assert!(
        e.contains("missing tensor 'base_model.model.model.layers.1.mlp.down_proj.lora_B.weight'"),
        "{e}"
    );
    // A truncated file and a malformed config.
    let d = copy("truncated");
    std::fs::write(
        d.join("adapter_model.safetensors"),
        &bytes[..bytes.len() / 2],
    )
    .unwrap();
    let e = err(&d, &cfg);
    assert!(
        e.contains("adapter_model.safetensors") && e.contains("safetensors"),
        "{e}"
    );
    let d = copy("config");
    std::fs::write(d.join("adapter_config.json"), "{\"r\": 4}").unwrap();
    let e = err(&d, &cfg);
    assert!(
        e.contains("adapter_config.json") && e.contains("lora_alpha"),
        "{e}"
    );
    assert!(
        !e.contains('\n') && !err(&fixture("lora/lora"), &other).contains('\n'),
        "one line"
    );
}

#[test]
fn switcher_pools_the_prompt_and_gates_the_adapter() {
    // max_rows 8: a 23-token prompt is prefilled in 3 chunks, pooled by the moving average.
    let e = engine("tiny-qwen2", 8);
    e.load_adapter("reasoning", &fixture("lora/lora")).unwrap();
    let expected = json("lora/lora/expected.json");
    let tokens = u32s(&expected["tokens"]);
    let prompt = &tokens[..expected["prompt_len"].as_u64().unwrap() as usize];
    let d = e.model.config.n_embd;
    // A head with known weights: hidden unit i reads feature i, the output sums them.
    let mut fc1 = vec![0f32; 8 * d];
    (0..8).for_each(|i| fc1[i * d + i] = 1.0);
    let sw = |bias: f32| {
        Arc::new(Switcher::from_weights(
            fc1.clone(),
            vec![0.0; 8],
            vec![1.0; 8],
            bias,
            0.5,
        ))
    };
    let mut s = e.session().unwrap();
    let (_, pooled) = s
        .forward_pooled(prompt, |old, mean| sw(0.0).pool(old, mean))
        .unwrap();
    // Reference: EMA (α = 0.5) of the chunk means of the final-norm hidden states.
    let host = load_model(&fixture("tiny-qwen2")).unwrap();
    let (_, hidden) = ReferenceModel::new(&host).forward_with(prompt, None);
    let mut want: Option<Vec<f32>> = None;
    for chunk in hidden.chunks(8) {
        let mean: Vec<f32> = (0..d)
            .map(|j| chunk.iter().map(|h| h[j]).sum::<f32>() / chunk.len() as f32)
            .collect();
        want = Some(sw(0.0).pool(want, &mean));
    }
    let want = want.unwrap();
    let e_rel = rel_max_err(&pooled, &want);
    assert!(
        e_rel < 0.05,
        "pooled hidden state vs reference: relative error {e_rel}"
    );
    // The decision follows the head: a large bias switches reasoning on, a negative one off.
    let z: f32 = pooled[..8].iter().map(|v| v.max(0.0)).sum();
    for (bias, on) in [(5.0 - z, true), (-5.0 - z, false)] {
        let params = GenerateParams {
            max_tokens: 3,
            reasoning: Reasoning::Auto {
                adapter: "reasoning".into(),
                switcher: sw(bias),
            },
            ..Default::default()
        };
        let g = e.generate(prompt, &params, |_, _| true).unwrap();
        assert_eq!(
            g.reasoning, on,
            "bias {bias}: p = {:?}",
            g.switcher_probability
        );
        let p = g.switcher_probability.unwrap();
        assert!((p >= 0.5) == on && (p - 0.5).abs() > 0.45, "p = {p}");
    }
}

#[test]
fn verifier_scores_each_candidate_on_its_own_kv() {
    let e = engine("tiny-qwen2", 64);
    e.load_adapter("reasoning", &fixture("lora/lora")).unwrap();
    let expected = json("lora/lora/expected.json");
    let tokens = u32s(&expected["tokens"]);
    let prompt = &tokens[..expected["prompt_len"].as_u64().unwrap() as usize];
    let d = e.model.config.n_embd;
    let w: Vec<f32> = (0..d)
        .map(|i| ((i * 37 % 11) as f32 - 5.0) / 10.0)
        .collect();
    let verifier = Arc::new(Verifier::from_weights(
        w,
        0.1,
        "\nIs this solution correct? Answer yes or no:",
    ));
    let params = GenerateParams {
        max_tokens: 6,
        sampling: edgereason::sampling::SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            seed: 11,
        },
        reasoning: Reasoning::On {
            adapter: "reasoning".into(),
        },
        ..Default::default()
    };
    let mut run = Decoding::start(&e, prompt, 3, &params).unwrap();
    while !run.is_finished() {
        run.step().unwrap();
    }
    let out = run
        .finish(&VoteParams {
            verifier: Some(verifier.clone()),
            weighted: true,
            ..Default::default()
        })
        .unwrap();
    let ver_ids = e
        .encode("\nIs this solution correct? Answer yes or no:")
        .unwrap();
    for c in &out.candidates {
        // Independently: a fresh session, the prompt by the base model, then the candidate's
        // tokens (minus a final EOS, never fed) and the verification prompt with the adapter.
        let mut s = e.session().unwrap();
        s.forward(prompt).unwrap();
        s.set_adapter(s.main, Some(0)).unwrap();
        let rest: Vec<(edgereason::kv::StreamId, u32)> = c
            .tokens
            .iter()
            .chain(&ver_ids)
            .map(|&t| (s.main, t))
            .collect();
        let h = s.hidden_rows(&rest).unwrap();
        let want = verifier.score(h.last().unwrap());
        let got = c.verifier_score.unwrap();
        assert!(
            (got - want).abs() < 1e-3,
            "candidate {}: verifier {got} vs {want}",
            c.index
        );
    }
    // Weighted vote: each answer's weight is the sum of its candidates' scores.
    let total: f32 = out.votes.iter().map(|v| v.1).sum();
    let with_answer: f32 = out
        .candidates
        .iter()
        .filter(|c| c.answer.is_some())
        .map(|c| c.verifier_score.unwrap())
        .sum();
    assert!((total - with_answer).abs() < 1e-4, "votes {:?}", out.votes);
}

#[test]
fn budget_forcing_closes_thinking_at_the_cap() {
    let e = engine("tiny-llama", 32);
    let prompt = e.encode("Let me think").unwrap();
    let budget = Budget {
        answer_tokens: 5,
        ..Budget::new(6)
    };
    let params = GenerateParams {
        max_tokens: 40,
        budget: Some(budget.clone()),
        ..Default::default()
    };
    let g = e.generate(&prompt, &params, |_, _| true).unwrap();
    // The random tiny model never writes </think>: at 6 tokens the forcing text goes in.
    let force_ids = e
        .tokenizer
        .encode(budget.force.as_str(), false)
        .unwrap()
        .get_ids()
        .to_vec();
    assert!(g.forced, "{g:?}");
    assert_eq!(
        &g.tokens[6..6 + force_ids.len()],
        &force_ids[..],
        "forced tokens follow the 6 thinking tokens"
    );
    assert!(g.text.contains("</think>"), "{:?}", g.text);
    assert!(
        g.thinking_tokens >= 6 && g.thinking_tokens <= 6 + force_ids.len(),
        "{g:?}"
    );
    // Answer tokens: the rest of the forcing text, then at most 5 of the model's own.
    assert!(
        g.tokens.len() <= 6 + force_ids.len() + 5
            && g.tokens.len() == g.thinking_tokens + g.answer_tokens,
        "{g:?}"
    );
    assert!(
        g.finish_reason == "answer_length" || g.finish_reason == "eos",
        "{g:?}"
    );
    // No budget: no forcing, and a plain reply (no adapter, no </think>) is all answer.
    let free = e
        .generate(
            &prompt,
            &GenerateParams {
                max_tokens: 12,
                ..Default::default()
            },
            |_, _| true,
        )
        .unwrap();
    assert!(
        !free.forced && free.thinking_tokens == 0 && free.answer_tokens == free.tokens.len(),
        "{free:?}"
    );
}

#[test]
fn rows_with_different_adapters_batch_together_and_adapters_hot_swap() {
    let e = engine("tiny-qwen2", 16);
    e.load_adapter("a", &fixture("lora/lora")).unwrap();
    e.load_adapter("b", &fixture("lora/lora-rslora")).unwrap();
    assert_eq!(e.adapter_names(), vec!["a".to_string(), "b".to_string()]);
    let prompt: Vec<u32> = (0..21).map(|i| 5 + (i * 17) % 200).collect();
    // One batch: stream 0 on adapter a, stream 1 on none, stream 2 on adapter b.
    let choice = [Some(0usize), None, Some(1)];
    let mut s = e.session().unwrap();
    s.forward(&prompt).unwrap();
    let kids = s.fork(s.main, 3).unwrap();
    for (&k, &c) in kids.iter().zip(&choice) {
        s.set_adapter(k, c).unwrap();
    }
    let mut batched = Vec::new();
    for step in 0..3u32 {
        let rows: Vec<_> = kids.iter().map(|&k| (k, 40 + step)).collect();
        batched.push(s.forward_rows(&rows).unwrap());
    }
    // Each against its own session with only that choice.
    for (i, &c) in choice.iter().enumerate() {
        let mut alone = e.session().unwrap();
        alone.forward(&prompt).unwrap();
        alone.set_adapter(alone.main, c).unwrap();
        for (step, b) in batched.iter().enumerate() {
            // A decode step of one row (`forward` would encode the token as a prompt).
            let l = alone
                .forward_rows(&[(alone.main, 40 + step as u32)])
                .unwrap()
                .remove(0);
            let err = rel_max_err(&b[i], &l);
            assert!(
                err < 1e-4,
                "stream {i} ({c:?}) step {step}: batched vs alone relative error {err}"
            );
        }
    }
    // Hot swap: unloading one adapter keeps the other working and the base untouched.
    let base_before = e.session().unwrap().forward(&prompt).unwrap();
    e.unload_adapter("a").unwrap();
    assert_eq!(e.adapter_names(), vec!["b".to_string()]);
    assert!(e
        .unload_adapter("a")
        .unwrap_err()
        .to_string()
        .contains("not loaded"));
    let mut s = e.session().unwrap();
    s.forward(&prompt).unwrap();
    s.set_adapter(s.main, Some(0)).unwrap(); // index 0 is "b" now
    assert!(
        s.set_adapter(s.main, Some(1)).is_err(),
        "only one adapter left"
    );
    // ... and computes b: the same logits as the batched stream that ran b.
    let swapped = s.forward_rows(&[(s.main, 40)]).unwrap().remove(0);
    let err = rel_max_err(&batched[0][2], &swapped);
    assert!(err < 1e-4, "index 0 after the swap vs adapter b: {err}");
    let err_a = rel_max_err(&batched[0][0], &swapped);
    assert!(err_a > 1e-3, "index 0 still computes a ({err_a})");
    assert_eq!(e.session().unwrap().forward(&prompt).unwrap(), base_before);
}
