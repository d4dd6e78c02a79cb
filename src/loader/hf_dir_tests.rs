//! Tests for the HF directory loader, on tiny checkpoints written by the tests.
//! `write_hf_dir` is shared with the pre-quantized format's tests.

use super::*;
use rand::{Rng, SeedableRng};
use safetensors::tensor::TensorView;
use serde_json::json;

/// Parameters of a tiny checkpoint.
pub(crate) struct Tiny {
    pub model_type: &'static str,
    pub dtype: Dtype,
    pub tied: bool,
    /// Split the weights over this many shards (1 = plain `model.safetensors`).
    pub shards: usize,
}

pub(crate) const WORDS: &[&str] = &[
    "[UNK]",
    "hello",
    "world",
    "the",
    "cat",
    "sat",
    "on",
    "mat",
    "<|im_end|>",
    "<|endoftext|>",
    "<s>",
];
pub(crate) const N_VOCAB: usize = 64;

fn config_json(t: &Tiny) -> Value {
    json!({
        "model_type": t.model_type,
        "architectures": [if t.model_type == "qwen2" { "Qwen2ForCausalLM" } else { "LlamaForCausalLM" }],
        "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
        "intermediate_size": 96, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
        "max_position_embeddings": 512, "tie_word_embeddings": t.tied, "vocab_size": N_VOCAB,
        "eos_token_id": 9,
    })
}

/// The HF tensors of a tiny model (name, shape), in the conventions of `model_type`.
pub(crate) fn hf_tensor_shapes(t: &Tiny) -> Vec<(String, Vec<usize>)> {
    let mut v = vec![
        ("model.embed_tokens.weight".to_string(), vec![N_VOCAB, 64]),
        ("model.norm.weight".into(), vec![64]),
    ];
    if !t.tied {
        v.push(("lm_head.weight".into(), vec![N_VOCAB, 64]));
    }
    for i in 0..2 {
        let p = |s: &str| format!("model.layers.{i}.{s}");
        v.extend([
            (p("input_layernorm.weight"), vec![64]),
            (p("post_attention_layernorm.weight"), vec![64]),
            (p("self_attn.q_proj.weight"), vec![64, 64]),
            (p("self_attn.k_proj.weight"), vec![32, 64]),
            (p("self_attn.v_proj.weight"), vec![32, 64]),
            (p("self_attn.o_proj.weight"), vec![64, 64]),
            (p("mlp.gate_proj.weight"), vec![96, 64]),
            (p("mlp.up_proj.weight"), vec![96, 64]),
            (p("mlp.down_proj.weight"), vec![64, 96]),
        ]);
        if t.model_type == "qwen2" {
            v.extend([
                (p("self_attn.q_proj.bias"), vec![64]),
                (p("self_attn.k_proj.bias"), vec![32]),
                (p("self_attn.v_proj.bias"), vec![32]),
            ]);
        }
    }
    v
}

fn encode(dtype: Dtype, vals: &[f32]) -> Vec<u8> {
    match dtype {
        Dtype::F32 => vals.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Dtype::F16 => vals
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
            .collect(),
        Dtype::BF16 => vals
            .iter()
            .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
            .collect(),
        other => panic!("the fixture writes F32, F16 or BF16, not {other:?}"),
    }
}

/// Write safetensors with the given (name, shape, bytes, dtype) to `path`.
pub(crate) fn write_st(path: &Path, tensors: &[(String, Vec<usize>, Vec<u8>, Dtype)]) {
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, s, b, d)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

/// A word-level tokenizer over [`WORDS`] with whitespace splitting.
pub(crate) fn tiny_tokenizer() -> tokenizers::Tokenizer {
    use tokenizers::models::wordlevel::WordLevel;
    let vocab = WORDS
        .iter()
        .enumerate()
        .map(|(i, w)| (w.to_string(), i as u32))
        .collect();
    let model = WordLevel::builder()
        .vocab(vocab)
        .unk_token("[UNK]".into())
        .build()
        .unwrap();
    let mut tok = tokenizers::Tokenizer::new(model);
    tok.with_pre_tokenizer(Some(tokenizers::pre_tokenizers::whitespace::Whitespace {}));
    tok
}

/// Write a complete tiny checkpoint into `dir`; returns the f32 values by HF name.
pub(crate) fn write_hf_dir(dir: &Path, t: &Tiny) -> HashMap<String, Vec<f32>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    std::fs::write(dir.join("config.json"), config_json(t).to_string()).unwrap();
    let mut values = HashMap::new();
    let mut all = Vec::new();
    for (name, shape) in hf_tensor_shapes(t) {
        let n: usize = shape.iter().product();
        // Values exactly representable in every dtype, so comparisons can be exact.
        let vals: Vec<f32> = (0..n)
            .map(|_| (rng.random_range(-64i32..64) as f32) / 64.0)
            .collect();
        all.push((name.clone(), shape, encode(t.dtype, &vals), t.dtype));
        values.insert(name, vals);
    }
    if t.shards <= 1 {
        write_st(&dir.join("model.safetensors"), &all);
    } else {
        let mut weight_map = serde_json::Map::new();
        let per = all.len().div_ceil(t.shards);
        for (i, chunk) in all.chunks(per).enumerate() {
            let file = format!("model-{:05}-of-{:05}.safetensors", i + 1, t.shards);
            for (n, ..) in chunk {
                weight_map.insert(n.clone(), json!(file));
            }
            write_st(&dir.join(&file), chunk);
        }
        let index = json!({"metadata": {}, "weight_map": weight_map});
        std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    }
    tiny_tokenizer()
        .save(dir.join("tokenizer.json"), false)
        .unwrap();
    let tc = json!({
        "chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "{{ messages }}"}],
        "bos_token": {"content": "<s>", "lstrip": false}, "eos_token": "<|im_end|>", "add_bos_token": true,
    });
    std::fs::write(dir.join("tokenizer_config.json"), tc.to_string()).unwrap();
    std::fs::write(
        dir.join("generation_config.json"),
        json!({"eos_token_id": [8, 3]}).to_string(),
    )
    .unwrap();
    values
}

fn load_err(dir: &Path) -> String {
    match load_hf_dir(dir) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn loads_all_dtypes_and_maps_names() {
    for (dtype, model_type, tied) in [
        (Dtype::F32, "qwen2", true),
        (Dtype::F16, "llama", false),
        (Dtype::BF16, "qwen2", false),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let vals = write_hf_dir(
            dir.path(),
            &Tiny {
                model_type,
                dtype,
                tied,
                shards: 1,
            },
        );
        let m = load_hf_dir(dir.path()).unwrap();
        assert_eq!(
            m.config.arch,
            if model_type == "qwen2" {
                Arch::Qwen2
            } else {
                Arch::Llama
            }
        );
        assert_eq!(
            (
                m.config.n_embd,
                m.config.n_head,
                m.config.n_kv_head,
                m.config.head_dim
            ),
            (64, 2, 1, 32)
        );
        assert_eq!(
            (
                m.config.n_ff,
                m.config.n_layer,
                m.config.n_vocab,
                m.config.n_ctx
            ),
            (96, 2, N_VOCAB, 512)
        );
        assert_eq!(m.config.rope_theta, 1e6);
        assert_eq!(m.config.tied_embeddings, tied);
        assert_eq!(m.tensors.contains_key("output.weight"), !tied);
        let q = &m.tensors["blk.1.attn_k.weight"];
        assert_eq!(q.shape, vec![32, 64]);
        assert_eq!(q.to_f32(), vals["model.layers.1.self_attn.k_proj.weight"]);
        assert_eq!(
            m.tensors["blk.0.ffn_down.weight"].to_f32(),
            vals["model.layers.0.mlp.down_proj.weight"]
        );
        assert_eq!(
            m.tensors.contains_key("blk.0.attn_q.bias"),
            model_type == "qwen2"
        );
        assert_eq!(m.chat_template.as_deref(), Some("{{ messages }}"));
        assert_eq!(m.bos_token_id, Some(10));
        assert!(m.add_bos);
        // generation_config [8, 3] ∪ config.json 9 ∪ tokenizer_config <|im_end|>=8 ∪ vocab specials.
        assert_eq!(m.eos_token_ids, vec![3, 8, 9]);
        assert_eq!(
            m.tokenizer.encode("the cat sat", false).unwrap().get_ids(),
            &[3, 4, 5]
        );
    }
}

#[test]
fn sharded_index_loads() {
    let dir = tempfile::tempdir().unwrap();
    let vals = write_hf_dir(
        dir.path(),
        &Tiny {
            model_type: "qwen2",
            dtype: Dtype::BF16,
            tied: false,
            shards: 3,
        },
    );
    let m = load_hf_dir(dir.path()).unwrap();
    assert!(m.source.contains("3 file(s)"), "{}", m.source);
    assert_eq!(m.tensors["output.weight"].to_f32(), vals["lm_head.weight"]);
    assert_eq!(m.tensors.len(), 2 + 1 + 2 * 12);
}

#[test]
fn optional_files_may_be_missing() {
    let dir = tempfile::tempdir().unwrap();
    write_hf_dir(
        dir.path(),
        &Tiny {
            model_type: "llama",
            dtype: Dtype::F32,
            tied: true,
            shards: 1,
        },
    );
    std::fs::remove_file(dir.path().join("tokenizer_config.json")).unwrap();
    std::fs::remove_file(dir.path().join("generation_config.json")).unwrap();
    let m = load_hf_dir(dir.path()).unwrap();
    assert!(
        m.source.contains("no tokenizer_config.json")
            && m.source.contains("no generation_config.json"),
        "{}",
        m.source
    );
    assert_eq!(m.chat_template, None);
    assert!(!m.add_bos);
    assert_eq!(m.eos_token_ids, vec![8, 9]); // config.json 9, <|im_end|> 8, <|endoftext|> 9
}

#[test]
fn wrong_shape_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let t = Tiny {
        model_type: "llama",
        dtype: Dtype::F32,
        tied: false,
        shards: 1,
    };
    write_hf_dir(dir.path(), &t);
    let mut tensors: Vec<_> = hf_tensor_shapes(&t)
        .into_iter()
        .map(|(n, s)| {
            let s = if n == "model.layers.1.mlp.up_proj.weight" {
                vec![64, 96]
            } else {
                s
            };
            let bytes = vec![0u8; s.iter().product::<usize>() * 4];
            (n, s, bytes, Dtype::F32)
        })
        .collect();
    write_st(&dir.path().join("model.safetensors"), &tensors);
    let e = load_err(dir.path());
    assert!(
        e.contains("model.safetensors")
            && e.contains("blk.1.ffn_up.weight")
            && e.contains("[96, 64]")
            && e.contains("[64, 96]"),
        "{e}"
    );

    // Missing tensor.
    tensors.retain(|(n, ..)| n != "model.layers.0.self_attn.v_proj.weight");
    tensors.iter_mut().for_each(|t| {
        if t.0.contains("up_proj") {
            t.1 = vec![96, 64]
        }
    });
    write_st(&dir.path().join("model.safetensors"), &tensors);
    let e = load_err(dir.path());
    assert!(e.contains("missing tensor 'blk.0.attn_v.weight'"), "{e}");

    // Unsupported dtype.
    tensors.push((
        "model.layers.0.self_attn.v_proj.weight".into(),
        vec![32, 64],
        vec![0; 32 * 64],
        Dtype::U8,
    ));
    write_st(&dir.path().join("model.safetensors"), &tensors);
    let e = load_err(dir.path());
    assert!(
        e.contains("model.layers.0.self_attn.v_proj.weight") && e.contains("unsupported dtype U8"),
        "{e}"
    );
}

#[test]
fn config_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    write_hf_dir(
        dir.path(),
        &Tiny {
            model_type: "llama",
            dtype: Dtype::F32,
            tied: false,
            shards: 1,
        },
    );
    let cfg_path = dir.path().join("config.json");
    let orig: Value = serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    let with = |k: &str, v: Value| {
        let mut c = orig.clone();
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v;
        }
        std::fs::write(&cfg_path, c.to_string()).unwrap();
        load_err(dir.path())
    };
    let e = with("model_type", json!("mamba"));
    assert!(
        e.contains("config.json") && e.contains("unsupported architecture 'mamba'"),
        "{e}"
    );
    let e = with("intermediate_size", json!(100));
    assert!(
        e.contains("config.json")
            && e.contains("intermediate_size")
            && e.contains("multiple of 32"),
        "{e}"
    );
    let e = with("hidden_size", Value::Null);
    assert!(
        e.contains("config.json") && e.contains("hidden_size"),
        "{e}"
    );
    let e = with("rms_norm_eps", json!("small"));
    assert!(
        e.contains("config.json") && e.contains("rms_norm_eps"),
        "{e}"
    );
    std::fs::write(&cfg_path, "{not json").unwrap();
    let e = load_err(dir.path());
    assert!(e.contains("config.json") && e.contains("JSON"), "{e}");
}

#[test]
fn truncated_safetensors_and_missing_files() {
    let dir = tempfile::tempdir().unwrap();
    write_hf_dir(
        dir.path(),
        &Tiny {
            model_type: "qwen2",
            dtype: Dtype::F16,
            tied: true,
            shards: 1,
        },
    );
    let st = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&st).unwrap();
    std::fs::write(&st, &bytes[..bytes.len() - 100]).unwrap();
    let e = load_err(dir.path());
    assert!(
        e.contains("model.safetensors") && e.contains("malformed"),
        "{e}"
    );
    std::fs::write(&st, &bytes[..5]).unwrap();
    let e = load_err(dir.path());
    assert!(
        e.contains("model.safetensors") && e.contains("malformed"),
        "{e}"
    );
    std::fs::write(&st, &bytes).unwrap();

    std::fs::remove_file(dir.path().join("tokenizer.json")).unwrap();
    let e = load_err(dir.path());
    assert!(e.contains("missing tokenizer.json"), "{e}");
    std::fs::write(dir.path().join("tokenizer.json"), "{}").unwrap();
    let e = load_err(dir.path());
    assert!(
        e.contains("tokenizer.json") && e.contains("tokenizer"),
        "{e}"
    );

    std::fs::remove_file(&st).unwrap();
    let e = load_err(dir.path());
    assert!(e.contains("missing model.safetensors"), "{e}");
}

#[test]
fn sharded_index_errors() {
    let dir = tempfile::tempdir().unwrap();
    write_hf_dir(
        dir.path(),
        &Tiny {
            model_type: "qwen2",
            dtype: Dtype::F32,
            tied: true,
            shards: 2,
        },
    );
    std::fs::remove_file(dir.path().join("model-00002-of-00002.safetensors")).unwrap();
    let e = load_err(dir.path());
    assert!(
        e.contains("model.safetensors.index.json")
            && e.contains("shard file 'model-00002-of-00002.safetensors'"),
        "{e}"
    );
}

#[test]
fn canonical_names() {
    assert_eq!(
        canonical_name("model.layers.12.self_attn.o_proj.weight").unwrap(),
        "blk.12.attn_output.weight"
    );
    assert_eq!(
        canonical_name("model.layers.3.self_attn.k_proj.bias").unwrap(),
        "blk.3.attn_k.bias"
    );
    assert_eq!(
        canonical_name("model.layers.0.post_attention_layernorm.weight").unwrap(),
        "blk.0.ffn_norm.weight"
    );
    assert_eq!(
        canonical_name("model.layers.0.self_attn.rotary_emb.inv_freq"),
        None
    );
}
