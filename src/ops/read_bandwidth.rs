//! Plain buffer-read kernel (`shaders/read_bandwidth.wgsl`): the GB/s yardstick the int4
//! GEMV is compared with in `edgereason bench` and `benches/kernels.rs`.

use super::{Dispatch, DispatchSpec, Grid};
use crate::gpu::{Binding, GpuContext};

const KINDS: &[Binding] = &[Binding::Uniform, Binding::Read, Binding::ReadWrite];

/// Read all of `src` (`words` u32) with `threads` invocations into `dst` [threads].
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
            words: vec![words as u32, threads as u32, 0, 0],
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
