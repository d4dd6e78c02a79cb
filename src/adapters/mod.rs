//! Adapters on top of the frozen int4 base: LoRA sets resident on the GPU ([`LoraSet`]),
//! loaded from PEFT folders ([`peft`]); the switcher head that turns the reasoning adapter
//! on per prompt ([`switcher`]); the verifier head that weights the best-of-N vote
//! ([`verifier`]).
//!
//! Several adapters live in one [`LoraSet`] at once and each row of a batch names its own
//! (or none), so requests with different adapters decode together. Loading or unloading
//! an adapter builds a new set (adapters are small) and never touches the base weights;
//! sessions keep the set they were created with.

pub mod peft;
pub mod switcher;
pub mod verifier;

pub use peft::{AdapterError, LoraAdapter, PROJECTIONS};
pub use switcher::Switcher;
pub use verifier::Verifier;

use crate::gpu::GpuContext;
use crate::loader::ModelConfig;
use crate::ops::lora::{pack2, pack_a_transposed};
use std::sync::Arc;

/// The four matmuls of a layer LoRA can hit, as the engine fuses them: which projections
/// each stacks (indices into [`PROJECTIONS`]).
pub const FUSED: [&[usize]; 4] = [&[0, 1, 2], &[3], &[4, 5], &[6]];

/// One fused matrix's adapters on the GPU.
pub struct LoraMatrix {
    /// [k / 2][segs · total rank] u32: A rows as columns, adapter by adapter (f16 pairs
    /// along k).
    pub a: wgpu::Buffer,
    /// Columns of `a`.
    pub a_cols: usize,
    /// `[total rank / 2][n]` u32: B, pre-scaled, f16 pairs along the rank.
    pub b: wgpu::Buffer,
    pub k: usize,
    pub n: usize,
    pub segs: usize,
    /// Output columns where segments 1 and 2 begin (n when absent).
    pub segments: (usize, usize),
}

/// Adapters resident on the GPU, each with its rank (rounded up to even) and its offset in
/// the stacked A/B buffers.
pub struct LoraSet {
    pub adapters: Vec<Arc<LoraAdapter>>,
    /// (rank, rank offset) per adapter, as the kernels read them per row.
    pub slots: Vec<(u32, u32)>,
    pub max_rank: usize,
    /// `layers[l][f]` for the fused matrices of [`FUSED`].
    pub layers: Vec<[LoraMatrix; 4]>,
}

impl LoraSet {
    /// Upload `adapters` (already checked against `config`).
    pub fn upload(ctx: &GpuContext, config: &ModelConfig, adapters: Vec<Arc<LoraAdapter>>) -> Self {
        let ranks: Vec<usize> = adapters
            .iter()
            .map(|a| a.rank.next_multiple_of(2))
            .collect();
        let total: usize = ranks.iter().sum();
        let offsets: Vec<usize> = ranks
            .iter()
            .scan(0, |acc, r| Some(std::mem::replace(acc, *acc + r)))
            .collect();
        let layers = (0..config.n_layer)
            .map(|l| {
                FUSED.map(|projs| {
                    let (k, _) = peft::projection_shape(config, projs[0]);
                    let outs: Vec<usize> = projs
                        .iter()
                        .map(|&p| peft::projection_shape(config, p).1)
                        .collect();
                    let n: usize = outs.iter().sum();
                    let segs = projs.len();
                    let mut a = vec![0f32; segs * total.max(1) * k];
                    let mut b = vec![0u32; (total / 2).max(1) * n];
                    for (ai, ad) in adapters.iter().enumerate() {
                        let (r, off) = (ranks[ai], offsets[ai]);
                        let mut col0 = 0;
                        for (s, &p) in projs.iter().enumerate() {
                            if let Some(pair) = &ad.layers[l][p] {
                                for i in 0..ad.rank {
                                    let row = segs * off + s * r + i;
                                    a[row * k..(row + 1) * k]
                                        .copy_from_slice(&pair.a[i * k..(i + 1) * k]);
                                }
                                for o in 0..outs[s] {
                                    let br = &pair.b[o * ad.rank..(o + 1) * ad.rank];
                                    for jj in 0..r / 2 {
                                        let at = |i: usize| br.get(i).map_or(0.0, |v| v * ad.scale);
                                        b[(off / 2 + jj) * n + col0 + o] =
                                            pack2(at(2 * jj), at(2 * jj + 1));
                                    }
                                }
                            }
                            col0 += outs[s];
                        }
                    }
                    let seg_start = |s: usize| if s < segs { outs[..s].iter().sum() } else { n };
                    LoraMatrix {
                        a: ctx.storage_from(&format!("lora.{l}.a"), &pack_a_transposed(&a, k)),
                        a_cols: segs * total.max(1),
                        b: ctx.storage_from(&format!("lora.{l}.b"), &b),
                        k,
                        n,
                        segs,
                        segments: (seg_start(1), seg_start(2)),
                    }
                })
            })
            .collect();
        LoraSet {
            slots: ranks
                .iter()
                .zip(&offsets)
                .map(|(&r, &o)| (r as u32, o as u32))
                .collect(),
            max_rank: ranks.iter().copied().max().unwrap_or(0),
            adapters,
            layers,
        }
    }

    /// Index of the adapter named `name` in this set.
    pub fn index(&self, name: &str) -> Option<usize> {
        self.adapters.iter().position(|a| a.name == name)
    }

    /// Floats of low-rank activations per row: up to three stacked projections at the
    /// largest rank.
    pub fn u_stride(&self) -> usize {
        3 * self.max_rank
    }

    /// GPU bytes of all A and B buffers.
    pub fn bytes(&self) -> u64 {
        self.layers
            .iter()
            .flatten()
            .map(|m| m.a.size() + m.b.size())
            .sum()
    }
}

/// How a LoRA delta is added to a matmul's output.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LoraApply {
    /// In the int4 matmul's output pass (the default).
    #[default]
    Fused,
    /// As a separate pass over the output after the matmul (for comparison).
    Separate,
}

/// The shipped adapters and heads for a model (`adapters/<pull name>/`: `reasoning/`,
/// `reasoning-budget/`, `switcher.safetensors`, `verifier.safetensors`), looked up under
/// `EDGEREASON_ADAPTERS`, then `./adapters`, then the source tree's `adapters/`.
pub fn default_dir(model: &str) -> Option<std::path::PathBuf> {
    // A registry model by any of its names (or its file) uses the pull name's folder.
    let known = crate::pull::known_models()
        .iter()
        .find(|m| m.answers_to(model));
    let name = match known {
        Some(m) => m.name.to_string(),
        None => std::path::Path::new(model)
            .file_name()?
            .to_string_lossy()
            .to_string(),
    };
    let roots = [
        std::env::var_os("EDGEREASON_ADAPTERS").map(Into::into),
        Some("adapters".into()),
        Some(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("adapters")),
    ];
    roots
        .into_iter()
        .flatten()
        .map(|r: std::path::PathBuf| r.join(&name))
        .find(|d| d.is_dir())
}

/// What [`default_dir`] ships for a model, each path present on disk or `None`.
#[derive(Clone, Debug, Default)]
pub struct Shipped {
    /// The folder they were found in.
    pub dir: Option<std::path::PathBuf>,
    /// The masked-LoRA SFT adapter (`reasoning/`).
    pub reasoning: Option<std::path::PathBuf>,
    /// Its budget-forced GRPO version (`reasoning-budget/`).
    pub reasoning_budget: Option<std::path::PathBuf>,
    pub switcher: Option<std::path::PathBuf>,
    pub verifier: Option<std::path::PathBuf>,
}

impl Shipped {
    /// Look up `model`'s shipped artifacts (a registry name, alias or model path).
    pub fn find(model: &str) -> Self {
        let Some(dir) = default_dir(model) else {
            return Self::default();
        };
        let at = |name: &str| Some(dir.join(name)).filter(|p| p.exists());
        Shipped {
            reasoning: at("reasoning"),
            reasoning_budget: at("reasoning-budget"),
            switcher: at("switcher.safetensors"),
            verifier: at("verifier.safetensors"),
            dir: Some(dir),
        }
    }
}
