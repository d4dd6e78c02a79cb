//! Embedding gather from the int4/int8 table (`shaders/embedding.wgsl`): one dispatch per chunk
//! of the table; each writes the rows of the tokens it holds.

use super::matmul_int4::{QuantMatrix, WeightFormat};
use super::{Dispatch, DispatchSpec, Dyn, Grid, KernelParams};
use crate::gpu::{Binding, GpuContext};

crate::kernel_params!(
    /// `struct Params` of shaders/embedding.wgsl.
    EmbeddingParams for "embedding"::Params {
        /// Vocabulary rows in this chunk.
        n: u32,
        /// n_embd.
        k: u32,
        /// Tokens (set per step).
        m: u32,
        /// First vocabulary row of this chunk.
        n0: u32,
    }
);

const KINDS: &[Binding] = &[
    Binding::Uniform,
    Binding::Read,
    Binding::Read,
    Binding::Read,
    Binding::ReadWrite,
];

pub fn embedding(
    ctx: &GpuContext,
    label: &str,
    table: &QuantMatrix,
    tokens: &wgpu::Buffer,
    out: &wgpu::Buffer,
) -> Vec<Dispatch> {
    table
        .chunks
        .iter()
        .map(|c| {
            Dispatch::new(
                ctx,
                DispatchSpec {
                    label: format!("{label}[{}..]", c.n0),
                    shader: "embedding",
                    entry: table.format.entry(),
                    kinds: KINDS,
                    words: EmbeddingParams {
                        n: c.n as u32,
                        k: table.k as u32,
                        m: 0,
                        n0: c.n0 as u32,
                    }
                    .words(),
                    dynamic: vec![(crate::params_word!(EmbeddingParams, m), Dyn::Rows)],
                    buffers: vec![&c.qweight, &c.scales, tokens, out],
                    grid: Grid::PerRow {
                        x: super::wg64(
                            table.k
                                / if table.format == WeightFormat::Int4 {
                                    8
                                } else {
                                    4
                                },
                        ),
                    },
                    defines: Default::default(),
                },
            )
        })
        .collect()
}
