//! edgereason: int4 + LoRA reasoning LLM inference on any wgpu GPU.
//!
//! Layers, bottom up: [`gpu`] (device, pipelines, buffers) → [`ops`] (one launcher per
//! WGSL kernel) → [`model`] (config, weights, forward pass) → [`engine`] (generation,
//! scoring, sampling) → the `edgereason` CLI. [`tune`] times the per-device kernel choices
//! on the device and keeps the fastest ([`gpu::tuning`]).

// No panics on input paths: an unwrap, expect, panic or unreachable in library code is a
// lint error unless it carries `#[expect(.., reason = "..")]` saying why it cannot fire,
// and a public function that can still panic documents when (tests: see clippy.toml).
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::unreachable,
    clippy::todo,
    clippy::unimplemented,
    clippy::missing_panics_doc
)]
pub mod adapters;
pub mod bench;
pub mod engine;
pub mod gpu;
pub mod kv;
pub mod loader;
pub mod model;
pub mod ops;
pub mod pull;
pub mod sampling;
pub mod sched;
pub mod server;
mod sync;
pub mod tune;

/// An error and its causes on one line, outermost first, leaving out a cause whose text
/// its parent already quotes (`{:#}` would print it twice): what the CLI and the bindings
/// report.
///
/// ```
/// let e = anyhow::anyhow!("disk full").context("writing model.gguf: disk full");
/// assert_eq!(edgereason::error_line(&e), "writing model.gguf: disk full");
/// ```
pub fn error_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain().map(|c| c.to_string()) {
        if !line.contains(&cause) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&cause);
        }
    }
    line
}
