//! edgereason: int4 + LoRA reasoning LLM inference on any wgpu GPU.
pub mod loader;
pub mod pull;
