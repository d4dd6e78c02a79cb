//! GGUF (v2, v3) reader over a memory map: configuration, tensors and metadata (the
//! tokenizer is built from it in `tokenizer.rs`, the [`HostModel`](super::HostModel) in `gguf_model.rs`).
//!
//! Layout: `"GGUF"`, version u32, tensor count u64, metadata count u64, metadata
//! key/values, tensor infos (name, dims, ggml type, offset), padding to
//! `general.alignment`, tensor data. Every read is bounds-checked and every count is
//! capped against the bytes left in the file, so a cut-short or corrupted file is a
//! [`LoadError::Malformed`] naming the field, never a panic or a huge allocation.

use super::ggml_quants::{self, GgmlType};
use super::{Arch, HostTensor, LoadError, ModelConfig, TensorData};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum GgufValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<GgufValue>),
}

impl GgufValue {
    /// Any integer value (or bool) as i64.
    pub fn as_i64(&self) -> Option<i64> {
        Some(match *self {
            Self::U8(v) => v as i64,
            Self::I8(v) => v as i64,
            Self::U16(v) => v as i64,
            Self::I16(v) => v as i64,
            Self::U32(v) => v as i64,
            Self::I32(v) => v as i64,
            Self::U64(v) => i64::try_from(v).ok()?,
            Self::I64(v) => v,
            Self::Bool(v) => v as i64,
            _ => return None,
        })
    }

    /// Any numeric value as f64.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Self::F32(v) => Some(v as f64),
            Self::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            Self::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// One tensor's header entry.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` is the contiguous dimension.
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Offset from the start of the data section.
    pub offset: u64,
    /// Byte size (0 for a type this loader cannot size).
    pub n_bytes: usize,
}

impl TensorInfo {
    /// Row-major shape: `[ne1, ne0]` for a matrix, `[ne0]` for a vector (reversed dims).
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
}

/// An open, parsed GGUF file; tensor data stays in the memory map.
pub struct GgufFile {
    pub path: String,
    pub version: u32,
    pub metadata: BTreeMap<String, GgufValue>,
    pub tensors: Vec<TensorInfo>,
    index: HashMap<String, usize>,
    data_offset: usize,
    mmap: memmap2::Mmap,
}

/// Bounds-checked little-endian cursor; errors are the `what` text of `Malformed`.
struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
    /// Strings are u32-length-prefixed in GGUF v1, u64 after.
    v1: bool,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &dyn Fn() -> String) -> Result<&'a [u8], String> {
        let left = self.b.len() - self.pos;
        if n > left {
            return Err(format!(
                "{} runs past end of file (needs {n} bytes at offset {}, file has {})",
                what(),
                self.pos,
                self.b.len()
            ));
        }
        let s = &self.b[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn arr<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N], String> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }
    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.arr(what)?))
    }
    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.arr(what)?))
    }
    /// A count that must fit in the rest of the file at `min_size` bytes per item.
    fn count(&mut self, min_size: usize, what: &dyn Fn() -> String) -> Result<usize, String> {
        let n = if self.v1 {
            self.u32(what)? as u64
        } else {
            self.u64(what)?
        };
        let left = (self.b.len() - self.pos) as u64;
        if n.saturating_mul(min_size as u64) > left {
            return Err(format!(
                "{} is {n}, more than the {left} bytes left in the file can hold",
                what()
            ));
        }
        Ok(n as usize)
    }
    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String, String> {
        let n = self.count(1, &|| format!("length of {}", what()))?;
        let s = self.take(n, what)?;
        // Lossy rather than an error: a few real vocabularies hold invalid UTF-8 pieces.
        Ok(String::from_utf8_lossy(s).into_owned())
    }
    fn value(
        &mut self,
        ty: u32,
        depth: usize,
        what: &dyn Fn() -> String,
    ) -> Result<GgufValue, String> {
        use GgufValue as V;
        Ok(match ty {
            0 => V::U8(self.arr::<1>(what)?[0]),
            1 => V::I8(self.arr::<1>(what)?[0] as i8),
            2 => V::U16(u16::from_le_bytes(self.arr(what)?)),
            3 => V::I16(i16::from_le_bytes(self.arr(what)?)),
            4 => V::U32(self.u32(what)?),
            5 => V::I32(i32::from_le_bytes(self.arr(what)?)),
            6 => V::F32(f32::from_le_bytes(self.arr(what)?)),
            7 => V::Bool(self.arr::<1>(what)?[0] != 0),
            8 => V::String(self.string(what)?),
            9 if depth < 4 => {
                let ety = self.u32(&|| format!("element type of {}", what()))?;
                let min = match ety {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10..=12 => 8,
                    9 => 12,
                    t => return Err(format!("{} has unknown element type {t}", what())),
                };
                let n = self.count(min, &|| format!("element count of {}", what()))?;
                // Capacity from the count only up to a bound: a corrupted count that still
                // fits the file must not reserve 32 bytes per claimed 1-byte element.
                let mut v = Vec::with_capacity(n.min(1 << 16));
                for _ in 0..n {
                    v.push(self.value(ety, depth + 1, what)?);
                }
                V::Array(v)
            }
            10 => V::U64(self.u64(what)?),
            11 => V::I64(i64::from_le_bytes(self.arr(what)?)),
            12 => V::F64(f64::from_le_bytes(self.arr(what)?)),
            t => return Err(format!("{} has unknown value type {t}", what())),
        })
    }
}

/// The fixed-size start of a GGUF file.
struct Header {
    version: u32,
    n_tensors: usize,
    n_kv: usize,
}

/// Magic, version and the two counts; leaves `r` at the first metadata entry and set
/// to the version's string-length width.
fn read_header(r: &mut Reader<'_>) -> Result<Header, String> {
    let magic = r.arr::<4>(&|| "magic".into())?;
    if &magic != b"GGUF" {
        return Err(format!("not a GGUF file (magic {magic:02x?})"));
    }
    let version = r.u32(&|| "version".into())?;
    if !(1..=3).contains(&version) {
        return Err(format!("unsupported GGUF version {version}"));
    }
    r.v1 = version == 1;
    // A tensor info is at least 8+4+8+4+8 bytes; a key/value at least 8+4+1.
    let n_tensors = r.count(32, &|| "tensor count".into())?;
    let n_kv = r.count(13, &|| "metadata count".into())?;
    Ok(Header {
        version,
        n_tensors,
        n_kv,
    })
}

/// `n_kv` metadata key/values.
fn read_metadata(r: &mut Reader<'_>, n_kv: usize) -> Result<BTreeMap<String, GgufValue>, String> {
    let mut metadata = BTreeMap::new();
    for i in 0..n_kv {
        let key = r.string(&|| format!("key of metadata entry #{i}"))?;
        let what = || format!("metadata '{key}'");
        let ty = r.u32(&|| format!("type of {}", what()))?;
        let v = r.value(ty, 0, &what)?;
        metadata.insert(key, v);
    }
    Ok(metadata)
}

/// `n_tensors` tensor header entries; `n_bytes` is filled in later by [`size_tensors`].
fn read_tensor_infos(r: &mut Reader<'_>, n_tensors: usize) -> Result<Vec<TensorInfo>, String> {
    let mut tensors = Vec::with_capacity(n_tensors.min(1 << 16));
    for i in 0..n_tensors {
        tensors.push(read_tensor_info(r, i)?);
    }
    Ok(tensors)
}

/// Tensor entry #`i`: name, dims, ggml type, data offset.
fn read_tensor_info(r: &mut Reader<'_>, i: usize) -> Result<TensorInfo, String> {
    let name = r.string(&|| format!("name of tensor #{i}"))?;
    let what = |f: &str| format!("{f} of tensor '{name}'");
    let n_dims = r.u32(&|| what("dimension count"))?;
    if n_dims > 4 {
        return Err(format!("{} is {n_dims} (max 4)", what("dimension count")));
    }
    let mut dims = Vec::with_capacity(n_dims as usize);
    for _ in 0..n_dims {
        let d = if r.v1 {
            r.u32(&|| what("dims")).map(u64::from)
        } else {
            r.u64(&|| what("dims"))
        };
        dims.push(d?);
    }
    let ty = GgmlType::from_id(r.u32(&|| what("type"))?);
    let offset = r.u64(&|| what("data offset"))?;
    Ok(TensorInfo {
        name,
        dims,
        ty,
        offset,
        n_bytes: 0,
    })
}

/// `general.alignment`, 32 when absent.
fn data_alignment(metadata: &BTreeMap<String, GgufValue>) -> Result<usize, String> {
    match metadata.get("general.alignment") {
        None => Ok(32),
        Some(v) => match v.as_i64() {
            Some(a) if a > 0 && (a as u64).is_power_of_two() => Ok(a as usize),
            _ => Err(format!(
                "metadata 'general.alignment' is {v:?}, not a power of two"
            )),
        },
    }
}

/// Set each tensor's `n_bytes`, checking that its rows split into whole blocks and that
/// its data is aligned and inside the file. Types this loader cannot size keep 0.
fn size_tensors(
    tensors: &mut [TensorInfo],
    alignment: usize,
    data_offset: usize,
    file_len: usize,
) -> Result<(), String> {
    let data_len = file_len.saturating_sub(data_offset) as u64;
    for t in tensors {
        let Some((be, bs)) = t.ty.block_layout() else {
            continue;
        };
        let ne0 = t.dims.first().copied().unwrap_or(1);
        if ne0 % be as u64 != 0 {
            return Err(format!(
                "tensor '{}' row length {ne0} is not a multiple of the {} block size {be}",
                t.name,
                t.ty.name()
            ));
        }
        let n_bytes = t
            .dims
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .and_then(|n| (n / be as u64).checked_mul(bs as u64))
            .filter(|&n| n <= data_len)
            .ok_or_else(|| {
                format!(
                    "tensor '{}' dims {:?} are larger than the file",
                    t.name, t.dims
                )
            })?;
        if t.offset % alignment as u64 != 0 {
            return Err(format!(
                "tensor '{}' data offset {} is not aligned to {alignment}",
                t.name, t.offset
            ));
        }
        if t.offset.saturating_add(n_bytes) > data_len {
            return Err(format!(
                "tensor '{}' data runs past end of file (needs {} bytes, file has {})",
                t.name,
                data_offset as u64 + t.offset + n_bytes,
                file_len
            ));
        }
        t.n_bytes = n_bytes as usize;
    }
    Ok(())
}

impl GgufFile {
    /// Map and parse a GGUF file's header, metadata and tensor table.
    pub fn open(path: &Path) -> Result<Self, LoadError> {
        let p = path.display().to_string();
        let io = |source| LoadError::Io {
            path: p.clone(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        // SAFETY: the map is read-only; a file changed underneath us could give wrong
        // bytes, never unsafety beyond what every mmap-based loader accepts.
        let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        Self::parse(p, mmap)
    }

    fn parse(path: String, mmap: memmap2::Mmap) -> Result<Self, LoadError> {
        let bad = |what: String| LoadError::Malformed {
            path: path.clone(),
            what,
        };
        let mut r = Reader {
            b: &mmap,
            pos: 0,
            v1: false,
        };
        let header = read_header(&mut r).map_err(bad)?;
        let metadata = read_metadata(&mut r, header.n_kv).map_err(bad)?;
        let mut tensors = read_tensor_infos(&mut r, header.n_tensors).map_err(bad)?;
        let alignment = data_alignment(&metadata).map_err(bad)?;
        let data_offset = r.pos.div_ceil(alignment) * alignment;
        size_tensors(&mut tensors, alignment, data_offset, mmap.len()).map_err(bad)?;
        let index = tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        Ok(Self {
            path,
            version: header.version,
            metadata,
            tensors,
            index,
            data_offset,
            mmap,
        })
    }

    /// A metadata value by key.
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.get(key)
    }

    fn wrong_type(&self, key: &str, want: &str) -> LoadError {
        LoadError::Malformed {
            path: self.path.clone(),
            what: format!("metadata '{key}' is not {want}"),
        }
    }

    /// An optional string; present but not a string is an error.
    pub fn get_str(&self, key: &str) -> Result<Option<&str>, LoadError> {
        self.get(key)
            .map(|v| v.as_str().ok_or_else(|| self.wrong_type(key, "a string")))
            .transpose()
    }

    /// An optional integer.
    pub fn get_int(&self, key: &str) -> Result<Option<i64>, LoadError> {
        self.get(key)
            .map(|v| v.as_i64().ok_or_else(|| self.wrong_type(key, "an integer")))
            .transpose()
    }

    /// An optional number.
    pub fn get_f64(&self, key: &str) -> Result<Option<f64>, LoadError> {
        self.get(key)
            .map(|v| v.as_f64().ok_or_else(|| self.wrong_type(key, "a number")))
            .transpose()
    }

    /// An optional array.
    pub fn get_array(&self, key: &str) -> Result<Option<&[GgufValue]>, LoadError> {
        self.get(key)
            .map(|v| v.as_array().ok_or_else(|| self.wrong_type(key, "an array")))
            .transpose()
    }

    /// An optional size-like integer: non-negative and at most 2^24 (hyper-parameters;
    /// the bound keeps a corrupted value from overflowing shape arithmetic).
    pub fn get_usize(&self, key: &str) -> Result<Option<usize>, LoadError> {
        match self.get_int(key)? {
            Some(v) if (0..=1 << 24).contains(&v) => Ok(Some(v as usize)),
            Some(v) => Err(LoadError::Malformed {
                path: self.path.clone(),
                what: format!("metadata '{key}' = {v} is out of range"),
            }),
            None => Ok(None),
        }
    }

    /// A required [`get_usize`](Self::get_usize) value.
    pub fn require_usize(&self, key: &str) -> Result<usize, LoadError> {
        self.get_usize(key)?.ok_or_else(|| LoadError::Missing {
            path: self.path.clone(),
            what: format!("metadata '{key}'"),
        })
    }

    /// A tensor's header entry.
    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.index.get(name).map(|&i| &self.tensors[i])
    }

    /// A tensor's raw bytes in the file (bounds were checked on open).
    pub fn tensor_bytes(&self, name: &str) -> Result<&[u8], LoadError> {
        let t = self.tensor_info(name).ok_or_else(|| LoadError::Missing {
            path: self.path.clone(),
            what: format!("tensor '{name}'"),
        })?;
        if t.ty.block_layout().is_none() {
            return Err(LoadError::BadTensor {
                path: self.path.clone(),
                name: name.into(),
                what: format!("unsupported {}", t.ty.name()),
            });
        }
        let start = self.data_offset + t.offset as usize;
        Ok(&self.mmap[start..start + t.n_bytes])
    }

    /// Tensor counts per ggml type, most common first (`Q4_K×169, Q6_K×25, ...`).
    pub fn type_histogram(&self) -> Vec<(GgmlType, usize)> {
        let mut h: BTreeMap<GgmlType, usize> = BTreeMap::new();
        for t in &self.tensors {
            *h.entry(t.ty).or_default() += 1;
        }
        let mut v: Vec<_> = h.into_iter().collect();
        v.sort_by_key(|&(_, n)| std::cmp::Reverse(n));
        v
    }
}

/// Hyper-parameters from `{arch}.*` metadata.
pub(super) fn read_config(g: &GgufFile) -> Result<ModelConfig, LoadError> {
    let arch_name = g
        .get_str("general.architecture")?
        .ok_or_else(|| LoadError::Missing {
            path: g.path.clone(),
            what: "metadata 'general.architecture'".into(),
        })?;
    let arch = match arch_name {
        "qwen2" => Arch::Qwen2,
        "llama" => Arch::Llama,
        other => {
            return Err(LoadError::UnknownArch {
                path: g.path.clone(),
                arch: other.into(),
            })
        }
    };
    let k = |s: &str| format!("{arch_name}.{s}");
    let n_embd = g.require_usize(&k("embedding_length"))?;
    let n_head = g.require_usize(&k("attention.head_count"))?;
    let n_kv_head = g
        .get_usize(&k("attention.head_count_kv"))?
        .unwrap_or(n_head);
    if n_head == 0 || n_kv_head == 0 || n_head % n_kv_head != 0 {
        return Err(LoadError::Malformed {
            path: g.path.clone(),
            what: format!("head counts {n_head}/{n_kv_head} are not a valid GQA layout"),
        });
    }
    let head_dim = g
        .get_usize(&k("attention.key_length"))?
        .unwrap_or(n_embd / n_head);
    // RoPE rotates pairs, and the llama un-permute splits each head in two halves.
    if head_dim == 0 || head_dim % 2 != 0 {
        return Err(LoadError::Malformed {
            path: g.path.clone(),
            what: format!("head dimension {head_dim} is not a positive even number"),
        });
    }
    let n_layer = g.require_usize(&k("block_count"))?;
    // Each layer has at least 9 tensors; also bounds the expected-tensor list we build.
    if n_layer == 0 || n_layer * 9 > g.tensors.len() {
        return Err(LoadError::Malformed {
            path: g.path.clone(),
            what: format!(
                "metadata '{}' = {n_layer} does not match the {} tensors in the file",
                k("block_count"),
                g.tensors.len()
            ),
        });
    }
    let n_vocab = g
        .get_array("tokenizer.ggml.tokens")?
        .ok_or_else(|| LoadError::Missing {
            path: g.path.clone(),
            what: "metadata 'tokenizer.ggml.tokens'".into(),
        })?
        .len();
    let default_theta = if arch == Arch::Qwen2 { 1e6 } else { 1e4 };
    let eps = g
        .get_f64(&k("attention.layer_norm_rms_epsilon"))?
        .ok_or_else(|| LoadError::Missing {
            path: g.path.clone(),
            what: format!("metadata '{}'", k("attention.layer_norm_rms_epsilon")),
        })?;
    Ok(ModelConfig {
        arch,
        n_vocab,
        n_embd,
        n_layer,
        n_head,
        n_kv_head,
        head_dim,
        n_ff: g.require_usize(&k("feed_forward_length"))?,
        rope_theta: g.get_f64(&k("rope.freq_base"))?.unwrap_or(default_theta) as f32,
        rms_eps: eps as f32,
        n_ctx: g.require_usize(&k("context_length"))?,
        tied_embeddings: g.tensor_info("output.weight").is_none(),
    })
}

/// Every tensor the forward pass needs, with its row-major shape.
pub fn expected_tensors(c: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    let (e, q, kv) = (c.n_embd, c.n_head * c.head_dim, c.n_kv_head * c.head_dim);
    let mut v = vec![
        ("token_embd.weight".to_string(), vec![c.n_vocab, e]),
        ("output_norm.weight".into(), vec![e]),
    ];
    if !c.tied_embeddings {
        v.push(("output.weight".into(), vec![c.n_vocab, e]));
    }
    for l in 0..c.n_layer {
        let b = |s: &str| format!("blk.{l}.{s}");
        v.extend([
            (b("attn_norm.weight"), vec![e]),
            (b("ffn_norm.weight"), vec![e]),
            (b("attn_q.weight"), vec![q, e]),
            (b("attn_k.weight"), vec![kv, e]),
            (b("attn_v.weight"), vec![kv, e]),
            (b("attn_output.weight"), vec![e, q]),
            (b("ffn_gate.weight"), vec![c.n_ff, e]),
            (b("ffn_up.weight"), vec![c.n_ff, e]),
            (b("ffn_down.weight"), vec![e, c.n_ff]),
        ]);
        if c.arch == Arch::Qwen2 {
            v.extend([
                (b("attn_q.bias"), vec![q]),
                (b("attn_k.bias"), vec![kv]),
                (b("attn_v.bias"), vec![kv]),
            ]);
        }
    }
    v
}

/// Check and convert the expected tensors, spread over the available cores.
pub(super) fn load_tensors(
    g: &GgufFile,
    c: &ModelConfig,
    expected: &[(String, Vec<usize>)],
) -> Result<HashMap<String, HostTensor>, LoadError> {
    for (name, shape) in expected {
        let t = g.tensor_info(name).ok_or_else(|| LoadError::Missing {
            path: g.path.clone(),
            what: format!("tensor '{name}'"),
        })?;
        if &t.shape() != shape {
            return Err(LoadError::BadTensor {
                path: g.path.clone(),
                name: name.clone(),
                what: format!("shape {:?}, expected {shape:?}", t.shape()),
            });
        }
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(expected.len().max(1));
    let results: Vec<Vec<Result<(String, HostTensor), LoadError>>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut out = vec![];
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some((name, shape)) = expected.get(i) else {
                            break;
                        };
                        out.push(convert_tensor(g, c, name, shape).map(|t| (name.clone(), t)));
                    }
                    out
                })
            })
            .collect();
        workers
            .into_iter()
            // A worker's panic is re-raised here, as if the conversion had run inline.
            .map(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    results.into_iter().flatten().collect()
}

fn convert_tensor(
    g: &GgufFile,
    c: &ModelConfig,
    name: &str,
    shape: &[usize],
) -> Result<HostTensor, LoadError> {
    // tensor_bytes has checked that the tensor exists and its type has a layout.
    let bytes = g.tensor_bytes(name)?;
    let unsupported = || LoadError::BadTensor {
        path: g.path.clone(),
        name: name.into(),
        what: "unsupported type".into(),
    };
    let ty = g.tensor_info(name).ok_or_else(unsupported)?.ty;
    let mut data = match ggml_quants::to_q4_groups(ty, bytes) {
        Some(groups) if shape.len() == 2 => TensorData::Q4(groups),
        _ if shape.len() == 2 && ggml_quants::is_int8_class(ty) => {
            TensorData::Q8(ggml_quants::to_q8_groups(ty, bytes).ok_or_else(unsupported)?)
        }
        _ => TensorData::F32(ggml_quants::dequantize(ty, bytes).ok_or_else(unsupported)?),
    };
    // llama.cpp's converter interleaves the two rotary halves of each Q/K head; undo it
    // so the engine has one (HF rotate-half) RoPE convention.
    if c.arch == Arch::Llama {
        let heads = if name.ends_with(".attn_q.weight") {
            Some(c.n_head)
        } else if name.ends_with(".attn_k.weight") {
            Some(c.n_kv_head)
        } else {
            None
        };
        if let Some(n_head) = heads {
            data = match data {
                TensorData::F32(v) => TensorData::F32(unpermute_rows(&v, shape[0], n_head)),
                TensorData::Q4(v) => TensorData::Q4(unpermute_rows(&v, shape[0], n_head)),
                TensorData::Q8(v) => TensorData::Q8(unpermute_rows(&v, shape[0], n_head)),
            };
        }
    }
    Ok(HostTensor {
        shape: shape.to_vec(),
        data,
    })
}

/// Undo llama.cpp's Q/K permutation on `n_rows` equal rows of `data` (f32 values or int4
/// groups — groups run along a row, so whole-row moves keep them intact): HF row
/// `h*hd + j*hd/2 + i` is GGUF row `h*hd + 2*i + j`.
pub fn unpermute_rows<T: Copy>(data: &[T], n_rows: usize, n_head: usize) -> Vec<T> {
    let hd = n_rows / n_head;
    gather_rows(data, n_rows, |w| 2 * (w % (hd / 2)) + w / (hd / 2), hd)
}

/// llama.cpp's Q/K permutation, the inverse of [`unpermute_rows`] (for writing GGUF).
pub fn permute_rows<T: Copy>(data: &[T], n_rows: usize, n_head: usize) -> Vec<T> {
    let hd = n_rows / n_head;
    gather_rows(data, n_rows, |w| (w % 2) * hd / 2 + w / 2, hd)
}

/// Rows of `data` reordered within each head of `hd` rows: row w of a head is taken from that
/// head's row `src(w)`.
fn gather_rows<T: Copy>(
    data: &[T],
    n_rows: usize,
    src: impl Fn(usize) -> usize,
    hd: usize,
) -> Vec<T> {
    let row = data.len() / n_rows;
    let mut out = Vec::with_capacity(data.len());
    for r in 0..n_rows {
        let from = (r / hd) * hd + src(r % hd);
        out.extend_from_slice(&data[from * row..(from + 1) * row]);
    }
    out
}

#[cfg(test)]
#[path = "gguf_tests.rs"]
pub(crate) mod tests;
