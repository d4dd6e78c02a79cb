//! Synthetic models: the exact shapes and weight formats of the registry's real models,
//! filled with pseudo-random weights. Decode and prefill cost do not depend on the
//! values, so `edgereason bench --model synthetic:qwen2.5-coder-0.5b` measures a machine that
//! cannot download the model (a GPU box with no network) and nothing else.

use super::{Arch, HostModel, HostTensor, ModelConfig, Q4Group, Q8Group, TensorData};
use std::collections::HashMap;

/// Shapes of the registry's models, as their GGUF files give them.
fn config(name: &str) -> Option<ModelConfig> {
    Some(match name {
        "qwen2.5-coder-0.5b" | "qwen2.5-0.5b" => ModelConfig {
            arch: Arch::Qwen2,
            n_vocab: 151936,
            n_embd: 896,
            n_layer: 24,
            n_head: 14,
            n_kv_head: 2,
            head_dim: 64,
            n_ff: 4864,
            rope_theta: 1e6,
            rms_eps: 1e-6,
            n_ctx: 32768,
            tied_embeddings: false,
        },
        "smollm2-135m" => ModelConfig {
            arch: Arch::Llama,
            n_vocab: 49152,
            n_embd: 576,
            n_layer: 30,
            n_head: 9,
            n_kv_head: 3,
            head_dim: 64,
            n_ff: 1536,
            rope_theta: 1e5,
            rms_eps: 1e-5,
            n_ctx: 8192,
            tied_embeddings: true,
        },
        _ => return None,
    })
}

struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) as u32
    }
}

fn matrix(rows: usize, cols: usize, int8: bool, rng: &mut Lcg) -> HostTensor {
    let groups = rows * cols / 32;
    let data = if int8 {
        TensorData::Q8(
            (0..groups)
                .map(|_| Q8Group {
                    scale: 0.002,
                    q: std::array::from_fn(|_| (rng.next() % 255) as i8),
                })
                .collect(),
        )
    } else {
        TensorData::Q4(
            (0..groups)
                .map(|_| Q4Group {
                    scale: 0.004,
                    min: -0.03,
                    q: std::array::from_fn(|_| (rng.next() % 16) as u8),
                })
                .collect(),
        )
    };
    HostTensor {
        shape: vec![rows, cols],
        data,
    }
}

/// `synthetic:<registry name>` → a model of that shape. Matrices take the format the real
/// file's tensors load as: Qwen2.5-Coder Q4_K_M is mostly Q5_0/Q8_0 (int8 here) with half
/// its `ffn_down` in Q4_K (int4); SmolLM2 Q4_1 is int4 with a Q8_0 embedding.
pub fn synthetic_model(spec: &str) -> Option<HostModel> {
    let name = spec.strip_prefix("synthetic:")?;
    let c = config(name)?;
    let mut rng = Lcg(0x5eed);
    let qwen = c.arch == Arch::Qwen2;
    let (q_dim, kv_dim) = (c.n_head * c.head_dim, c.n_kv_head * c.head_dim);
    let mut t = HashMap::new();
    let ones = |n: usize| HostTensor {
        shape: vec![n],
        data: TensorData::F32(vec![1.0; n]),
    };
    t.insert(
        "token_embd.weight".to_string(),
        matrix(c.n_vocab, c.n_embd, true, &mut rng),
    );
    if !c.tied_embeddings {
        t.insert(
            "output.weight".to_string(),
            matrix(c.n_vocab, c.n_embd, true, &mut rng),
        );
    }
    t.insert("output_norm.weight".to_string(), ones(c.n_embd));
    for l in 0..c.n_layer {
        let p = |s: &str| format!("blk.{l}.{s}");
        t.insert(p("attn_norm.weight"), ones(c.n_embd));
        t.insert(p("ffn_norm.weight"), ones(c.n_embd));
        t.insert(p("attn_q.weight"), matrix(q_dim, c.n_embd, qwen, &mut rng));
        t.insert(p("attn_k.weight"), matrix(kv_dim, c.n_embd, qwen, &mut rng));
        t.insert(p("attn_v.weight"), matrix(kv_dim, c.n_embd, qwen, &mut rng));
        t.insert(
            p("attn_output.weight"),
            matrix(c.n_embd, q_dim, qwen, &mut rng),
        );
        t.insert(
            p("ffn_gate.weight"),
            matrix(c.n_ff, c.n_embd, qwen, &mut rng),
        );
        t.insert(p("ffn_up.weight"), matrix(c.n_ff, c.n_embd, qwen, &mut rng));
        t.insert(
            p("ffn_down.weight"),
            matrix(c.n_embd, c.n_ff, qwen && l % 2 == 0, &mut rng),
        );
        if qwen {
            for (n, d) in [
                ("attn_q.bias", q_dim),
                ("attn_k.bias", kv_dim),
                ("attn_v.bias", kv_dim),
            ] {
                t.insert(
                    p(n),
                    HostTensor {
                        shape: vec![d],
                        data: TensorData::F32(vec![0.0; d]),
                    },
                );
            }
        }
    }
    let tokenizer = word_tokenizer(c.n_vocab)?;
    Some(HostModel {
        config: c,
        tensors: t,
        tokenizer,
        chat_template: Some(CHAT_TEMPLATE.to_string()),
        bos_token_id: None,
        eos_token_ids: vec![],
        add_bos: false,
        source: format!("{spec} (random weights in the real model's shapes and formats)"),
    })
}

/// ChatML, so `serve` and `run` drive a synthetic model as they would the real one.
const CHAT_TEMPLATE: &str = "{% for m in messages %}<|im_start|> {{ m.role }} {{ m.content }} \
<|im_end|> {% endfor %}{% if add_generation_prompt %}<|im_start|> assistant {% endif %}";

/// A word-level tokenizer over the whole vocabulary (`w1`…`wN`; any other word is `<unk>`,
/// id 0), split on whitespace: text becomes about one token per word, as real text does, and
/// every sampled id decodes to visible text (what server benchmarks time to first token).
fn word_tokenizer(n_vocab: usize) -> Option<tokenizers::Tokenizer> {
    let vocab: HashMap<String, u32> = std::iter::once(("<unk>".to_string(), 0))
        .chain((1..n_vocab as u32).map(|i| (format!("w{i}"), i)))
        .collect();
    let wl = tokenizers::models::wordlevel::WordLevel::builder()
        .vocab(vocab.into_iter().collect())
        .unk_token("<unk>".into())
        .build()
        .ok()?;
    let mut t = tokenizers::Tokenizer::new(wl);
    t.with_pre_tokenizer(Some(
        tokenizers::pre_tokenizers::whitespace::WhitespaceSplit,
    ));
    Some(t)
}
