//! What each fuzz target does with its input, shared by the cargo-fuzz targets
//! (`fuzz/fuzz_targets/*.rs`) and by `tests/fuzz_replay.rs`, which replays every file of
//! `fuzz/regressions/<target>/` on the stable toolchain in CI. A target may return any
//! error; it must not panic, hang or allocate without bound.

use edgereason::adapters::{LoraAdapter, Switcher, Verifier};
use edgereason::loader::chat_template::{ChatMessage, ChatTemplate};
use edgereason::loader::{load_model, ModelConfig};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The repository's root (fixtures live under tests/fixtures): this file is compiled by
/// the fuzz crate (in fuzz/) and by the root crate's replay test.
pub fn root() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    match dir.file_name().and_then(|n| n.to_str()) {
        Some("fuzz") => dir.parent().unwrap().to_path_buf(),
        _ => dir.to_path_buf(),
    }
}

fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("edgereason-fuzz")
        .tempdir_in(std::env::temp_dir())
        .expect("temp dir")
}

/// Split an input into two files' bytes at the first `0xFF 0x00` pair (the second file
/// empty if there is none), so one input drives a config and its tensors.
pub fn split2(data: &[u8]) -> (&[u8], &[u8]) {
    match data.windows(2).position(|w| w == [0xFF, 0x00]) {
        Some(i) => (&data[..i], &data[i + 2..]),
        None => (data, &[]),
    }
}

fn tiny_config() -> &'static ModelConfig {
    static C: OnceLock<ModelConfig> = OnceLock::new();
    C.get_or_init(|| {
        load_model(&root().join("tests/fixtures/tiny-qwen2"))
            .expect("tiny-qwen2 fixture")
            .config
    })
}

/// Run target `name` on `data`.
pub fn run(name: &str, data: &[u8]) {
    let dir = scratch();
    let d = dir.path();
    match name {
        "gguf" => {
            let p = d.join("m.gguf");
            std::fs::write(&p, data).unwrap();
            let _ = load_model(&p);
        }
        "prequant" => {
            let p = d.join("m.safetensors");
            std::fs::write(&p, data).unwrap();
            let _ = load_model(&p);
        }
        "hf_dir" => {
            let (config, tensors) = split2(data);
            std::fs::write(d.join("config.json"), config).unwrap();
            std::fs::write(d.join("model.safetensors"), tensors).unwrap();
            let tok = root().join("tests/fixtures/tiny-qwen2/tokenizer.json");
            std::fs::copy(tok, d.join("tokenizer.json")).unwrap();
            let _ = load_model(d);
        }
        "peft" => {
            let (config, tensors) = split2(data);
            std::fs::write(d.join("adapter_config.json"), config).unwrap();
            std::fs::write(d.join("adapter_model.safetensors"), tensors).unwrap();
            let _ = LoraAdapter::load(d, tiny_config());
        }
        "heads" => {
            let p = d.join("head.safetensors");
            std::fs::write(&p, data).unwrap();
            let _ = Switcher::load(&p, tiny_config().n_embd);
            let _ = Verifier::load(&p, tiny_config().n_embd);
        }
        "chat_template" => {
            let source = String::from_utf8_lossy(data);
            if let Ok(t) = ChatTemplate::new(&source) {
                let msgs = [
                    ChatMessage::new("system", "Be brief."),
                    ChatMessage::new("user", "Hi"),
                    ChatMessage::new("assistant", "Hello!"),
                    ChatMessage::new("user", "What is 2+2?"),
                ];
                let _ = t.render(&msgs, true, "<s>", "</s>");
            }
        }
        other => panic!("unknown fuzz target {other}"),
    }
}
