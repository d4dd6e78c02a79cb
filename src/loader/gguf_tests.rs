//! Tests for the GGUF reader: a synthetic tiny llama file, and the real model files in
//! `pull`'s cache (tools/test.sh pulls them first; a missing one fails the test unless
//! `EDGEREASON_SKIP_MISSING_MODELS=1`).

use super::*;
use crate::loader::gguf_model::load_gguf;
use crate::loader::HostModel;
use half::f16;
use std::path::PathBuf;

/// Path of a real test model in `pull`'s cache (`$EDGEREASON_CACHE`, else the platform
/// cache dir): `None` only when `EDGEREASON_SKIP_MISSING_MODELS=1` allows skipping.
pub fn real_gguf(name: &str) -> Option<PathBuf> {
    let p = crate::pull::cache_dir().unwrap().join(name);
    if p.exists() {
        return Some(p);
    }
    let why = format!(
        "{} not present: run `edgereason pull` (tools/test.sh does)",
        p.display()
    );
    if std::env::var("EDGEREASON_SKIP_MISSING_MODELS").is_ok_and(|v| v == "1") {
        eprintln!("skipping: {why}");
        return None;
    }
    panic!("{why}, or set EDGEREASON_SKIP_MISSING_MODELS=1 to skip");
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("edgereason-gguf-test-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

use crate::loader::gguf_writer::GgufWriter as Writer;

const E: u64 = 64; // n_embd
const HD: usize = 16; // head_dim
const NH: u64 = 4;
const NKV: u64 = 2;

/// A one-layer llama with 4 query heads, 2 KV heads, head_dim 16. `attn_q` is Q4_0 with
/// d = gguf row + 1; `attn_k` is F32 with every value = gguf row; both let the test see
/// where each row went.
fn tiny_llama() -> Writer {
    let mut w = Writer::default();
    w.str("general.architecture", "llama");
    w.u32("llama.embedding_length", E as u32);
    w.u32("llama.block_count", 1);
    w.u32("llama.attention.head_count", NH as u32);
    w.u32("llama.attention.head_count_kv", NKV as u32);
    w.u32("llama.feed_forward_length", 96);
    w.u32("llama.context_length", 256);
    w.f32("llama.attention.layer_norm_rms_epsilon", 1e-5);
    w.str("tokenizer.ggml.model", "gpt2");
    w.str("tokenizer.ggml.pre", "smollm");
    let toks = ["a", "b", "ab", "Ġ", "<|im_start|>", "<|im_end|>", "x", "y"];
    w.strs("tokenizer.ggml.tokens", &toks);
    w.strs("tokenizer.ggml.merges", &["a b"]);
    w.i32s("tokenizer.ggml.token_type", &[1, 1, 1, 1, 3, 3, 1, 1]);
    w.u32("tokenizer.ggml.eos_token_id", 5);
    w.f32_tensor("token_embd.weight", &[E, toks.len() as u64], |i| i as f32);
    w.f32_tensor("output_norm.weight", &[E], |_| 1.0);
    w.f32_tensor("blk.0.attn_norm.weight", &[E], |_| 1.0);
    w.f32_tensor("blk.0.ffn_norm.weight", &[E], |_| 1.0);
    let q_rows = NH as usize * HD;
    let mut q = vec![];
    for r in 0..q_rows {
        for g in 0..E as usize / 32 {
            q.extend(f16::from_f32(r as f32 + 1.0).to_le_bytes());
            q.extend((0..16u8).map(|j| (j + g as u8) & 0xF | 0x80));
        }
    }
    w.tensor("blk.0.attn_q.weight", &[E, q_rows as u64], 2, q);
    w.f32_tensor("blk.0.attn_k.weight", &[E, NKV * HD as u64], |i| {
        (i / E as usize) as f32
    });
    w.f32_tensor("blk.0.attn_v.weight", &[E, NKV * HD as u64], |i| i as f32);
    w.f32_tensor("blk.0.attn_output.weight", &[q_rows as u64, E], |_| 0.5);
    w.f32_tensor("blk.0.ffn_gate.weight", &[E, 96], |_| 0.0);
    w.f32_tensor("blk.0.ffn_up.weight", &[E, 96], |_| 0.0);
    w.f32_tensor("blk.0.ffn_down.weight", &[96, E], |_| 0.0);
    w
}

fn write(name: &str, bytes: &[u8]) -> PathBuf {
    let p = tmp(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn expect_malformed(r: Result<HostModel, LoadError>, path: &Path, needle: &str) {
    match r {
        Err(e @ LoadError::Malformed { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains(&path.display().to_string()),
                "path missing in: {msg}"
            );
            assert!(msg.contains(needle), "'{needle}' missing in: {msg}");
        }
        Err(e) => panic!("expected Malformed, got {e}"),
        Ok(_) => panic!("expected Malformed, loaded fine"),
    }
}

#[test]
fn synthetic_llama_loads_and_unpermutes() {
    let p = write("tiny.gguf", &tiny_llama().bytes());
    let m = load_gguf(&p).unwrap();
    let c = &m.config;
    assert_eq!(
        (
            c.arch,
            c.n_vocab,
            c.n_embd,
            c.n_head,
            c.n_kv_head,
            c.head_dim
        ),
        (Arch::Llama, 8, 64, 4, 2, 16)
    );
    assert_eq!(
        (c.rope_theta, c.n_ff, c.n_ctx, c.tied_embeddings),
        (10000.0, 96, 256, true)
    );
    // <|im_end|> (the file's eos) and <|im_start|>: a ChatML turn opening ends a reply too.
    assert_eq!(m.eos_token_ids, vec![4, 5]);
    assert!(!m.add_bos);
    let q = &m.tensors["blk.0.attn_q.weight"];
    assert_eq!(q.shape, vec![64, 64]);
    let TensorData::Q4(groups) = &q.data else {
        panic!("Q4_0 must stay int4")
    };
    for hf_row in 0..64 {
        let (h, w) = (hf_row / HD, hf_row % HD);
        let (j, i) = (w / (HD / 2), w % (HD / 2));
        let gguf_row = h * HD + 2 * i + j;
        assert_eq!(
            groups[hf_row * 2].scale,
            gguf_row as f32 + 1.0,
            "q row {hf_row}"
        );
        assert_eq!(groups[hf_row * 2].min, -8.0 * (gguf_row as f32 + 1.0));
        assert_eq!(
            groups[hf_row * 2 + 1].q[0],
            1,
            "group order inside a row kept"
        );
    }
    let k = m.tensors["blk.0.attn_k.weight"].to_f32();
    // HF row 1 (head 0, first half, i=1) is GGUF row 2; HF row 8 (second half, i=0) is 1.
    assert_eq!(
        (k[64], k[8 * 64], k[16 * 64 + 9 * 64]),
        (2.0, 1.0, 16.0 + 3.0)
    );
    assert_eq!(
        m.tensors["blk.0.attn_v.weight"].to_f32()[70],
        70.0,
        "V is not permuted"
    );
    assert!(
        m.source.contains("GGUF v3") && m.source.contains("Q4_0×1"),
        "{}",
        m.source
    );
    let enc = m.tokenizer.encode("<|im_start|>ab", false).unwrap();
    assert_eq!(enc.get_ids(), &[4, 2]);
}

#[test]
fn synthetic_errors_name_file_and_field() {
    let good = tiny_llama().bytes();
    // Tensor count (bytes 8..16) corrupted to a huge value.
    let mut b = good.clone();
    b[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    let p = write("bad_count.gguf", &b);
    expect_malformed(load_gguf(&p), &p, "tensor count");
    // Every cut point gives an error, never a panic.
    for cut in (0..good.len()).step_by(97) {
        let p = write("cut.gguf", &good[..cut]);
        assert!(load_gguf(&p).is_err(), "cut at {cut} loaded");
    }
    // Unknown architecture.
    let mut w = tiny_llama();
    w.kv.clear();
    w.n_kv = 0;
    w.str("general.architecture", "mamba");
    let p = write("mamba.gguf", &w.bytes());
    assert!(matches!(load_gguf(&p), Err(LoadError::UnknownArch { .. })));
    // Missing tensor.
    let mut w = tiny_llama();
    w.tensors.retain(|t| t.0 != "blk.0.ffn_up.weight");
    let p = write("missing.gguf", &w.bytes());
    let e = load_gguf(&p).err().unwrap();
    assert!(
        matches!(e, LoadError::Missing { .. }) && e.to_string().contains("blk.0.ffn_up.weight"),
        "{e}"
    );
    // Misshaped tensor.
    let mut w = tiny_llama();
    w.tensors
        .iter_mut()
        .find(|t| t.0 == "output_norm.weight")
        .unwrap()
        .1 = vec![32];
    w.tensors
        .iter_mut()
        .find(|t| t.0 == "output_norm.weight")
        .unwrap()
        .3
        .truncate(128);
    let p = write("shape.gguf", &w.bytes());
    let e = load_gguf(&p).err().unwrap();
    assert!(
        matches!(e, LoadError::BadTensor { .. }) && e.to_string().contains("output_norm.weight"),
        "{e}"
    );
}

#[test]
fn real_files_truncated_or_corrupted_are_malformed() {
    let Some(src) = real_gguf("SmolLM2-135M-Instruct.Q4_1.gguf") else {
        return;
    };
    let bytes = std::fs::read(&src).unwrap();
    let p = write("smol_1mb.gguf", &bytes[..1 << 20]);
    // Cut inside the vocabulary: the merges count no longer fits in what is left.
    expect_malformed(load_gguf(&p), &p, "metadata 'tokenizer.ggml.");
    let p = write("smol_60pct.gguf", &bytes[..bytes.len() * 6 / 10]);
    expect_malformed(load_gguf(&p), &p, "data runs past end of file");
    let mut b = bytes[..4 << 20].to_vec();
    b[8..16].copy_from_slice(&(1u64 << 40).to_le_bytes());
    let p = write("smol_count.gguf", &b);
    expect_malformed(load_gguf(&p), &p, "tensor count");
    let _ = std::fs::remove_dir_all(p.parent().unwrap());
}

fn load_real(name: &str) -> Option<HostModel> {
    let p = real_gguf(name)?;
    let g = GgufFile::open(&p).unwrap();
    let mut by_type: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for t in &g.tensors {
        by_type.entry(t.ty.name()).or_default().push(t.name.clone());
    }
    for (ty, names) in &by_type {
        let shown: Vec<_> = names
            .iter()
            .filter(|n| !n.starts_with("blk.") || n.starts_with("blk.0."))
            .collect();
        println!(
            "{name}: {ty} ×{}: {shown:?}{}",
            names.len(),
            if shown.len() < names.len() {
                " (+ other layers)"
            } else {
                ""
            }
        );
    }
    let t0 = std::time::Instant::now();
    let m = load_gguf(&p).unwrap();
    println!(
        "{name}: load_gguf {:.2?}; {}\n{:?}",
        t0.elapsed(),
        m.source,
        m.config
    );
    Some(m)
}

fn check_q4_matches_file(m: &HostModel, path: &Path, name: &str) {
    let g = GgufFile::open(path).unwrap();
    let info = g.tensor_info(name).unwrap();
    let reference = ggml_quants::dequantize(info.ty, g.tensor_bytes(name).unwrap()).unwrap();
    let t = &m.tensors[name];
    assert!(
        matches!(t.data, TensorData::Q4(_)),
        "{name} is {} and must stay int4",
        info.ty.name()
    );
    assert_eq!(
        t.to_f32(),
        reference,
        "{name}: int4 groups equal ggml dequant"
    );
}

#[test]
fn real_smollm2_loads() {
    let Some(m) = load_real("SmolLM2-135M-Instruct.Q4_1.gguf") else {
        return;
    };
    let c = &m.config;
    assert_eq!(
        (
            c.arch,
            c.n_embd,
            c.n_layer,
            c.n_head,
            c.n_kv_head,
            c.head_dim,
            c.n_ff
        ),
        (Arch::Llama, 576, 30, 9, 3, 64, 1536)
    );
    assert_eq!(c.n_vocab, 49152);
    assert!(c.tied_embeddings);
    check_q4_matches_file(
        &m,
        &real_gguf("SmolLM2-135M-Instruct.Q4_1.gguf").unwrap(),
        "blk.0.ffn_up.weight",
    );
}

#[test]
fn real_qwen2_loads() {
    let name = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf";
    let Some(m) = load_real(name) else { return };
    let c = &m.config;
    assert_eq!(
        (
            c.arch,
            c.n_embd,
            c.n_layer,
            c.n_head,
            c.n_kv_head,
            c.head_dim,
            c.n_ff
        ),
        (Arch::Qwen2, 896, 24, 14, 2, 64, 4864)
    );
    assert_eq!(c.rope_theta, 1e6);
    assert!(m.tensors.contains_key("blk.0.attn_q.bias"));
    let path = real_gguf(name).unwrap();
    let g = GgufFile::open(&path).unwrap();
    let q4k = g
        .tensors
        .iter()
        .find(|t| t.ty == GgmlType::Q4K && t.dims.len() == 2)
        .unwrap();
    check_q4_matches_file(&m, &path, &q4k.name.clone());
}

/// Where load time goes (`cargo test --lib load_phases -- --ignored --nocapture`).
#[test]
#[ignore]
fn load_phases() {
    for name in [
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    ] {
        let Some(p) = real_gguf(name) else { continue };
        let t = std::time::Instant::now();
        let g = GgufFile::open(&p).unwrap();
        let t_open = t.elapsed();
        let c = read_config(&g).unwrap();
        let t = std::time::Instant::now();
        let _tok = crate::loader::tokenizer::tokenizer_from_gguf(&g, &p).unwrap();
        let t_tok = t.elapsed();
        let t = std::time::Instant::now();
        let ts = load_tensors(&g, &c, &expected_tensors(&c)).unwrap();
        let t_tensors = t.elapsed();
        let f32_bytes: usize = ts
            .values()
            .map(|t| {
                if let TensorData::F32(v) = &t.data {
                    v.len() * 4
                } else {
                    0
                }
            })
            .sum();
        println!(
            "{name}: open+metadata {t_open:.2?}, tokenizer {t_tok:.2?}, tensors {t_tensors:.2?} ({} MB as f32)",
            f32_bytes >> 20
        );
    }
}

/// Writes the synthetic llama as the GGUF fuzzer's seed (`fuzz/regressions/gguf/`); run by
/// hand: `cargo test --release --lib write_gguf_fuzz_seed -- --ignored`.
#[test]
#[ignore]
fn write_gguf_fuzz_seed() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions/gguf");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("seed-tiny-llama.gguf"), tiny_llama().bytes()).unwrap();
}

/// A model written by `gguf_writer::write_model` loads back with the same configuration
/// and tensors (llama Q/K rows permuted on write and un-permuted on load), and a synthetic
/// model's placeholder vocabulary makes a file the loader (and its tokenizer) accept.
#[test]
fn written_gguf_loads_back_unchanged() {
    let first = load_gguf(&write("tiny-src.gguf", &tiny_llama().bytes())).unwrap();
    let p = tmp("tiny-rewritten.gguf");
    crate::loader::gguf_writer::write_model(&first, &p).unwrap();
    let again = load_gguf(&p).unwrap();
    assert_eq!(again.config, first.config);
    assert_eq!(
        again.tokenizer.get_vocab_size(false),
        first.tokenizer.get_vocab_size(false)
    );
    let mut names: Vec<_> = first.tensors.keys().collect();
    names.sort();
    assert_eq!(again.tensors.len(), names.len());
    for name in names {
        let (a, b) = (&first.tensors[name], &again.tensors[name]);
        assert_eq!(a.shape, b.shape, "{name}");
        assert_eq!(a.to_f32(), b.to_f32(), "{name}");
    }
    let mut synthetic =
        crate::loader::synthetic::synthetic_model("synthetic:smollm2-135m").unwrap();
    synthetic
        .tensors
        .retain(|n, _| !n.starts_with("blk.") || n.starts_with("blk.0."));
    synthetic.config.n_layer = 1;
    let p = tmp("synthetic.gguf");
    crate::loader::gguf_writer::write_model(&synthetic, &p).unwrap();
    let loaded = load_gguf(&p).unwrap();
    assert_eq!(loaded.config.n_vocab, 49152);
    // Values differ only by the f16 rounding of each group's scale and min.
    let q = "blk.0.attn_q.weight";
    let (a, b) = (loaded.tensors[q].to_f32(), synthetic.tensors[q].to_f32());
    let worst = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(worst < 1e-4, "{q}: values moved by up to {worst}");
    assert!(!loaded
        .tokenizer
        .encode("any text at all", false)
        .unwrap()
        .get_ids()
        .is_empty());
}
