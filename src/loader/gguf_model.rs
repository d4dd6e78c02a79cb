//! A GGUF file as a [`HostModel`]: configuration and tensors from the reader (`gguf.rs`),
//! the tokenizer and chat template from its metadata (`tokenizer.rs`). Assembled here so
//! that the reader and the tokenizer builder depend one way only (tokenizer → gguf).

use super::gguf::{expected_tensors, load_tensors, read_config, GgufFile};
use super::tokenizer::tokenizer_from_gguf;
use super::{HostModel, LoadError};
use std::path::Path;

/// Load a GGUF model (qwen2 or llama architecture) into host memory: Q4_0/Q4_1/Q4_K
/// weights are taken over as int4 groups exactly, everything else is dequantized to f32,
/// and llama Q/K rows are un-permuted to the HF layout.
pub fn load_gguf(path: &Path) -> Result<HostModel, LoadError> {
    let g = GgufFile::open(path)?;
    let config = read_config(&g)?;
    let (tokenizer, info) = tokenizer_from_gguf(&g, path)?;
    if tokenizer.get_vocab_size(false) > config.n_vocab {
        return Err(LoadError::Tokenizer {
            path: g.path.clone(),
            what: "vocabulary larger than the token list".into(),
        });
    }
    let expected = expected_tensors(&config);
    let tensors = load_tensors(&g, &config, &expected)?;
    let hist: Vec<String> = g
        .type_histogram()
        .iter()
        .map(|(t, n)| format!("{}×{n}", t.name()))
        .collect();
    Ok(HostModel {
        source: format!("{} (GGUF v{}, {})", g.path, g.version, hist.join(", ")),
        config,
        tensors,
        tokenizer,
        chat_template: info.chat_template,
        bos_token_id: info.bos_token_id,
        eos_token_ids: info.eos_token_ids,
        add_bos: info.add_bos,
    })
}
