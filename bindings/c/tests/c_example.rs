//! examples/c/generate.c, compiled with the system's `cc` against include/edgereason.h and
//! libedgereason_c.so, run on SmolLM2-135M: its greedy tokens (through the callback API and
//! through a streamed request) must equal the Rust API's, a cancelled request must say so,
//! best-of-4 must vote, and a bad adapter path must come back as an error message.
//! The model comes from `pull`'s cache (tools/test.sh pulls it); a missing one fails unless
//! `EDGEREASON_SKIP_MISSING_MODELS=1`.

use edgereason::engine::{Engine, EngineOptions, GenerateParams};
use std::path::{Path, PathBuf};
use std::process::Command;

const QUESTION: &str = "What is 12 + 30?";

fn model() -> Option<PathBuf> {
    let m = edgereason::pull::known_models()
        .iter()
        .find(|m| m.name == "smollm2-135m")
        .unwrap();
    let p = edgereason::pull::cache_dir().unwrap().join(m.file_name);
    if p.exists() {
        return Some(p);
    }
    if std::env::var("EDGEREASON_SKIP_MISSING_MODELS").is_ok_and(|v| v == "1") {
        eprintln!("skipping: {} not present", p.display());
        return None;
    }
    panic!(
        "{} not present: run `edgereason pull smollm2-135m`, or set EDGEREASON_SKIP_MISSING_MODELS=1",
        p.display()
    );
}

/// target/<profile>, where cargo puts libedgereason_c.so next to the test's deps/.
fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().to_path_buf()
}

fn compile_example(out: &Path) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let lib = lib_dir();
    assert!(
        lib.join("libedgereason_c.so").exists() || lib.join("libedgereason_c.dylib").exists(),
        "no libedgereason_c in {}: `cargo build --release -p edgereason-c` first (tools/test.sh does)",
        lib.display()
    );
    let status = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .arg(root.join("examples/c/generate.c"))
        .args(["-std=c99", "-Wall", "-Wextra", "-Werror", "-I"])
        .arg(root.join("bindings/c/include"))
        .arg("-L")
        .arg(&lib)
        .arg("-ledgereason_c")
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .arg("-o")
        .arg(out)
        .status()
        .expect("run cc");
    assert!(status.success(), "cc failed: {status}");
}

fn ids_after(stdout: &str, label: &str) -> Vec<u32> {
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix(label))
        .unwrap_or_else(|| panic!("no '{label}' line in:\n{stdout}"));
    line.split_whitespace()
        .map(|t| t.parse().unwrap())
        .collect()
}

#[test]
fn c_example_greedy_tokens_equal_the_rust_apis() {
    let Some(model) = model() else { return };
    let dir = tempfile_dir();
    let exe = dir.join("generate");
    compile_example(&exe);
    let out = Command::new(&exe)
        .arg(&model)
        .arg(QUESTION)
        .output()
        .expect("run the C example");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "example failed:\n{stdout}\n{stderr}");

    let engine = Engine::load(model.to_str().unwrap(), &EngineOptions::default()).unwrap();
    let prompt = engine
        .encode(&engine.chat_prompt(None, QUESTION).unwrap())
        .unwrap();
    let params = GenerateParams {
        max_tokens: 24,
        ..Default::default()
    };
    let rust = engine.generate(&prompt, &params, |_, _| true).unwrap();

    assert!(!rust.tokens.is_empty());
    assert_eq!(ids_after(&stdout, "tokens:"), rust.tokens, "{stdout}");
    assert_eq!(ids_after(&stdout, "streamed:"), rust.tokens, "{stdout}");
    let n = rust.tokens.len();
    assert!(
        stdout.contains(&format!(
            "top_logprobs: {n} of {n} tokens list the token first"
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("callbacks: {}", rust.tokens.len())),
        "{stdout}"
    );
    assert!(
        stdout.contains("cancelled: cancelled after"),
        "a cancelled request should finish 'cancelled':\n{stdout}"
    );
    assert!(stdout.contains("best_of: 4 candidates"), "{stdout}");
    let err = stdout.lines().find_map(|l| l.strip_prefix("error: "));
    assert!(
        err.is_some_and(|e| e.contains("/nonexistent/adapter")),
        "the bad adapter path should be named in the error:\n{stdout}"
    );
}

fn tempfile_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("edgereason-c-example-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}
