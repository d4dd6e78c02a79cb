//! A Hugging Face checkpoint directory → [`HostModel`] (f32 tensors, not yet quantized).
//!
//! Reads `config.json` (required), `model.safetensors` or the shards named by
//! `model.safetensors.index.json` (F32 / F16 / BF16, memory-mapped), `tokenizer.json`
//! (required), and the optional `tokenizer_config.json` (chat template, BOS/EOS,
//! `add_bos_token`), `chat_template.jinja` and `generation_config.json` (EOS ids).
//! HF tensor names are mapped to the canonical GGUF-style names of [`super`], and every
//! expected tensor is checked against the config before the model is returned, so the
//! engine never sees a half-valid weight set.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

use super::{Arch, HostModel, HostTensor, LoadError, ModelConfig, TensorData};

/// The int4 group size: every matrix row must split into whole groups.
const GROUP: usize = 32;

/// One tensor the engine expects for a config: canonical name, shape, and whether a
/// file must have it (optional ones are checked when present).
#[derive(Clone, Debug)]
pub struct ExpectedTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub required: bool,
}

/// Every tensor a model with this config uses, with its shape. Shared by all loaders so
/// they validate the same way. Q/K/V biases are required for Qwen2, optional for Llama.
pub fn expected_tensors(cfg: &ModelConfig) -> Vec<ExpectedTensor> {
    let e = |name: String, shape: Vec<usize>, required: bool| ExpectedTensor {
        name,
        shape,
        required,
    };
    let (d, q, kv, ff) = (
        cfg.n_embd,
        cfg.n_head * cfg.head_dim,
        cfg.n_kv_head * cfg.head_dim,
        cfg.n_ff,
    );
    let bias_required = cfg.arch == Arch::Qwen2;
    let mut v = vec![
        e("token_embd.weight".into(), vec![cfg.n_vocab, d], true),
        e("output_norm.weight".into(), vec![d], true),
    ];
    if !cfg.tied_embeddings {
        v.push(e("output.weight".into(), vec![cfg.n_vocab, d], true));
    }
    for i in 0..cfg.n_layer {
        let b = |s: &str| format!("blk.{i}.{s}");
        v.extend([
            e(b("attn_norm.weight"), vec![d], true),
            e(b("ffn_norm.weight"), vec![d], true),
            e(b("attn_q.weight"), vec![q, d], true),
            e(b("attn_k.weight"), vec![kv, d], true),
            e(b("attn_v.weight"), vec![kv, d], true),
            e(b("attn_q.bias"), vec![q], bias_required),
            e(b("attn_k.bias"), vec![kv], bias_required),
            e(b("attn_v.bias"), vec![kv], bias_required),
            e(b("attn_output.weight"), vec![d, q], true),
            e(b("ffn_gate.weight"), vec![ff, d], true),
            e(b("ffn_up.weight"), vec![ff, d], true),
            e(b("ffn_down.weight"), vec![d, ff], true),
        ]);
    }
    v
}

/// Check a tensor set against [`expected_tensors`]: presence, shapes, no leftovers.
/// `file_of` names the file a tensor came from, for the error message.
pub fn validate_tensors(
    cfg: &ModelConfig,
    tensors: &HashMap<String, HostTensor>,
    file_of: &dyn Fn(&str) -> String,
    fallback_path: &str,
) -> Result<(), LoadError> {
    let expected = expected_tensors(cfg);
    for ex in &expected {
        match tensors.get(&ex.name) {
            None if ex.required => {
                return Err(LoadError::Missing {
                    path: fallback_path.into(),
                    what: format!("tensor '{}'", ex.name),
                })
            }
            None => {}
            Some(t) if t.shape != ex.shape => {
                return Err(LoadError::BadTensor {
                    path: file_of(&ex.name),
                    name: ex.name.clone(),
                    what: format!("expected shape {:?}, got {:?}", ex.shape, t.shape),
                })
            }
            Some(_) => {}
        }
    }
    let known: BTreeSet<&str> = expected.iter().map(|e| e.name.as_str()).collect();
    if let Some(extra) = tensors.keys().find(|k| !known.contains(k.as_str())) {
        return Err(LoadError::BadTensor {
            path: file_of(extra),
            name: extra.clone(),
            what: "not used by this architecture/config".into(),
        });
    }
    Ok(())
}

/// Load an HF checkpoint directory. Tensors stay f32; call
/// [`HostModel::quantize_matrices`] to get int4.
pub fn load_hf_dir(dir: &Path) -> Result<HostModel, LoadError> {
    let mut notes = Vec::new();
    let cfg_path = dir.join("config.json");
    let cfg_json = read_json(&cfg_path)?.ok_or_else(|| missing(dir, "config.json"))?;
    let (mut config, tie_explicit) = parse_config(&cfg_json, &cfg_path)?;

    // Weights: one file, or shards listed by the index.
    let (files, weight_map) = weight_files(dir)?;
    let Weights {
        tensors,
        origin,
        skipped,
        dtypes,
    } = read_weights(&files, config.tied_embeddings)?;
    if let Some(map) = &weight_map {
        check_index_covered(dir, map, &tensors, config.tied_embeddings)?;
    }
    // Checkpoints that leave tie_word_embeddings unset and ship no lm_head are tied.
    if !config.tied_embeddings && !tie_explicit && !tensors.contains_key("output.weight") {
        config.tied_embeddings = true;
        notes.push("no lm_head.weight: tied embeddings".to_string());
    }
    let first_file = files
        .first()
        .map(|f| f.display().to_string())
        .unwrap_or_default();
    validate_tensors(
        &config,
        &tensors,
        &|n| origin.get(n).cloned().unwrap_or_else(|| first_file.clone()),
        &first_file,
    )?;

    let tokenizer = read_tokenizer(dir)?;
    let (tc, gc) = read_tokenizer_configs(dir, &mut notes)?;
    let chat_template = find_chat_template(dir, &tc)?;
    let bos_token_id = bos_token_id(&tc, &gc, &cfg_json, &tokenizer);
    let eos_token_ids = eos_token_ids(&tc, &gc, &cfg_json, &tokenizer);
    let add_bos = adds_bos(&tc) && bos_token_id.is_some();

    if skipped > 0 {
        notes.push(format!("{skipped} unused tensor(s) skipped"));
    }
    let mut source = format!(
        "{} (HF safetensors, {} file(s), {})",
        dir.display(),
        files.len(),
        dtypes.into_iter().collect::<Vec<_>>().join("/")
    );
    if !notes.is_empty() {
        source += &format!("; {}", notes.join("; "));
    }
    Ok(HostModel {
        config,
        tensors,
        tokenizer,
        chat_template,
        bos_token_id,
        eos_token_ids,
        add_bos,
        source,
    })
}

/// The tensors of a checkpoint's safetensors files, under canonical names, as f32.
struct Weights {
    tensors: HashMap<String, HostTensor>,
    /// Canonical name → the file it came from, for error messages.
    origin: HashMap<String, String>,
    /// Tensors the engine does not use.
    skipped: usize,
    /// The stored dtypes seen, for the model's description.
    dtypes: BTreeSet<String>,
}

/// Read every used tensor of `files`; with `tied` the LM head is not read.
fn read_weights(files: &[PathBuf], tied: bool) -> Result<Weights, LoadError> {
    let mut w = Weights {
        tensors: HashMap::new(),
        origin: HashMap::new(),
        skipped: 0,
        dtypes: BTreeSet::new(),
    };
    for file in files {
        read_weight_file(file, tied, &mut w)?;
    }
    Ok(w)
}

/// Add one safetensors file's tensors to `w`.
fn read_weight_file(file: &Path, tied: bool, w: &mut Weights) -> Result<(), LoadError> {
    let shown = file.display().to_string();
    let f = std::fs::File::open(file).map_err(|e| io(file, e))?;
    // Safety: the map is read-only and dropped before returning; a file truncated
    // under us would fault, which is the same risk every mmap-based loader takes.
    let map = unsafe { memmap2::Mmap::map(&f) }.map_err(|e| io(file, e))?;
    let st = SafeTensors::deserialize(&map).map_err(|e| LoadError::Malformed {
        path: shown.clone(),
        what: format!("safetensors header/data: {e}"),
    })?;
    for (hf_name, view) in st.iter() {
        let Some(name) = canonical_name(hf_name) else {
            w.skipped += 1; // e.g. rotary_emb.inv_freq: recomputed by the engine
            continue;
        };
        if name == "output.weight" && tied {
            continue; // tied: the LM head is token_embd
        }
        w.dtypes.insert(format!("{:?}", view.dtype()));
        let data = to_f32(view.dtype(), view.data()).map_err(|what| LoadError::BadTensor {
            path: shown.clone(),
            name: hf_name.into(),
            what,
        })?;
        w.tensors.insert(
            name.clone(),
            HostTensor {
                shape: view.shape().to_vec(),
                data: TensorData::F32(data),
            },
        );
        w.origin.insert(name, shown.clone());
    }
    Ok(())
}

/// Every tensor the index lists was found in the shards.
fn check_index_covered(
    dir: &Path,
    map: &WeightMap,
    tensors: &HashMap<String, HostTensor>,
    tied: bool,
) -> Result<(), LoadError> {
    // The index promises these; a shard that lacks one is corrupt or mismatched.
    for (hf_name, shard) in map {
        let Some(name) = canonical_name(hf_name) else {
            continue;
        };
        let tied_head = name == "output.weight" && tied;
        if !(tensors.contains_key(&name) || tied_head) {
            return Err(LoadError::Missing {
                path: dir.join(shard).display().to_string(),
                what: format!("tensor '{hf_name}' (listed in model.safetensors.index.json)"),
            });
        }
    }
    Ok(())
}

/// `tokenizer.json` (required).
fn read_tokenizer(dir: &Path) -> Result<tokenizers::Tokenizer, LoadError> {
    let tok_path = dir.join("tokenizer.json");
    if !tok_path.is_file() {
        return Err(missing(dir, "tokenizer.json"));
    }
    tokenizers::Tokenizer::from_file(&tok_path).map_err(|e| LoadError::Tokenizer {
        path: tok_path.display().to_string(),
        what: e.to_string(),
    })
}

/// `tokenizer_config.json` and `generation_config.json`, `Null` (and a note) when absent.
fn read_tokenizer_configs(
    dir: &Path,
    notes: &mut Vec<String>,
) -> Result<(Value, Value), LoadError> {
    let tc = read_json(&dir.join("tokenizer_config.json"))?;
    let gc = read_json(&dir.join("generation_config.json"))?;
    for (v, n) in [
        (&tc, "tokenizer_config.json"),
        (&gc, "generation_config.json"),
    ] {
        if v.is_none() {
            notes.push(format!("no {n}"));
        }
    }
    Ok((tc.unwrap_or(Value::Null), gc.unwrap_or(Value::Null)))
}

/// The template in tokenizer_config.json, else `chat_template.jinja`.
fn find_chat_template(dir: &Path, tc: &Value) -> Result<Option<String>, LoadError> {
    let chat_template = chat_template_of(tc, &dir.join("tokenizer_config.json"))?;
    let jinja = dir.join("chat_template.jinja");
    if chat_template.is_none() && jinja.is_file() {
        // Newer transformers save the template beside tokenizer_config.json.
        return Ok(Some(
            std::fs::read_to_string(&jinja).map_err(|e| io(&jinja, e))?,
        ));
    }
    Ok(chat_template)
}

/// BOS from tokenizer_config.json's token, else generation_config.json, else config.json.
fn bos_token_id(
    tc: &Value,
    gc: &Value,
    cfg_json: &Value,
    tokenizer: &tokenizers::Tokenizer,
) -> Option<u32> {
    special_token(tc, "bos_token")
        .and_then(|t| tokenizer.token_to_id(&t))
        .or_else(|| {
            gc.get("bos_token_id")
                .and_then(Value::as_u64)
                .map(|v| v as u32)
        })
        .or_else(|| {
            cfg_json
                .get("bos_token_id")
                .and_then(Value::as_u64)
                .map(|v| v as u32)
        })
}

/// Every id that ends a reply: all three configs' EOS plus the `END_OF_REPLY` tokens in
/// the vocabulary; sorted, no repeats.
fn eos_token_ids(
    tc: &Value,
    gc: &Value,
    cfg_json: &Value,
    tokenizer: &tokenizers::Tokenizer,
) -> Vec<u32> {
    let mut eos: BTreeSet<u32> = BTreeSet::new();
    eos.extend(id_list(gc.get("eos_token_id")));
    eos.extend(id_list(cfg_json.get("eos_token_id")));
    if let Some(id) = special_token(tc, "eos_token").and_then(|t| tokenizer.token_to_id(&t)) {
        eos.insert(id);
    }
    for t in super::tokenizer::END_OF_REPLY {
        eos.extend(tokenizer.token_to_id(t));
    }
    eos.into_iter().collect()
}

/// Whether the tokenizer adds BOS (given the model has one).
fn adds_bos(tc: &Value) -> bool {
    // HF adds BOS only where the tokenizer class does so by default (Llama) or the
    // config says so explicitly; Qwen2 and GPT-2 style tokenizers do not.
    match tc.get("add_bos_token").and_then(Value::as_bool) {
        Some(b) => b,
        None => tc
            .get("tokenizer_class")
            .and_then(Value::as_str)
            .is_some_and(|c| c.contains("Llama")),
    }
}

fn io(path: &Path, source: std::io::Error) -> LoadError {
    LoadError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn missing(dir: &Path, file: &str) -> LoadError {
    LoadError::Missing {
        path: dir.display().to_string(),
        what: format!("{file} (required)"),
    }
}

/// Parse a JSON file; `Ok(None)` when it does not exist.
fn read_json(path: &Path) -> Result<Option<Value>, LoadError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(path, e)),
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| LoadError::Malformed {
            path: path.display().to_string(),
            what: format!("JSON: {e}"),
        })
}

/// config.json → ModelConfig, plus whether `tie_word_embeddings` was given explicitly.
fn parse_config(j: &Value, path: &Path) -> Result<(ModelConfig, bool), LoadError> {
    let arch = config_arch(j, path)?;
    let fields = ConfigFields { j, path };
    let n_embd = fields.required("hidden_size")?;
    let n_head = fields.required("num_attention_heads")?;
    let n_kv_head = fields.uint("num_key_value_heads")?.unwrap_or(n_head);
    let head_dim = fields.uint("head_dim")?.unwrap_or(n_embd / n_head);
    let tie = j.get("tie_word_embeddings").and_then(Value::as_bool);
    let cfg = ModelConfig {
        arch,
        n_vocab: fields.required("vocab_size")?,
        n_embd,
        n_layer: fields.required("num_hidden_layers")?,
        n_head,
        n_kv_head,
        head_dim,
        n_ff: fields.required("intermediate_size")?,
        rope_theta: fields.float("rope_theta", Some(10000.0))?,
        rms_eps: fields.float("rms_norm_eps", None)?,
        n_ctx: fields.required("max_position_embeddings")?,
        // transformers defaults this to false for both LlamaConfig and Qwen2Config.
        tied_embeddings: tie.unwrap_or(false),
    };
    check_config_shapes(&cfg, &fields)?;
    Ok((cfg, tie.is_some()))
}

/// The architecture from `model_type`, else the first of `architectures`.
fn config_arch(j: &Value, path: &Path) -> Result<Arch, LoadError> {
    let model_type = j.get("model_type").and_then(Value::as_str).unwrap_or("");
    let first_arch = j
        .get("architectures")
        .and_then(|a| a.get(0))
        .and_then(Value::as_str)
        .unwrap_or("");
    match (model_type, first_arch) {
        ("qwen2", _) | ("", "Qwen2ForCausalLM") => Ok(Arch::Qwen2),
        ("llama", _) | ("", "LlamaForCausalLM") => Ok(Arch::Llama),
        _ => {
            let arch = if model_type.is_empty() {
                first_arch
            } else {
                model_type
            };
            Err(LoadError::UnknownArch {
                path: path.display().to_string(),
                arch: if arch.is_empty() {
                    "<no model_type>".into()
                } else {
                    arch.into()
                },
            })
        }
    }
}

/// Typed field reads from config.json; errors name the file and field.
struct ConfigFields<'a> {
    j: &'a Value,
    path: &'a Path,
}

impl ConfigFields<'_> {
    fn bad(&self, field: &str, what: String) -> LoadError {
        LoadError::Malformed {
            path: self.path.display().to_string(),
            what: format!("{field}: {what}"),
        }
    }

    fn missing(&self, field: &str) -> LoadError {
        LoadError::Missing {
            path: self.path.display().to_string(),
            what: format!("field '{field}'"),
        }
    }

    /// An optional positive integer (`null` counts as absent).
    fn uint(&self, field: &str) -> Result<Option<usize>, LoadError> {
        match self.j.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => match v.as_u64() {
                Some(n) if n > 0 => Ok(Some(n as usize)),
                _ => Err(self.bad(field, format!("expected a positive integer, got {v}"))),
            },
        }
    }

    /// A required positive integer.
    fn required(&self, field: &str) -> Result<usize, LoadError> {
        self.uint(field)?.ok_or_else(|| self.missing(field))
    }

    /// A number, `default` when absent (required when `default` is `None`).
    fn float(&self, field: &str, default: Option<f64>) -> Result<f32, LoadError> {
        match self.j.get(field) {
            None | Some(Value::Null) => {
                default.map(|d| d as f32).ok_or_else(|| self.missing(field))
            }
            Some(v) => v
                .as_f64()
                .map(|f| f as f32)
                .ok_or_else(|| self.bad(field, format!("expected a number, got {v}"))),
        }
    }
}

/// Head counts and matrix widths the engine can run.
fn check_config_shapes(cfg: &ModelConfig, fields: &ConfigFields<'_>) -> Result<(), LoadError> {
    let (n_embd, n_head, n_kv_head, head_dim) =
        (cfg.n_embd, cfg.n_head, cfg.n_kv_head, cfg.head_dim);
    if n_head % n_kv_head != 0 {
        return Err(fields.bad(
            "num_key_value_heads",
            format!("{n_kv_head} does not divide num_attention_heads {n_head}"),
        ));
    }
    if head_dim * n_head != n_embd && fields.j.get("head_dim").is_none() {
        return Err(fields.bad(
            "hidden_size",
            format!("{n_embd} is not divisible by num_attention_heads {n_head}"),
        ));
    }
    // Every matrix's columns are one of these; int4 groups must not straddle rows.
    for (field, v) in [
        ("hidden_size", n_embd),
        ("intermediate_size", cfg.n_ff),
        ("num_attention_heads*head_dim", n_head * head_dim),
    ] {
        if v % GROUP != 0 {
            return Err(fields.bad(
                field,
                format!("{v} is not a multiple of {GROUP} (the int4 group size)"),
            ));
        }
    }
    Ok(())
}

/// Tensor name → shard file, from a sharded checkpoint's index.
type WeightMap = BTreeMap<String, String>;

/// The safetensors files of a checkpoint, and the index's weight map when sharded.
fn weight_files(dir: &Path) -> Result<(Vec<PathBuf>, Option<WeightMap>), LoadError> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok((vec![single], None));
    }
    let index = dir.join("model.safetensors.index.json");
    let Some(j) = read_json(&index)? else {
        return Err(missing(
            dir,
            "model.safetensors or model.safetensors.index.json",
        ));
    };
    let map: BTreeMap<String, String> = j
        .get("weight_map")
        .and_then(|m| serde_json::from_value(m.clone()).ok())
        .ok_or_else(|| LoadError::Malformed {
            path: index.display().to_string(),
            what: "weight_map: expected an object of tensor → file".into(),
        })?;
    let mut shards: Vec<String> = map
        .values()
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    shards.retain(|s| !s.is_empty());
    let mut files = Vec::new();
    for s in shards {
        // Shard names are plain file names; refuse anything that escapes the directory.
        if s.contains('/') || s.contains('\\') || s == ".." {
            return Err(LoadError::Malformed {
                path: index.display().to_string(),
                what: format!("weight_map: bad shard file name '{s}'"),
            });
        }
        let f = dir.join(&s);
        if !f.is_file() {
            return Err(LoadError::Missing {
                path: index.display().to_string(),
                what: format!("shard file '{s}'"),
            });
        }
        files.push(f);
    }
    Ok((files, Some(map)))
}

/// HF parameter name → canonical name; `None` for tensors the engine does not use.
pub fn canonical_name(hf: &str) -> Option<String> {
    match hf {
        "model.embed_tokens.weight" => return Some("token_embd.weight".into()),
        "model.norm.weight" => return Some("output_norm.weight".into()),
        "lm_head.weight" => return Some("output.weight".into()),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, kind) = rest.rsplit_once('.')?;
    if kind != "weight" && kind != "bias" {
        return None;
    }
    let short = match module {
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        _ => return None,
    };
    Some(format!("blk.{layer}.{short}.{kind}"))
}

/// Little-endian tensor bytes → f32. Reads byte-wise: mmap offsets need not be aligned.
pub(crate) fn to_f32(dtype: Dtype, bytes: &[u8]) -> Result<Vec<f32>, String> {
    Ok(match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        other => {
            return Err(format!(
                "unsupported dtype {other:?} (supported: F32, F16, BF16)"
            ))
        }
    })
}

/// `chat_template` is a string, or a list of `{name, template}` (pick `default`, else
/// the first).
fn chat_template_of(tc: &Value, path: &Path) -> Result<Option<String>, LoadError> {
    match tc.get("chat_template") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Array(list)) => {
            let pick = list
                .iter()
                .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                .or_else(|| list.first());
            Ok(pick
                .and_then(|t| t.get("template"))
                .and_then(Value::as_str)
                .map(str::to_owned))
        }
        Some(v) => Err(LoadError::Malformed {
            path: path.display().to_string(),
            what: format!(
                "chat_template: expected a string or a list of {{name, template}}, got {}",
                type_name(v)
            ),
        }),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "list",
        Value::Object(_) => "object",
    }
}

/// A special token in tokenizer_config.json: a plain string or an AddedToken object.
fn special_token(tc: &Value, key: &str) -> Option<String> {
    match tc.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_owned),
        _ => None,
    }
}

/// A token id field that may be one integer or a list of them.
fn id_list(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().map(|n| vec![n as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_u64)
            .map(|n| n as u32)
            .collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
#[path = "hf_dir_tests.rs"]
pub(crate) mod tests;
