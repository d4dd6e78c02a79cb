//! (in progress) — TEMPORARY stub on branch `hf` so `load_model` compiles; replaced by
//! the real GGUF reader from branch `loader` on merge.

use std::path::Path;

use super::{HostModel, LoadError};

/// Placeholder: the GGUF reader lives on branch `loader`.
pub fn load_gguf(path: &Path) -> Result<HostModel, LoadError> {
    Err(LoadError::Malformed { path: path.display().to_string(), what: "GGUF loading is not built into this branch yet".into() })
}
