//! Incremental detokenization gives the same text as decoding the whole sequence, token by
//! token, on every tokenizer the engine ships with (the fixtures' and both real models'),
//! over text that splits UTF-8 characters across tokens.

mod common;
use common::*;
use edgereason::loader::load_model;
use edgereason::sched::detokenize::IncrementalText;

const TEXTS: &[&str] = &[
    "The capital of France is Paris.\n\nNext line:  two spaces, then a tab\there.",
    "naïve café — “quotes” and ☕🙂👍🏽 emoji, 東京は日本の首都です。 Ελληνικά, русский",
    "fn main() {\n    println!(\"{}\", 6 * 7); // 42\n}\n<think>\n12 + 30 = 42\n</think>\n\\boxed{42}",
];

fn check(name: &str, tok: &tokenizers::Tokenizer) {
    for text in TEXTS {
        let ids = tok.encode(*text, false).unwrap().get_ids().to_vec();
        for skip in [true, false] {
            let mut inc = IncrementalText::new(skip);
            let mut streamed = String::new();
            for n in 1..=ids.len() {
                let delta = inc.push(tok, &ids[..n]).unwrap();
                assert!(
                    !delta.contains('\u{FFFD}'),
                    "{name}: a split character escaped"
                );
                streamed.push_str(delta);
            }
            let full = tok.decode(&ids, skip).unwrap();
            assert_eq!(streamed, full, "{name} (skip_special {skip})");
            assert_eq!(inc.text, full, "{name}");
        }
    }
}

#[test]
fn incremental_text_equals_the_full_decode_on_the_fixture_tokenizers() {
    for name in ["tiny-llama", "tiny-qwen2"] {
        check(name, &load_model(&fixture(name)).unwrap().tokenizer);
    }
}

#[test]
fn incremental_text_equals_the_full_decode_on_the_real_tokenizers() {
    for m in ["smollm2-135m", "qwen2.5-coder-0.5b"] {
        let known = edgereason::pull::known_models()
            .iter()
            .find(|k| k.name == m)
            .unwrap();
        let path = edgereason::pull::cache_dir().unwrap().join(known.file_name);
        if !path.exists() {
            assert!(
                std::env::var("EDGEREASON_SKIP_MISSING_MODELS").is_ok_and(|v| v == "1"),
                "{} not present: run `edgereason pull {m}` (or set EDGEREASON_SKIP_MISSING_MODELS=1)",
                path.display()
            );
            continue;
        }
        check(m, &load_model(&path).unwrap().tokenizer);
    }
}
