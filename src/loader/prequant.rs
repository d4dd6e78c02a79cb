//! The engine's own pre-quantized format: one safetensors file that loads with no
//! quantization work and carries everything else a [`HostModel`] needs.
//!
//! Format `edgereason-q4-v1`:
//! - An int4 matrix `<name>` of shape `[rows, cols]` (`cols % 32 == 0`) is three tensors:
//!   `<name>.q4` U8 `[rows, cols/2]` (two weights per byte, low nibble first: weight
//!   `2k` in bits 0..4, weight `2k+1` in bits 4..8), `<name>.q4_scale` F16
//!   `[rows, cols/32]` and `<name>.q4_min` F16 `[rows, cols/32]`; weight
//!   `w = scale * q + min` per group of 32, as [`Q4Group`].
//!   Scales and mins are f16 because that is what the GPU holds; [`quantize_q4`]
//!   already rounds them so, while GGUF Q4_K products (`d * sc`) get the same f16
//!   rounding here that a GPU upload gives them.
//! - An int8 matrix is two tensors: `<name>.q8` I8 `[rows, cols]` and `<name>.q8_scale`
//!   F16 `[rows, cols/32]`; `w = scale * q`, as [`super::Q8Group`].
//! - Any other tensor is F32 under its own name (norms, biases).
//! - `__metadata__` (all strings): `edgereason.format` = `edgereason-q4-v1`,
//!   `edgereason.config` ([`ModelConfig`] as JSON), `edgereason.tokenizer` (tokenizer.json
//!   contents), `edgereason.chat_template` (absent when none), `edgereason.bos` (token
//!   id, absent when none), `edgereason.eos` (JSON list of ids), `edgereason.add_bos`
//!   (`true`/`false`), `edgereason.source` (where the weights came from, informational).
//!
//! Files are written to a temporary name in the target directory and renamed, so a
//! killed save never leaves a file that looks complete.
//!
//! [`quantize_q4`]: super::quantize_q4

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context};
use safetensors::{Dtype, SafeTensors, View};

use super::hf_dir::validate_tensors;
use super::{HostModel, HostTensor, LoadError, ModelConfig, Q4Group, Q8Group, TensorData};

/// Value of `edgereason.format` this module writes and reads.
pub const FORMAT: &str = "edgereason-q4-v1";
/// Metadata key holding the format tag; its presence identifies the engine's files.
pub const FORMAT_KEY: &str = "edgereason.format";

/// An owned tensor for `safetensors::serialize_to_file`.
struct Owned {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl View for &Owned {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

fn f16_bytes(v: impl Iterator<Item = f32>) -> Vec<u8> {
    v.flat_map(|x| half::f16::from_f32(x).to_le_bytes())
        .collect()
}

/// Write `model` in the pre-quantized format. Int4 tensors are stored as int4, f32
/// tensors as f32: call [`HostModel::quantize_matrices`] first to get a small file.
pub fn save_prequantized(model: &HostModel, path: &Path) -> anyhow::Result<()> {
    let mut out: Vec<(String, Owned)> = Vec::new();
    for (name, t) in &model.tensors {
        match &t.data {
            TensorData::F32(v) => {
                let bytes = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                out.push((
                    name.clone(),
                    Owned {
                        dtype: Dtype::F32,
                        shape: t.shape.clone(),
                        bytes,
                    },
                ));
            }
            TensorData::Q4(groups) => {
                let &[rows, cols] = t.shape.as_slice() else {
                    bail!(
                        "tensor '{name}': int4 tensor must be 2-D, shape {:?}",
                        t.shape
                    )
                };
                if cols % 32 != 0 || groups.len() * 32 != rows * cols {
                    bail!(
                        "tensor '{name}': {} int4 groups do not fit shape {:?}",
                        groups.len(),
                        t.shape
                    );
                }
                let q: Vec<u8> = groups
                    .iter()
                    .flat_map(|g| {
                        g.q.chunks_exact(2)
                            .map(|p| (p[0] & 15) | ((p[1] & 15) << 4))
                    })
                    .collect();
                let gshape = vec![rows, cols / 32];
                out.push((
                    format!("{name}.q4"),
                    Owned {
                        dtype: Dtype::U8,
                        shape: vec![rows, cols / 2],
                        bytes: q,
                    },
                ));
                out.push((
                    format!("{name}.q4_scale"),
                    Owned {
                        dtype: Dtype::F16,
                        shape: gshape.clone(),
                        bytes: f16_bytes(groups.iter().map(|g| g.scale)),
                    },
                ));
                out.push((
                    format!("{name}.q4_min"),
                    Owned {
                        dtype: Dtype::F16,
                        shape: gshape,
                        bytes: f16_bytes(groups.iter().map(|g| g.min)),
                    },
                ));
            }
            TensorData::Q8(groups) => {
                let &[rows, cols] = t.shape.as_slice() else {
                    bail!(
                        "tensor '{name}': int8 tensor must be 2-D, shape {:?}",
                        t.shape
                    )
                };
                if cols % 32 != 0 || groups.len() * 32 != rows * cols {
                    bail!(
                        "tensor '{name}': {} int8 groups do not fit shape {:?}",
                        groups.len(),
                        t.shape
                    );
                }
                let q: Vec<u8> = groups.iter().flat_map(|g| g.q.map(|v| v as u8)).collect();
                out.push((
                    format!("{name}.q8"),
                    Owned {
                        dtype: Dtype::I8,
                        shape: vec![rows, cols],
                        bytes: q,
                    },
                ));
                out.push((
                    format!("{name}.q8_scale"),
                    Owned {
                        dtype: Dtype::F16,
                        shape: vec![rows, cols / 32],
                        bytes: f16_bytes(groups.iter().map(|g| g.scale)),
                    },
                ));
            }
        }
    }
    let mut meta = HashMap::new();
    meta.insert(FORMAT_KEY.to_string(), FORMAT.to_string());
    meta.insert(
        "edgereason.config".into(),
        serde_json::to_string(&model.config)?,
    );
    let tok = model
        .tokenizer
        .to_string(false)
        .map_err(|e| anyhow::anyhow!("serializing tokenizer: {e}"))?;
    meta.insert("edgereason.tokenizer".into(), tok);
    if let Some(t) = &model.chat_template {
        meta.insert("edgereason.chat_template".into(), t.clone());
    }
    if let Some(b) = model.bos_token_id {
        meta.insert("edgereason.bos".into(), b.to_string());
    }
    meta.insert(
        "edgereason.eos".into(),
        serde_json::to_string(&model.eos_token_ids)?,
    );
    meta.insert("edgereason.add_bos".into(), model.add_bos.to_string());
    meta.insert("edgereason.source".into(), model.source.clone());

    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .with_context(|| format!("{}: not a file path", path.display()))?;
    // Same directory as the target so the rename is atomic; pid keeps concurrent saves apart.
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| -> anyhow::Result<()> {
        safetensors::serialize_to_file(out.iter().map(|(n, o)| (n.as_str(), o)), Some(meta), &tmp)
            .with_context(|| format!("{}: writing", tmp.display()))?;
        let f = std::fs::File::open(&tmp)?;
        f.sync_all()?; // data on disk before the name says it is complete
        std::fs::rename(&tmp, path)
            .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all(); // persist the rename; not supported everywhere
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Whether `path` is a safetensors file carrying the engine's format key.
pub fn is_prequantized(path: &Path) -> bool {
    read_header_metadata(path).is_ok_and(|m| m.contains_key(FORMAT_KEY))
}

/// Read only the `__metadata__` of a safetensors file (cheap: the header is small).
fn read_header_metadata(path: &Path) -> Result<HashMap<String, String>, LoadError> {
    let p = path.display().to_string();
    let mut f = std::fs::File::open(path).map_err(|source| LoadError::Io {
        path: p.clone(),
        source,
    })?;
    let mut n = [0u8; 8];
    std::io::Read::read_exact(&mut f, &mut n)
        .map_err(|_| malformed(&p, "safetensors header length"))?;
    let n = u64::from_le_bytes(n);
    if n > 100 << 20 {
        return Err(malformed(&p, "safetensors header length"));
    }
    let mut buf = vec![0u8; n as usize];
    std::io::Read::read_exact(&mut f, &mut buf)
        .map_err(|_| malformed(&p, "safetensors header (file cut short)"))?;
    let j: serde_json::Value = serde_json::from_slice(&buf)
        .map_err(|e| malformed(&p, &format!("safetensors header JSON: {e}")))?;
    Ok(j.get("__metadata__")
        .and_then(|m| serde_json::from_value(m.clone()).ok())
        .unwrap_or_default())
}

fn malformed(path: &str, what: &str) -> LoadError {
    LoadError::Malformed {
        path: path.into(),
        what: what.into(),
    }
}

/// Load a file written by [`save_prequantized`], validating every tensor against the
/// stored config.
pub fn load_prequantized(path: &Path) -> Result<HostModel, LoadError> {
    let p = path.display().to_string();
    let meta = read_header_metadata(path)?;
    match meta.get(FORMAT_KEY) {
        Some(f) if f == FORMAT => {}
        Some(f) => {
            return Err(malformed(
                &p,
                &format!("{FORMAT_KEY}: unsupported version '{f}' (this build reads {FORMAT})"),
            ))
        }
        None => {
            return Err(LoadError::Missing {
                path: p,
                what: format!("metadata '{FORMAT_KEY}' (not an edgereason pre-quantized file)"),
            })
        }
    }
    let get = |k: &str| {
        meta.get(k).ok_or_else(|| LoadError::Missing {
            path: p.clone(),
            what: format!("metadata '{k}'"),
        })
    };
    let config: ModelConfig = serde_json::from_str(get("edgereason.config")?)
        .map_err(|e| malformed(&p, &format!("edgereason.config: {e}")))?;
    let tokenizer = tokenizers::Tokenizer::from_bytes(get("edgereason.tokenizer")?.as_bytes())
        .map_err(|e| LoadError::Tokenizer {
            path: p.clone(),
            what: format!("edgereason.tokenizer: {e}"),
        })?;
    let eos_token_ids: Vec<u32> = serde_json::from_str(get("edgereason.eos")?)
        .map_err(|e| malformed(&p, &format!("edgereason.eos: {e}")))?;
    let bos_token_id = match meta.get("edgereason.bos") {
        None => None,
        Some(b) => Some(
            b.parse()
                .map_err(|_| malformed(&p, &format!("edgereason.bos: '{b}' is not a token id")))?,
        ),
    };
    let add_bos = match get("edgereason.add_bos")?.as_str() {
        "true" => true,
        "false" => false,
        other => {
            return Err(malformed(
                &p,
                &format!("edgereason.add_bos: '{other}' is not true/false"),
            ))
        }
    };

    let f = std::fs::File::open(path).map_err(|source| LoadError::Io {
        path: p.clone(),
        source,
    })?;
    // Safety: read-only map, dropped before returning.
    let map = unsafe { memmap2::Mmap::map(&f) }.map_err(|source| LoadError::Io {
        path: p.clone(),
        source,
    })?;
    let st = SafeTensors::deserialize(&map)
        .map_err(|e| malformed(&p, &format!("safetensors header/data: {e}")))?;
    let bad = |name: &str, what: String| LoadError::BadTensor {
        path: p.clone(),
        name: name.into(),
        what,
    };
    let mut tensors = HashMap::new();
    for (name, view) in st.iter() {
        if let Some(base) = name.strip_suffix(".q8_scale") {
            if st.tensor(&format!("{base}.q8")).is_err() {
                return Err(bad(name, format!("no matching '{base}.q8'")));
            }
            continue; // read with its .q8
        }
        if let Some(base) = name.strip_suffix(".q8") {
            let scale = st
                .tensor(&format!("{base}.q8_scale"))
                .map_err(|_| LoadError::Missing {
                    path: p.clone(),
                    what: format!("tensor '{base}.q8_scale'"),
                })?;
            let &[rows, cols] = view.shape() else {
                return Err(bad(
                    name,
                    format!("expected 2-D I8 [rows, cols], got {:?}", view.shape()),
                ));
            };
            if view.dtype() != Dtype::I8 || cols % 32 != 0 {
                return Err(bad(
                    name,
                    format!(
                        "expected I8 [rows, cols] with cols a multiple of 32, got {:?} {:?}",
                        view.dtype(),
                        view.shape()
                    ),
                ));
            }
            if scale.dtype() != Dtype::F16 || scale.shape() != [rows, cols / 32] {
                return Err(bad(
                    &format!("{base}.q8_scale"),
                    format!(
                        "expected F16 {:?}, got {:?} {:?}",
                        [rows, cols / 32],
                        scale.dtype(),
                        scale.shape()
                    ),
                ));
            }
            let groups = view
                .data()
                .chunks_exact(32)
                .zip(scale.data().chunks_exact(2))
                .map(|(q, s)| Q8Group {
                    scale: half::f16::from_le_bytes([s[0], s[1]]).to_f32(),
                    q: std::array::from_fn(|i| q[i] as i8),
                })
                .collect();
            tensors.insert(
                base.to_string(),
                HostTensor {
                    shape: vec![rows, cols],
                    data: TensorData::Q8(groups),
                },
            );
            continue;
        }
        if name.ends_with(".q4_scale") || name.ends_with(".q4_min") {
            let base = name.rsplit_once(".q4_").unwrap().0;
            if st.tensor(&format!("{base}.q4")).is_err() {
                return Err(bad(name, format!("no matching '{base}.q4'")));
            }
            continue; // read with its .q4
        }
        if let Some(base) = name.strip_suffix(".q4") {
            let part = |suffix: &str| {
                st.tensor(&format!("{base}{suffix}"))
                    .map_err(|_| LoadError::Missing {
                        path: p.clone(),
                        what: format!("tensor '{base}{suffix}'"),
                    })
            };
            let (scale, min) = (part(".q4_scale")?, part(".q4_min")?);
            let &[rows, half_cols] = view.shape() else {
                return Err(bad(
                    name,
                    format!("expected 2-D U8 [rows, cols/2], got {:?}", view.shape()),
                ));
            };
            let cols = half_cols * 2;
            if view.dtype() != Dtype::U8 || cols % 32 != 0 {
                return Err(bad(
                    name,
                    format!(
                        "expected U8 [rows, cols/2] with cols a multiple of 32, got {:?} {:?}",
                        view.dtype(),
                        view.shape()
                    ),
                ));
            }
            for (t, n) in [(&scale, "q4_scale"), (&min, "q4_min")] {
                if t.dtype() != Dtype::F16 || t.shape() != [rows, cols / 32] {
                    return Err(bad(
                        &format!("{base}.{n}"),
                        format!(
                            "expected F16 {:?}, got {:?} {:?}",
                            [rows, cols / 32],
                            t.dtype(),
                            t.shape()
                        ),
                    ));
                }
            }
            let f16s = |b: &[u8]| {
                b.chunks_exact(2)
                    .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect::<Vec<_>>()
            };
            let (scales, mins) = (f16s(scale.data()), f16s(min.data()));
            let groups = view
                .data()
                .chunks_exact(16)
                .zip(scales.into_iter().zip(mins))
                .map(|(bytes, (scale, min))| {
                    let mut q = [0u8; 32];
                    for (i, b) in bytes.iter().enumerate() {
                        q[2 * i] = b & 15;
                        q[2 * i + 1] = b >> 4;
                    }
                    Q4Group { scale, min, q }
                })
                .collect();
            tensors.insert(
                base.to_string(),
                HostTensor {
                    shape: vec![rows, cols],
                    data: TensorData::Q4(groups),
                },
            );
        } else {
            if view.dtype() != Dtype::F32 {
                return Err(bad(name, format!("expected F32, got {:?}", view.dtype())));
            }
            let v = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            tensors.insert(
                name.to_string(),
                HostTensor {
                    shape: view.shape().to_vec(),
                    data: TensorData::F32(v),
                },
            );
        }
    }
    validate_tensors(&config, &tensors, &|_| p.clone(), &p)?;
    let source = format!(
        "{p} ({FORMAT}; from {})",
        meta.get("edgereason.source")
            .map(String::as_str)
            .unwrap_or("?")
    );
    Ok(HostModel {
        config,
        tensors,
        tokenizer,
        chat_template: meta.get("edgereason.chat_template").cloned(),
        bos_token_id,
        eos_token_ids,
        add_bos,
        source,
    })
}

#[cfg(test)]
#[path = "prequant_tests.rs"]
mod tests;
