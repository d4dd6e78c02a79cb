//! Plain buffer-read kernel (`shaders/read_bandwidth.wgsl`): the GB/s yardstick the int4
//! GEMV is compared with in `edgereason bench` and `benches/kernels.rs`.

use super::{Dispatch, DispatchSpec, Grid, KernelParams};
use crate::gpu::{Binding, GpuContext};

crate::kernel_params!(
    /// `struct Params` of shaders/read_bandwidth.wgsl.
    ReadParams for "read_bandwidth"::Params {
        /// Words in `src`.
        words: u32,
        /// Invocations launched.
        threads: u32,
        _pad0: u32,
        _pad1: u32,
    }
);

const KINDS: &[Binding] = &[Binding::Uniform, Binding::Read, Binding::ReadWrite];

/// Read all of `src` (`words` u32) with `threads` invocations into `dst` `[threads]`.
pub fn read_bandwidth(
    ctx: &GpuContext,
    src: &wgpu::Buffer,
    words: usize,
    threads: usize,
    dst: &wgpu::Buffer,
) -> Dispatch {
    Dispatch::new(
        ctx,
        DispatchSpec {
            label: "read_bandwidth".into(),
            shader: "read_bandwidth",
            entry: "main",
            kinds: KINDS,
            words: ReadParams {
                words: words as u32,
                threads: threads as u32,
                ..Default::default()
            }
            .words(),
            dynamic: vec![],
            buffers: vec![src, dst],
            grid: Grid::PerRow {
                x: super::wg64(threads),
            },
            defines: Default::default(),
        },
    )
}

/// XOR of every `threads`-th word from each start: what `dst` must hold.
pub fn reference(src: &[u32], threads: usize) -> Vec<u32> {
    (0..threads)
        .map(|t| src.iter().skip(t).step_by(threads).fold(0, |a, w| a ^ w))
        .collect()
}
