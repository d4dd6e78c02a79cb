//! The real models end to end against HF transformers running the same GGUF in f32
//! (`tools/make_real_fixtures.py`): tokenization, greedy continuations of chat prompts,
//! and teacher-forced top-1 agreement and perplexity on a fixed paragraph. The models are
//! fetched through `pull` into the cache on first use.

mod common;
use common::*;
use edgereason::engine::{Engine, EngineOptions, GenerateParams};

fn check_model(name: &str) {
    let fx = json(&format!("real/{name}.json"));
    let engine = Engine::load(name, &EngineOptions::default()).unwrap();

    // Greedy continuations of the chat prompts.
    for case in fx["chat"].as_array().unwrap() {
        let prompt_text = case["prompt_text"].as_str().unwrap();
        let user = case["messages"][0]["content"].as_str().unwrap();
        assert_eq!(
            engine.chat_prompt(None, user).unwrap(),
            prompt_text,
            "{name}: chat template"
        );
        let ids = engine.encode(prompt_text).unwrap();
        assert_eq!(
            ids,
            u32s(&case["prompt_ids"]),
            "{name}: prompt tokens of {user:?}"
        );
        let want = u32s(&case["greedy_ids"]);
        let margins = f32s(&case["greedy_top1_margin"]);
        let params = GenerateParams {
            max_tokens: 16.min(want.len()),
            ..Default::default()
        };
        let got = engine.generate(&ids, &params, |_, _| true).unwrap();
        let mut got_ids = got.tokens.clone();
        if got.finish_reason == "eos" {
            // The engine stopped on an end-of-sequence id: it matches the reference only if
            // the reference's next token is one too.
            let next = want.get(got_ids.len()).copied();
            let eos = next.filter(|t| engine.eos_token_ids.contains(t));
            got_ids.push(eos.unwrap_or(engine.eos_token_ids[0]));
        }
        let same = got_ids
            .iter()
            .zip(&want)
            .take_while(|(a, b)| a == b)
            .count();
        eprintln!(
            "{name}: {user:?}: {same}/{} greedy tokens match ({:?})",
            params.max_tokens, got.text
        );
        // The bar: the first 16 tokens (or up to EOS) agree, or the two part only where the
        // reference itself nearly ties (top-1 margin under 0.5 logits: the int4 weights
        // and int8 activation blocks are allowed to flip a coin the reference nearly flips).
        if same < params.max_tokens {
            eprintln!(
                "{name}:   parts at token {same}; reference top-1 margin there {}",
                margins[same]
            );
            assert!(margins[same] < 0.5, "{name}: {user:?}: greedy parts at token {same} where the reference's top-1 margin is {} (got {:?})", margins[same], got.text);
        }
    }

    // Teacher-forced paragraph: top-1 agreement and perplexity.
    let para = &fx["paragraph"];
    let ids = u32s(&para["ids"]);
    assert_eq!(
        engine.encode(para["text"].as_str().unwrap()).unwrap(),
        ids,
        "{name}: paragraph tokens"
    );
    let score = engine.score(&ids).unwrap();
    let positions = para["positions"].as_array().unwrap();
    let agree = score
        .positions
        .iter()
        .zip(positions)
        .filter(|(s, p)| s.top5[0].0 as u64 == p["top_ids"][0].as_u64().unwrap())
        .count();
    let frac = agree as f64 / score.positions.len() as f64;
    let ref_ppl = para["perplexity"].as_f64().unwrap();
    let rel = (score.perplexity - ref_ppl).abs() / ref_ppl;
    eprintln!("{name}: top-1 agreement {agree}/{} = {:.1}%, perplexity {:.3} vs reference {ref_ppl:.3} ({:+.2}%)", score.positions.len(), 100.0 * frac, score.perplexity, 100.0 * (score.perplexity - ref_ppl) / ref_ppl);
    assert!(frac >= 0.95, "{name}: top-1 agreement {frac:.3} < 0.95");
    assert!(
        rel <= 0.03,
        "{name}: perplexity {} vs reference {ref_ppl} ({:.1}% off, limit 3%)",
        score.perplexity,
        100.0 * rel
    );
}

#[test]
fn smollm2_135m_matches_transformers() {
    check_model("smollm2-135m");
}

#[test]
fn qwen25_05b_matches_transformers() {
    check_model("qwen2.5-0.5b");
}

#[test]
fn shipped_smollm2_artifacts_load_and_route() {
    // adapters/smollm2-135m: what `tools/train/demo.sh --ship` trained on this model. They
    // load against it, and the switcher sends a fact question to the base model and a
    // multi-step word problem (not in its training data) to the reasoning adapter.
    use edgereason::adapters::{Switcher, Verifier};
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("adapters/smollm2-135m");
    let engine = Engine::load("smollm2-135m", &EngineOptions::default()).unwrap();
    engine
        .load_adapter("reasoning", &dir.join("reasoning"))
        .unwrap();
    engine
        .load_adapter("reasoning-budget", &dir.join("reasoning-budget"))
        .unwrap();
    let d = engine.model.config.n_embd;
    let switcher =
        std::sync::Arc::new(Switcher::load(&dir.join("switcher.safetensors"), d).unwrap());
    Verifier::load(&dir.join("verifier.safetensors"), d).unwrap();
    let cases = [
        ("What is the capital of France?", false),
        ("Zoe has 6 buttons. She gives away 2 buttons. Then the number of buttons becomes 3 times as large. How many buttons does Zoe have now?", true),
    ];
    assert_routes(&engine, switcher, &cases);
}

#[test]
fn shipped_qwen_artifacts_load_and_route() {
    // adapters/qwen2.5-coder-0.5b: the broad SFT adapter and its switcher (RESULTS.md there).
    // They load against the default model, and the switcher sends a fact question to the
    // base model and a word problem written apart from the training generators (one of
    // tools/train/heldout.py's kind) to the reasoning adapter.
    use edgereason::adapters::Switcher;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("adapters/qwen2.5-coder-0.5b");
    let engine = Engine::load("qwen2.5-coder-0.5b", &EngineOptions::default()).unwrap();
    engine
        .load_adapter("reasoning", &dir.join("reasoning"))
        .unwrap();
    let d = engine.model.config.n_embd;
    let switcher =
        std::sync::Arc::new(Switcher::load(&dir.join("switcher.safetensors"), d).unwrap());
    let cases = [
        ("What is the capital of Japan?", false),
        ("A baker makes 144 rolls in the morning and 96 in the afternoon. She sells 175 of them and gives the rest to 5 neighbours in equal shares. How many rolls does each neighbour get?", true),
    ];
    assert_routes(&engine, switcher, &cases);
}

/// `reasoning: auto` with `switcher` and the loaded "reasoning" adapter sends each prompt
/// where `cases` says (true: the adapter).
fn assert_routes(
    engine: &Engine,
    switcher: std::sync::Arc<edgereason::adapters::Switcher>,
    cases: &[(&str, bool)],
) {
    for &(prompt, hard) in cases {
        let ids = engine
            .encode(&engine.chat_prompt(None, prompt).unwrap())
            .unwrap();
        let params = GenerateParams {
            max_tokens: 2,
            reasoning: edgereason::engine::Reasoning::Auto {
                adapter: "reasoning".into(),
                switcher: switcher.clone(),
            },
            ..Default::default()
        };
        let g = engine.generate(&ids, &params, |_, _| true).unwrap();
        assert_eq!(
            g.reasoning, hard,
            "{prompt:?}: switcher p = {:?}",
            g.switcher_probability
        );
    }
}
