//! Helpers shared by the integration tests.
#![allow(dead_code)]

use edgereason::gpu::{list_adapters, GpuContext};
use std::path::PathBuf;
use std::sync::Arc;

pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

pub fn json(rel: &str) -> serde_json::Value {
    let p = fixture(rel);
    serde_json::from_str(
        &std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())),
    )
    .unwrap()
}

pub fn u32s(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

pub fn f32s(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

/// Largest |a - b| over the two rows, relative to the largest |b|.
pub fn rel_max_err(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

/// Deterministic pseudo-random values in [-1, 1).
pub fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Contexts for each path present: Vulkan with subgroups, Vulkan forced onto the portable
/// kernels, and the GL backend (no f16, no subgroups).
pub fn contexts() -> Vec<Arc<GpuContext>> {
    let mut out = Vec::new();
    let adapters = list_adapters();
    assert!(
        !adapters.is_empty(),
        "no GPU adapter: install mesa-vulkan-drivers"
    );
    for backend in ["Vulkan", "Gl"] {
        if let Some(a) = adapters.iter().find(|a| a.backend == backend) {
            let ctx = GpuContext::new(Some(&a.index.to_string())).unwrap();
            if ctx.subgroups {
                out.push(GpuContext::with_subgroups(Some(&a.index.to_string()), false).unwrap());
            }
            out.push(ctx);
        }
    }
    out
}

/// "Vulkan+subgroups", "Vulkan", "Gl": names the path in failure messages.
pub fn path(ctx: &GpuContext) -> String {
    format!(
        "{}{}",
        ctx.adapter.backend,
        if ctx.subgroups { "+subgroups" } else { "" }
    )
}
