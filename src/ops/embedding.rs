//! Embedding gather from the int4/int8 table (`shaders/embedding.wgsl`): one dispatch per chunk
//! of the table; each writes the rows of the tokens it holds.

use super::matmul_int4::{QuantMatrix, WeightFormat};
use super::{Dispatch, DispatchSpec, Dyn, Grid};
use crate::gpu::{Binding, GpuContext};

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
                    words: vec![c.n as u32, table.k as u32, 0, c.n0 as u32],
                    dynamic: vec![(2, Dyn::Rows)],
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
