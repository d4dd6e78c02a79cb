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
use safetensors::tensor::TensorView;
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
            TensorData::F32(v) => out.push((name.clone(), f32_tensor(&t.shape, v))),
            TensorData::Q4(groups) => out.extend(q4_tensors(name, &t.shape, groups)?),
            TensorData::Q8(groups) => out.extend(q8_tensors(name, &t.shape, groups)?),
        }
    }
    let meta = file_metadata(model)?;
    write_atomically(path, &out, meta)
}

fn f32_tensor(shape: &[usize], v: &[f32]) -> Owned {
    Owned {
        dtype: Dtype::F32,
        shape: shape.to_vec(),
        bytes: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    }
}

/// `[rows, cols]` of a grouped matrix, checking that `n_groups` groups of 32 fill it.
/// `kind` ("int4", "int8") is for the error message.
fn grouped_dims(
    name: &str,
    shape: &[usize],
    n_groups: usize,
    kind: &str,
) -> anyhow::Result<(usize, usize)> {
    let &[rows, cols] = shape else {
        bail!("tensor '{name}': {kind} tensor must be 2-D, shape {shape:?}")
    };
    if cols % 32 != 0 || n_groups * 32 != rows * cols {
        bail!("tensor '{name}': {n_groups} {kind} groups do not fit shape {shape:?}");
    }
    Ok((rows, cols))
}

/// An int4 matrix as its `.q4`, `.q4_scale` and `.q4_min` tensors.
fn q4_tensors(
    name: &str,
    shape: &[usize],
    groups: &[Q4Group],
) -> anyhow::Result<[(String, Owned); 3]> {
    let (rows, cols) = grouped_dims(name, shape, groups.len(), "int4")?;
    let q: Vec<u8> = groups
        .iter()
        .flat_map(|g| {
            g.q.chunks_exact(2)
                .map(|p| (p[0] & 15) | ((p[1] & 15) << 4))
        })
        .collect();
    let gshape = vec![rows, cols / 32];
    Ok([
        (
            format!("{name}.q4"),
            Owned {
                dtype: Dtype::U8,
                shape: vec![rows, cols / 2],
                bytes: q,
            },
        ),
        (
            format!("{name}.q4_scale"),
            Owned {
                dtype: Dtype::F16,
                shape: gshape.clone(),
                bytes: f16_bytes(groups.iter().map(|g| g.scale)),
            },
        ),
        (
            format!("{name}.q4_min"),
            Owned {
                dtype: Dtype::F16,
                shape: gshape,
                bytes: f16_bytes(groups.iter().map(|g| g.min)),
            },
        ),
    ])
}

/// An int8 matrix as its `.q8` and `.q8_scale` tensors.
fn q8_tensors(
    name: &str,
    shape: &[usize],
    groups: &[Q8Group],
) -> anyhow::Result<[(String, Owned); 2]> {
    let (rows, cols) = grouped_dims(name, shape, groups.len(), "int8")?;
    let q: Vec<u8> = groups.iter().flat_map(|g| g.q.map(|v| v as u8)).collect();
    Ok([
        (
            format!("{name}.q8"),
            Owned {
                dtype: Dtype::I8,
                shape: vec![rows, cols],
                bytes: q,
            },
        ),
        (
            format!("{name}.q8_scale"),
            Owned {
                dtype: Dtype::F16,
                shape: vec![rows, cols / 32],
                bytes: f16_bytes(groups.iter().map(|g| g.scale)),
            },
        ),
    ])
}

/// The `__metadata__` strings: everything but the tensors.
fn file_metadata(model: &HostModel) -> anyhow::Result<HashMap<String, String>> {
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
    Ok(meta)
}

/// Serialize to a temporary file beside `path`, sync it, and rename it into place; the
/// temporary file is removed on failure.
fn write_atomically(
    path: &Path,
    tensors: &[(String, Owned)],
    meta: HashMap<String, String>,
) -> anyhow::Result<()> {
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
        safetensors::serialize_to_file(
            tensors.iter().map(|(n, o)| (n.as_str(), o)),
            Some(meta),
            &tmp,
        )
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
    check_format(&meta, &p)?;
    let stored = read_stored_metadata(&meta, &p)?;
    let tensors = read_tensor_file(path, &p)?;
    validate_tensors(&stored.config, &tensors, &|_| p.clone(), &p)?;
    let source = format!(
        "{p} ({FORMAT}; from {})",
        meta.get("edgereason.source")
            .map(String::as_str)
            .unwrap_or("?")
    );
    Ok(HostModel {
        config: stored.config,
        tensors,
        tokenizer: stored.tokenizer,
        chat_template: meta.get("edgereason.chat_template").cloned(),
        bos_token_id: stored.bos_token_id,
        eos_token_ids: stored.eos_token_ids,
        add_bos: stored.add_bos,
        source,
    })
}

/// `edgereason.format` is present and the version this build reads.
fn check_format(meta: &HashMap<String, String>, p: &str) -> Result<(), LoadError> {
    match meta.get(FORMAT_KEY) {
        Some(f) if f == FORMAT => Ok(()),
        Some(f) => Err(malformed(
            p,
            &format!("{FORMAT_KEY}: unsupported version '{f}' (this build reads {FORMAT})"),
        )),
        None => Err(LoadError::Missing {
            path: p.into(),
            what: format!("metadata '{FORMAT_KEY}' (not an edgereason pre-quantized file)"),
        }),
    }
}

/// The parsed `__metadata__` entries a [`HostModel`] needs besides its tensors.
struct StoredMetadata {
    config: ModelConfig,
    tokenizer: tokenizers::Tokenizer,
    eos_token_ids: Vec<u32>,
    bos_token_id: Option<u32>,
    add_bos: bool,
}

/// Config, tokenizer and token ids from the metadata; errors name the key.
fn read_stored_metadata(
    meta: &HashMap<String, String>,
    p: &str,
) -> Result<StoredMetadata, LoadError> {
    let get = |k: &str| {
        meta.get(k).ok_or_else(|| LoadError::Missing {
            path: p.into(),
            what: format!("metadata '{k}'"),
        })
    };
    let config: ModelConfig = serde_json::from_str(get("edgereason.config")?)
        .map_err(|e| malformed(p, &format!("edgereason.config: {e}")))?;
    let tokenizer = tokenizers::Tokenizer::from_bytes(get("edgereason.tokenizer")?.as_bytes())
        .map_err(|e| LoadError::Tokenizer {
            path: p.into(),
            what: format!("edgereason.tokenizer: {e}"),
        })?;
    let eos_token_ids: Vec<u32> = serde_json::from_str(get("edgereason.eos")?)
        .map_err(|e| malformed(p, &format!("edgereason.eos: {e}")))?;
    let bos_token_id = match meta.get("edgereason.bos") {
        None => None,
        Some(b) => Some(
            b.parse()
                .map_err(|_| malformed(p, &format!("edgereason.bos: '{b}' is not a token id")))?,
        ),
    };
    let add_bos = match get("edgereason.add_bos")?.as_str() {
        "true" => true,
        "false" => false,
        other => {
            return Err(malformed(
                p,
                &format!("edgereason.add_bos: '{other}' is not true/false"),
            ))
        }
    };
    Ok(StoredMetadata {
        config,
        tokenizer,
        eos_token_ids,
        bos_token_id,
        add_bos,
    })
}

/// Map the file and read every tensor, int4 / int8 matrices from their parts.
fn read_tensor_file(path: &Path, p: &str) -> Result<HashMap<String, HostTensor>, LoadError> {
    let f = std::fs::File::open(path).map_err(|source| LoadError::Io {
        path: p.into(),
        source,
    })?;
    // Safety: read-only map, dropped before returning.
    let map = unsafe { memmap2::Mmap::map(&f) }.map_err(|source| LoadError::Io {
        path: p.into(),
        source,
    })?;
    let st = SafeTensors::deserialize(&map)
        .map_err(|e| malformed(p, &format!("safetensors header/data: {e}")))?;
    read_tensors(&st, p)
}

/// Every tensor under its model name: a `.q4` / `.q8` tensor is read together with its
/// scale (and min) tensors, which are otherwise only checked to have one.
fn read_tensors(st: &SafeTensors<'_>, p: &str) -> Result<HashMap<String, HostTensor>, LoadError> {
    let mut tensors = HashMap::new();
    for (name, view) in st.iter() {
        if let Some(base) = name.strip_suffix(".q8_scale") {
            require_matching(st, name, &format!("{base}.q8"), p)?;
            continue; // read with its .q8
        }
        if let Some(base) = name.strip_suffix(".q8") {
            tensors.insert(base.to_string(), read_q8(st, name, base, &view, p)?);
            continue;
        }
        if let Some(base) = name
            .strip_suffix(".q4_scale")
            .or(name.strip_suffix(".q4_min"))
        {
            require_matching(st, name, &format!("{base}.q4"), p)?;
            continue; // read with its .q4
        }
        if let Some(base) = name.strip_suffix(".q4") {
            tensors.insert(base.to_string(), read_q4(st, name, base, &view, p)?);
        } else {
            tensors.insert(name.to_string(), read_f32(name, &view, p)?);
        }
    }
    Ok(tensors)
}

fn bad_tensor(p: &str, name: &str, what: String) -> LoadError {
    LoadError::BadTensor {
        path: p.into(),
        name: name.into(),
        what,
    }
}

/// A group-parameter tensor `name` is only valid beside its data tensor `data_name`.
fn require_matching(
    st: &SafeTensors<'_>,
    name: &str,
    data_name: &str,
    p: &str,
) -> Result<(), LoadError> {
    if st.tensor(data_name).is_err() {
        return Err(bad_tensor(p, name, format!("no matching '{data_name}'")));
    }
    Ok(())
}

/// A part of a grouped matrix, which must be present.
fn required_part<'d>(
    st: &SafeTensors<'d>,
    name: &str,
    p: &str,
) -> Result<TensorView<'d>, LoadError> {
    st.tensor(name).map_err(|_| LoadError::Missing {
        path: p.into(),
        what: format!("tensor '{name}'"),
    })
}

/// A per-group scale or min tensor: F16 `[rows, cols/32]`.
fn check_group_part(
    t: &TensorView<'_>,
    name: &str,
    rows: usize,
    cols: usize,
    p: &str,
) -> Result<(), LoadError> {
    if t.dtype() != Dtype::F16 || t.shape() != [rows, cols / 32] {
        return Err(bad_tensor(
            p,
            name,
            format!(
                "expected F16 {:?}, got {:?} {:?}",
                [rows, cols / 32],
                t.dtype(),
                t.shape()
            ),
        ));
    }
    Ok(())
}

/// (rows, cols) of a packed matrix stored as 2-D `dtype` [rows, cols/per_byte] (int8: one
/// value a byte, int4: two), with cols a multiple of the 32-wide groups.
fn packed_shape(
    view: &TensorView<'_>,
    (dtype, dtype_name, per_byte): (Dtype, &str, usize),
    name: &str,
    p: &str,
) -> Result<(usize, usize), LoadError> {
    let stored = if per_byte == 1 {
        "[rows, cols]".to_string()
    } else {
        format!("[rows, cols/{per_byte}]")
    };
    let &[rows, stored_cols] = view.shape() else {
        return Err(bad_tensor(
            p,
            name,
            format!("expected 2-D {dtype_name} {stored}, got {:?}", view.shape()),
        ));
    };
    let cols = stored_cols * per_byte;
    if view.dtype() != dtype || cols % 32 != 0 {
        return Err(bad_tensor(
            p,
            name,
            format!(
                "expected {dtype_name} {stored} with cols a multiple of 32, got {:?} {:?}",
                view.dtype(),
                view.shape()
            ),
        ));
    }
    Ok((rows, cols))
}

/// An int8 matrix from `<base>.q8` (`view`) and `<base>.q8_scale`.
fn read_q8(
    st: &SafeTensors<'_>,
    name: &str,
    base: &str,
    view: &TensorView<'_>,
    p: &str,
) -> Result<HostTensor, LoadError> {
    let scale_name = format!("{base}.q8_scale");
    let scale = required_part(st, &scale_name, p)?;
    let (rows, cols) = packed_shape(view, (Dtype::I8, "I8", 1), name, p)?;
    check_group_part(&scale, &scale_name, rows, cols, p)?;
    let groups = view
        .data()
        .chunks_exact(32)
        .zip(scale.data().chunks_exact(2))
        .map(|(q, s)| Q8Group {
            scale: half::f16::from_le_bytes([s[0], s[1]]).to_f32(),
            q: std::array::from_fn(|i| q[i] as i8),
        })
        .collect();
    Ok(HostTensor {
        shape: vec![rows, cols],
        data: TensorData::Q8(groups),
    })
}

/// An int4 matrix from `<base>.q4` (`view`), `<base>.q4_scale` and `<base>.q4_min`.
fn read_q4(
    st: &SafeTensors<'_>,
    name: &str,
    base: &str,
    view: &TensorView<'_>,
    p: &str,
) -> Result<HostTensor, LoadError> {
    let scale = required_part(st, &format!("{base}.q4_scale"), p)?;
    let min = required_part(st, &format!("{base}.q4_min"), p)?;
    let (rows, cols) = packed_shape(view, (Dtype::U8, "U8", 2), name, p)?;
    for (t, n) in [(&scale, "q4_scale"), (&min, "q4_min")] {
        check_group_part(t, &format!("{base}.{n}"), rows, cols, p)?;
    }
    let (scales, mins) = (f16_values(scale.data()), f16_values(min.data()));
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
    Ok(HostTensor {
        shape: vec![rows, cols],
        data: TensorData::Q4(groups),
    })
}

fn f16_values(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(2)
        .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
        .collect()
}

/// Any other tensor: F32 under its own name.
fn read_f32(name: &str, view: &TensorView<'_>, p: &str) -> Result<HostTensor, LoadError> {
    if view.dtype() != Dtype::F32 {
        return Err(bad_tensor(
            p,
            name,
            format!("expected F32, got {:?}", view.dtype()),
        ));
    }
    let v = view
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Ok(HostTensor {
        shape: view.shape().to_vec(),
        data: TensorData::F32(v),
    })
}

#[cfg(test)]
#[path = "prequant_tests.rs"]
mod tests;
