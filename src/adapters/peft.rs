//! LoRA adapters in the PEFT format: a folder with `adapter_config.json` (r, lora_alpha,
//! target_modules, use_rslora) and `adapter_model.safetensors` holding, per targeted
//! projection, `base_model.model.model.layers.N.<self_attn|mlp>.<proj>.lora_A.weight`
//! [r, in] and `...lora_B.weight` [out, r] in f32, f16 or bf16. Checked against the base
//! model's shapes, so another model's adapter, a missing target or a wrong rank is a
//! one-line error naming the file and tensor.

use crate::loader::ModelConfig;
use safetensors::SafeTensors;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A LoRA tensor as read: its name in the file, values (f32) and shape.
type NamedTensor = (String, Vec<f32>, Vec<usize>);

/// The seven projections LoRA can target, in PEFT's module names.
pub const PROJECTIONS: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// Errors callers branch on when loading adapters.
#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {what}")]
    Malformed { path: String, what: String },
    #[error("{path}: tensor '{name}': {what}")]
    BadTensor {
        path: String,
        name: String,
        what: String,
    },
    #[error("{path}: missing {what}")]
    Missing { path: String, what: String },
    #[error("{path}: unsupported: {what}")]
    Unsupported { path: String, what: String },
    #[error("adapter '{0}' is not loaded")]
    NotLoaded(String),
}

/// One projection's low-rank pair: A `[rank][in]`, B `[out][rank]`, f32 on the host.
#[derive(Clone, Debug)]
pub struct LoraPair {
    pub a: Vec<f32>,
    pub b: Vec<f32>,
    pub in_features: usize,
    pub out_features: usize,
}

/// A LoRA adapter on the host: per layer, per projection (index into [`PROJECTIONS`]).
#[derive(Clone, Debug)]
pub struct LoraAdapter {
    pub name: String,
    pub path: PathBuf,
    pub rank: usize,
    /// Multiplier of B·A: lora_alpha / r, or lora_alpha / √r with rsLoRA (as PEFT).
    pub scale: f32,
    pub base_model: Option<String>,
    /// `layers[l][p]`: the pair for projection `PROJECTIONS[p]` of layer l, if targeted.
    pub layers: Vec<[Option<LoraPair>; 7]>,
}

/// (in, out) features of projection `p` in a model of this shape.
pub fn projection_shape(c: &ModelConfig, p: usize) -> (usize, usize) {
    let (q, kv) = (c.n_head * c.head_dim, c.n_kv_head * c.head_dim);
    match PROJECTIONS[p] {
        "q_proj" => (c.n_embd, q),
        "k_proj" | "v_proj" => (c.n_embd, kv),
        "o_proj" => (q, c.n_embd),
        "gate_proj" | "up_proj" => (c.n_embd, c.n_ff),
        _ => (c.n_ff, c.n_embd),
    }
}

/// Split `...layers.N.<block>.<proj>.lora_{A,B}[.adapter].weight` into (N, projection, is_B).
fn parse_name(name: &str) -> Option<(usize, usize, bool)> {
    let rest = &name[name.find("layers.")? + "layers.".len()..];
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let p = PROJECTIONS
        .iter()
        .position(|p| rest.contains(&format!(".{p}.")) || rest.starts_with(&format!("{p}.")))?;
    let is_b = if rest.contains(".lora_A.") || rest.contains(".lora_A.weight") {
        false
    } else if rest.contains(".lora_B.") {
        true
    } else {
        return None;
    };
    Some((layer, p, is_b))
}

/// What `adapter_config.json` says, checked: rank, B·A's multiplier, the targeted
/// projections (indices into [`PROJECTIONS`]) and the base model it names.
struct AdapterConfig {
    rank: usize,
    scale: f32,
    targets: Vec<usize>,
    base_model: Option<String>,
}

fn shown(p: &Path) -> String {
    p.display().to_string()
}

/// Read and check `adapter_config.json`: LoRA only, no DoRA/fan-in-fan-out/per-module
/// patterns/bias, targets among the seven projections.
fn read_adapter_config(cfg_path: &Path) -> Result<AdapterConfig, AdapterError> {
    let text = std::fs::read_to_string(cfg_path).map_err(|e| AdapterError::Io {
        path: shown(cfg_path),
        source: e,
    })?;
    let bad = |what: String| AdapterError::Malformed {
        path: shown(cfg_path),
        what,
    };
    let unsupported = |what: String| AdapterError::Unsupported {
        path: shown(cfg_path),
        what,
    };
    let j: Value = serde_json::from_str(&text).map_err(|e| bad(format!("JSON: {e}")))?;
    if let Some(t) = j.get("peft_type").and_then(Value::as_str) {
        if t != "LORA" {
            return Err(unsupported(format!("peft_type '{t}' (only LORA)")));
        }
    }
    let rank =
        j.get("r")
            .and_then(Value::as_u64)
            .ok_or_else(|| bad("field 'r': expected a positive integer".into()))? as usize;
    if rank == 0 {
        return Err(bad("field 'r': must be > 0".into()));
    }
    let alpha = j
        .get("lora_alpha")
        .and_then(Value::as_f64)
        .ok_or_else(|| bad("field 'lora_alpha': expected a number".into()))? as f32;
    let rslora = j
        .get("use_rslora")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    for (field, what) in [("use_dora", "DoRA"), ("fan_in_fan_out", "fan_in_fan_out")] {
        if j.get(field).and_then(Value::as_bool).unwrap_or(false) {
            return Err(unsupported(format!("{what} ('{field}': true)")));
        }
    }
    for field in ["rank_pattern", "alpha_pattern"] {
        if j.get(field)
            .and_then(Value::as_object)
            .is_some_and(|o| !o.is_empty())
        {
            return Err(unsupported(format!("per-module '{field}'")));
        }
    }
    if let Some(b) = j.get("bias").and_then(Value::as_str) {
        if b != "none" {
            return Err(unsupported(format!("bias '{b}' (only 'none')")));
        }
    }
    Ok(AdapterConfig {
        rank,
        scale: if rslora {
            alpha / (rank as f32).sqrt()
        } else {
            alpha / rank as f32
        },
        targets: target_modules(&j, &bad, &unsupported)?,
        base_model: j
            .get("base_model_name_or_path")
            .and_then(Value::as_str)
            .map(str::to_string),
    })
}

/// `target_modules`: a list of projection names, or "all-linear".
fn target_modules(
    j: &Value,
    bad: &dyn Fn(String) -> AdapterError,
    unsupported: &dyn Fn(String) -> AdapterError,
) -> Result<Vec<usize>, AdapterError> {
    match j.get("target_modules") {
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| {
                let s = v.as_str().unwrap_or("");
                PROJECTIONS.iter().position(|p| *p == s).ok_or_else(|| {
                    unsupported(format!(
                        "target module '{s}' (supported: {})",
                        PROJECTIONS.join(", ")
                    ))
                })
            })
            .collect(),
        Some(Value::String(s)) if s == "all-linear" => Ok((0..7).collect()),
        _ => Err(bad(
            "field 'target_modules': expected a list of module names".into(),
        )),
    }
}

fn tensor_err(st_path: &Path, name: &str, what: String) -> AdapterError {
    AdapterError::BadTensor {
        path: shown(st_path),
        name: name.into(),
        what,
    }
}

/// Every LoRA A/B tensor of `adapter_model.safetensors` as f32, keyed by (layer,
/// projection, is_B); layers beyond the base model's are an error.
fn read_lora_tensors(
    st_path: &Path,
    config: &ModelConfig,
) -> Result<BTreeMap<(usize, usize, bool), NamedTensor>, AdapterError> {
    let bytes = std::fs::read(st_path).map_err(|e| AdapterError::Io {
        path: shown(st_path),
        source: e,
    })?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| AdapterError::Malformed {
        path: shown(st_path),
        what: format!("safetensors header/data: {e}"),
    })?;
    let mut found = BTreeMap::new();
    for (name, view) in st.tensors() {
        if !name.contains("lora_") {
            continue; // e.g. modules_to_save copies
        }
        let (layer, p, is_b) = parse_name(&name).ok_or_else(|| {
            tensor_err(
                st_path,
                &name,
                "not a LoRA A/B weight of a known projection".into(),
            )
        })?;
        if layer >= config.n_layer {
            return Err(tensor_err(st_path, &name, format!("layer {layer}, but the base model has {} layers (an adapter for another model?)", config.n_layer)));
        }
        let data = crate::loader::hf_dir::to_f32(view.dtype(), view.data())
            .map_err(|what| tensor_err(st_path, &name, what))?;
        found.insert(
            (layer, p, is_b),
            (name.clone(), data, view.shape().to_vec()),
        );
    }
    Ok(found)
}

/// Take projection `p` of layer `l` out of `found`: both tensors present, shaped
/// [rank, in] and [out, rank] for this base model.
fn take_pair(
    found: &mut BTreeMap<(usize, usize, bool), NamedTensor>,
    st_path: &Path,
    config: &ModelConfig,
    rank: usize,
    (l, p): (usize, usize),
) -> Result<LoraPair, AdapterError> {
    let (inp, out) = projection_shape(config, p);
    let mut want = |is_b: bool| {
        let key = format!(
            "base_model.model.model.layers.{l}.{}.{}.lora_{}.weight",
            if p < 4 { "self_attn" } else { "mlp" },
            PROJECTIONS[p],
            if is_b { "B" } else { "A" }
        );
        found.remove(&(l, p, is_b)).ok_or(AdapterError::Missing {
            path: shown(st_path),
            what: format!(
                "tensor '{key}' (target '{}' in adapter_config.json)",
                PROJECTIONS[p]
            ),
        })
    };
    let (a_name, a, a_shape) = want(false)?;
    let (b_name, b, b_shape) = want(true)?;
    if a_shape != [rank, inp] {
        let what = if a_shape.len() == 2 && a_shape[0] != rank && a_shape[1] == inp {
            format!(
                "rank {} but adapter_config.json says r = {rank}",
                a_shape[0]
            )
        } else {
            format!("shape {a_shape:?}, expected [{rank}, {inp}] for this base model (an adapter for another model?)")
        };
        return Err(tensor_err(st_path, &a_name, what));
    }
    if b_shape != [out, rank] {
        return Err(tensor_err(st_path, &b_name, format!("shape {b_shape:?}, expected [{out}, {rank}] for this base model (an adapter for another model?)")));
    }
    Ok(LoraPair {
        a,
        b,
        in_features: inp,
        out_features: out,
    })
}

impl LoraAdapter {
    /// Load a PEFT adapter folder and check it against `config`.
    pub fn load(dir: &Path, config: &ModelConfig) -> Result<Self, AdapterError> {
        let cfg = read_adapter_config(&dir.join("adapter_config.json"))?;
        let st_path = dir.join("adapter_model.safetensors");
        let mut found = read_lora_tensors(&st_path, config)?;
        let mut layers: Vec<[Option<LoraPair>; 7]> =
            (0..config.n_layer).map(|_| Default::default()).collect();
        for (l, layer) in layers.iter_mut().enumerate() {
            for &p in &cfg.targets {
                layer[p] = Some(take_pair(&mut found, &st_path, config, cfg.rank, (l, p))?);
            }
        }
        // What is left was not asked for by target_modules.
        if let Some(((l, p, is_b), (name, ..))) = found.into_iter().next() {
            return Err(tensor_err(
                &st_path,
                &name,
                format!(
                    "layer {l} {} lora_{} is not among target_modules",
                    PROJECTIONS[p],
                    if is_b { "B" } else { "A" }
                ),
            ));
        }
        Ok(LoraAdapter {
            name: dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "adapter".into()),
            path: dir.to_path_buf(),
            rank: cfg.rank,
            scale: cfg.scale,
            base_model: cfg.base_model,
            layers,
        })
    }

    /// `y += scale · B·(A·x)` for projection `p` of layer `l` (CPU reference).
    pub fn apply(&self, l: usize, p: usize, x: &[f32], y: &mut [f32]) {
        if let Some(pair) = &self.layers[l][p] {
            let u: Vec<f32> = pair
                .a
                .chunks(pair.in_features)
                .map(|row| row.iter().zip(x).map(|(a, b)| a * b).sum())
                .collect();
            for (o, yo) in y.iter_mut().enumerate() {
                let b = &pair.b[o * self.rank..(o + 1) * self.rank];
                *yo += self.scale * b.iter().zip(&u).map(|(a, b)| a * b).sum::<f32>();
            }
        }
    }
}

impl LoraAdapter {
    /// A random adapter for `config` (benchmarks and tests): rank `rank` on the projections
    /// `targets` (indices into [`PROJECTIONS`]), entries uniform in ±`amplitude`.
    pub fn random(
        config: &ModelConfig,
        name: &str,
        rank: usize,
        targets: &[usize],
        scale: f32,
        amplitude: f32,
        seed: u64,
    ) -> Self {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let mut rand = |n: usize| -> Vec<f32> {
            (0..n)
                .map(|_| {
                    s = s
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    (((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0) * amplitude
                })
                .collect()
        };
        let layers = (0..config.n_layer)
            .map(|_| {
                std::array::from_fn(|p| {
                    targets.contains(&p).then(|| {
                        let (inp, out) = projection_shape(config, p);
                        LoraPair {
                            a: rand(rank * inp),
                            b: rand(out * rank),
                            in_features: inp,
                            out_features: out,
                        }
                    })
                })
            })
            .collect();
        LoraAdapter {
            name: name.into(),
            path: PathBuf::new(),
            rank,
            scale,
            base_model: None,
            layers,
        }
    }
}
