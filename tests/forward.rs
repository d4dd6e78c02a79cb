//! The whole forward pass against (1) HF transformers' logits for tiny random Qwen2 and
//! Llama checkpoints (`tools/make_tiny_fixtures.py`), and (2) the plain-Rust f32
//! reference forward on the same weights; plus tokenization against HF's ids.

mod common;
use common::*;
use edgereason::engine::{Engine, EngineOptions};
use edgereason::loader::load_model;
use edgereason::model::reference::ReferenceModel;

fn engine_logits(engine: &Engine, ids: &[u32]) -> Vec<Vec<f32>> {
    let mut s = engine.session();
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
    let engine = Engine::from_host(host, &EngineOptions { max_rows: 20, ..Default::default() }).unwrap();
    let mut worst_gpu = 0f32;
    for case in expected["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let ids = u32s(&case["ids"]);
        assert_eq!(engine.encode(text).unwrap(), ids, "{name}: tokenization of {text:?}");
        let hf: Vec<Vec<f32>> = case["logits"].as_array().unwrap().iter().map(f32s).collect();
        // (1) the f32 reference equals transformers: loader, RoPE, GQA, biases, norms.
        let cpu = reference.forward(&ids);
        for (t, (c, h)) in cpu.iter().zip(&hf).enumerate() {
            let e = rel_max_err(c, h);
            assert!(e < 1e-4, "{name} {}: reference vs HF at position {t}: relative error {e}", case["name"]);
        }
        // (2) the GPU forward stays close. Its error is the int8 activation blocks' (each
        // matmul ~1% on these random 64-wide weights; the kernels themselves are exact to
        // 2e-3 against that arithmetic in tests/kernels.rs).
        let gpu = engine_logits(&engine, &ids);
        for (t, (g, h)) in gpu.iter().zip(&hf).enumerate() {
            let e = rel_max_err(g, h);
            worst_gpu = worst_gpu.max(e);
            assert!(e < 0.08, "{name} {}: GPU vs HF at position {t}: relative error {e}", case["name"]);
        }
        let agree = gpu.iter().zip(&hf).filter(|(g, h)| edgereason::sampling::argmax(g) == edgereason::sampling::argmax(h)).count();
        assert!(agree * 10 >= gpu.len() * 9, "{name}: argmax agrees at only {agree}/{} positions", gpu.len());
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
fn decode_steps_equal_one_prefill() {
    // The KV cache path (one token at a time) gives the same logits as prefill.
    let host = load_model(&fixture("tiny-qwen2")).unwrap();
    let engine = Engine::from_host(host, &EngineOptions::default()).unwrap();
    let ids = engine.encode("The capital of France is Paris.").unwrap();
    let all = engine_logits(&engine, &ids);
    let mut s = engine.session();
    for (t, &id) in ids.iter().enumerate() {
        let l = s.forward(&[id]).unwrap();
        let e = rel_max_err(&l, &all[t]);
        assert!(e < 1e-4, "position {t}: decode vs prefill relative error {e}");
    }
}

#[test]
fn prompt_longer_than_context_is_a_clear_error() {
    let host = load_model(&fixture("tiny-llama")).unwrap();
    let engine = Engine::from_host(host, &EngineOptions { n_ctx: 8, ..Default::default() }).unwrap();
    let ids: Vec<u32> = (0..12).collect();
    let err = engine.generate(&ids, &Default::default(), |_, _| true).unwrap_err().to_string();
    assert!(err.contains("longer than the context"), "{err}");
    let mut s = engine.session();
    let err = s.forward(&ids).unwrap_err().to_string();
    assert!(err.contains("context full"), "{err}");
    let err = s.forward(&[100_000]).unwrap_err().to_string();
    assert!(err.contains("outside the vocabulary"), "{err}");
}
