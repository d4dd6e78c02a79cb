//! edgereason: int4 + LoRA reasoning LLM inference on any wgpu GPU.
//!
//! Layers, bottom up: [`gpu`] (device, pipelines, buffers) → [`ops`] (one launcher per
//! WGSL kernel) → [`model`] (config, weights, forward pass) → [`engine`] (generation,
//! scoring, sampling) → the `edgereason` CLI.
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
