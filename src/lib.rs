//! edgereason: int4 + LoRA reasoning LLM inference on any wgpu GPU.
//!
//! Layers, bottom up: [`gpu`] (device, pipelines, buffers) → [`ops`] (one launcher per
//! WGSL kernel) → [`model`] (config, weights, forward pass) → [`engine`] (generation,
//! scoring, sampling) → the `edgereason` CLI.
pub mod gpu;
pub mod loader;
pub mod ops;
pub mod model;
pub mod adapters;
pub mod kv;
pub mod sampling;
pub mod engine;
pub mod sched;
pub mod pull;
pub mod bench;
