//! A `tokenizers::Tokenizer` rebuilt from GGUF `tokenizer.ggml.*` metadata.
//!
//! Only byte-level BPE (`tokenizer.ggml.model = "gpt2"`) is supported: vocabulary from
//! `tokens`, merges from `merges`, control / user-defined tokens (`token_type` 3 / 4)
//! registered as special added tokens so `<|im_start|>` is never split, and the
//! pre-tokenizer chosen by `tokenizer.ggml.pre` to match the model's HF tokenizer.json.

use super::gguf::{GgufFile, GgufValue};
use super::LoadError;
use std::path::Path;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::NFC;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer};

/// Tokens that end a reply wherever the vocabulary has them. `<|im_start|>` too: a ChatML
/// model that opens a new turn has finished its own. (transformers 4.57 reads SmolLM2's GGUF
/// end-of-sequence as `<|im_start|>`, so adapters fine-tuned through it end replies that way.)
pub const END_OF_REPLY: [&str; 3] = ["<|im_end|>", "<|endoftext|>", "<|im_start|>"];

/// Qwen2 pre-tokenizer split (HF Qwen2 tokenizer.json): numbers split into single digits.
pub const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Llama 3 pre-tokenizer split: numbers in runs of up to three digits.
pub const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// ggml token types (`llama_token_type`).
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// Token ids and template the engine needs besides the tokenizer itself.
#[derive(Clone, Debug, Default)]
pub struct TokenizerInfo {
    pub bos_token_id: Option<u32>,
    /// `tokenizer.ggml.eos_token_id` (and `eot_token_id`) plus `<|im_end|>` /
    /// `<|endoftext|>` when in the vocabulary: any of them ends a chat turn.
    pub eos_token_ids: Vec<u32>,
    pub add_bos: bool,
    pub chat_template: Option<String>,
}

/// Build the tokenizer described by a GGUF file's metadata.
pub fn tokenizer_from_gguf(
    g: &GgufFile,
    path: &Path,
) -> Result<(Tokenizer, TokenizerInfo), LoadError> {
    let p = path.display().to_string();
    check_bpe_model(g, &p)?;
    let tokens = g
        .get_array("tokenizer.ggml.tokens")?
        .ok_or_else(|| missing_key(&p, "tokenizer.ggml.tokens"))?;
    let merges = g
        .get_array("tokenizer.ggml.merges")?
        .ok_or_else(|| missing_key(&p, "tokenizer.ggml.merges"))?;
    let types = g.get_array("tokenizer.ggml.token_type")?;

    let (vocab, pieces) = read_vocab(tokens, &p)?;
    let merges = read_merges(merges, &p)?;
    let pre = g.get_str("tokenizer.ggml.pre")?.unwrap_or("default");
    let pre = pre_tokenizer_for(pre, &p)?;
    let mut tok = build_bpe_tokenizer(vocab, merges, pre, &p)?;
    if let Some(types) = types {
        add_special_tokens(&mut tok, types, &pieces);
    }
    let info = tokenizer_info(g, &tok, tokens.len(), &p)?;
    Ok((tok, info))
}

fn tokenizer_error(path: &str, what: String) -> LoadError {
    LoadError::Tokenizer {
        path: path.into(),
        what,
    }
}

fn missing_key(path: &str, key: &str) -> LoadError {
    LoadError::Missing {
        path: path.into(),
        what: format!("metadata '{key}'"),
    }
}

/// Refuse anything but byte-level BPE (`tokenizer.ggml.model = "gpt2"`).
fn check_bpe_model(g: &GgufFile, path: &str) -> Result<(), LoadError> {
    match g.get_str("tokenizer.ggml.model")? {
        Some("gpt2") => Ok(()),
        Some(other) => Err(tokenizer_error(
            path,
            format!("model '{other}' is not supported (only byte-level BPE 'gpt2')"),
        )),
        None => Err(missing_key(path, "tokenizer.ggml.model")),
    }
}

/// Piece → id map, and the pieces in id order.
fn read_vocab<'a>(
    tokens: &'a [GgufValue],
    path: &str,
) -> Result<(ahash::AHashMap<String, u32>, Vec<&'a str>), LoadError> {
    let mut vocab = ahash::AHashMap::with_capacity(tokens.len());
    let mut pieces = Vec::with_capacity(tokens.len());
    for (id, t) in tokens.iter().enumerate() {
        let s = t
            .as_str()
            .ok_or_else(|| tokenizer_error(path, format!("token {id} is not a string")))?;
        // First occurrence wins, as in llama.cpp's text → id map.
        vocab.entry(s.to_string()).or_insert(id as u32);
        pieces.push(s);
    }
    Ok((vocab, pieces))
}

/// `"a b"` merge strings → `(a, b)` pairs.
fn read_merges(merges: &[GgufValue], path: &str) -> Result<Vec<(String, String)>, LoadError> {
    let err = |what: String| tokenizer_error(path, what);
    merges
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let s = m
                .as_str()
                .ok_or_else(|| err(format!("merge {i} is not a string")))?;
            let (a, b) = s
                .split_once(' ')
                .ok_or_else(|| err(format!("merge {i} '{s}' is not two space-separated pieces")))?;
            Ok((a.to_string(), b.to_string()))
        })
        .collect()
}

/// The pre-tokenization one `tokenizer.ggml.pre` value stands for.
struct PreTokenization {
    steps: Vec<PreTokenizerWrapper>,
    /// NFC-normalize the input first.
    nfc: bool,
    /// Look whole words up in the vocabulary before merging (Llama 3).
    ignore_merges: bool,
}

/// Mirrors each model's HF tokenizer.json pre_tokenizer.
fn pre_tokenizer_for(pre: &str, path: &str) -> Result<PreTokenization, LoadError> {
    let byte_level = ByteLevel::new(false, false, false);
    let split = |re: &str| -> Result<PreTokenizerWrapper, LoadError> {
        Ok(Split::new(
            SplitPattern::Regex(re.into()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| tokenizer_error(path, format!("pre-tokenizer regex: {e}")))?
        .into())
    };
    let (steps, nfc, ignore_merges): (Vec<PreTokenizerWrapper>, bool, bool) = match pre {
        "qwen2" => (vec![split(QWEN2_REGEX)?, byte_level.into()], true, false),
        "llama-bpe" | "llama3" => (vec![split(LLAMA3_REGEX)?, byte_level.into()], false, true),
        // SmolLM / SmolLM2: Sequence[Digits(individual_digits), ByteLevel(use_regex)].
        "smollm" => (
            vec![
                Digits::new(true).into(),
                ByteLevel::new(false, true, true).into(),
            ],
            false,
            false,
        ),
        "gpt-2" | "gpt2" => (vec![ByteLevel::new(false, true, true).into()], false, false),
        other => {
            return Err(tokenizer_error(
                path,
                format!(
                    "pre-tokenizer '{other}' is not supported (qwen2, smollm, llama-bpe, gpt-2)"
                ),
            ))
        }
    };
    Ok(PreTokenization {
        steps,
        nfc,
        ignore_merges,
    })
}

/// A byte-level BPE tokenizer over `vocab` and `merges`.
fn build_bpe_tokenizer(
    vocab: ahash::AHashMap<String, u32>,
    merges: Vec<(String, String)>,
    pre: PreTokenization,
    path: &str,
) -> Result<Tokenizer, LoadError> {
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .ignore_merges(pre.ignore_merges)
        .build()
        .map_err(|e| tokenizer_error(path, format!("BPE: {e}")))?;
    let mut tok = Tokenizer::new(bpe);
    if pre.nfc {
        tok.with_normalizer(Some(NFC));
    }
    tok.with_pre_tokenizer(Some(Sequence::new(pre.steps)));
    tok.with_decoder(Some(ByteLevelDecoder::default()));
    Ok(tok)
}

/// Register control / user-defined pieces as special tokens so they are never split.
fn add_special_tokens(tok: &mut Tokenizer, types: &[GgufValue], pieces: &[&str]) {
    let special: Vec<AddedToken> = types
        .iter()
        .zip(pieces)
        .filter(|(t, _)| {
            matches!(
                t.as_i64(),
                Some(TOKEN_TYPE_CONTROL | TOKEN_TYPE_USER_DEFINED)
            )
        })
        .map(|(_, s)| AddedToken::from(s.to_string(), true))
        .collect();
    tok.add_special_tokens(&special);
}

/// BOS / EOS ids, whether to add BOS, and the chat template.
fn tokenizer_info(
    g: &GgufFile,
    tok: &Tokenizer,
    n_vocab: usize,
    path: &str,
) -> Result<TokenizerInfo, LoadError> {
    let err = |what: String| tokenizer_error(path, what);
    let id = |key: &str| -> Result<Option<u32>, LoadError> {
        match g.get_int(key)? {
            Some(v) if (0..n_vocab as i64).contains(&v) => Ok(Some(v as u32)),
            Some(v) => Err(err(format!("'{key}' = {v} is outside the vocabulary"))),
            None => Ok(None),
        }
    };
    let mut eos: Vec<u32> = [
        id("tokenizer.ggml.eos_token_id")?,
        id("tokenizer.ggml.eot_token_id")?,
    ]
    .into_iter()
    .flatten()
    .collect();
    for s in END_OF_REPLY {
        if let Some(i) = tok.token_to_id(s) {
            eos.push(i);
        }
    }
    eos.sort_unstable();
    eos.dedup();
    let add_bos = match g.get("tokenizer.ggml.add_bos_token") {
        Some(v) => {
            v.as_i64()
                .ok_or_else(|| err("'tokenizer.ggml.add_bos_token' is not a bool".into()))?
                != 0
        }
        None => false,
    };
    Ok(TokenizerInfo {
        bos_token_id: id("tokenizer.ggml.bos_token_id")?,
        eos_token_ids: eos,
        add_bos,
        chat_template: g.get_str("tokenizer.chat_template")?.map(str::to_string),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loader::gguf::tests::real_gguf;

    fn load(name: &str) -> Option<(Tokenizer, TokenizerInfo)> {
        let path = real_gguf(name)?;
        let g = GgufFile::open(&path).unwrap();
        Some(tokenizer_from_gguf(&g, &path).unwrap())
    }

    fn ids(t: &Tokenizer, s: &str) -> Vec<u32> {
        t.encode(s, false).unwrap().get_ids().to_vec()
    }

    fn check_common(t: &Tokenizer, info: &TokenizerInfo) {
        for s in [
            "Hello world",
            "  leading spaces\n\nand\ttabs",
            "naïve café 東京 🚀",
            "fn main() { println!(\"{}\", 42); }",
        ] {
            let e = ids(t, s);
            assert_eq!(t.decode(&e, false).unwrap(), s, "round trip of {s:?}");
        }
        assert_eq!(ids(t, "Hello world").len(), 2, "'Hello' + ' world'");
        let im_start = t.token_to_id("<|im_start|>").unwrap();
        let im_end = t.token_to_id("<|im_end|>").unwrap();
        let chat = "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n";
        let e = ids(t, chat);
        assert_eq!(e[0], im_start);
        assert_eq!(e.iter().filter(|&&i| i == im_start).count(), 2);
        assert_eq!(e.iter().filter(|&&i| i == im_end).count(), 1);
        assert_eq!(t.decode(&e, false).unwrap(), chat);
        assert!(
            info.eos_token_ids.contains(&im_end),
            "<|im_end|> ends a turn"
        );
        assert!(info
            .chat_template
            .as_deref()
            .unwrap_or("")
            .contains("im_start"));
        assert_eq!(ids(t, "12345").len(), 5, "digits split one per token");
    }

    #[test]
    fn smollm2_tokenizer() {
        let Some((t, info)) = load("SmolLM2-135M-Instruct.Q4_1.gguf") else {
            return;
        };
        check_common(&t, &info);
        println!(
            "smollm2: {:?} eos {:?} bos {:?} add_bos {}",
            ids(&t, "Hello world"),
            info.eos_token_ids,
            info.bos_token_id,
            info.add_bos
        );
    }

    #[test]
    fn qwen2_tokenizer() {
        let Some((t, info)) = load("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf") else {
            return;
        };
        check_common(&t, &info);
        // HF Qwen2.5: "Hello world" = [9707, 1879].
        assert_eq!(ids(&t, "Hello world"), vec![9707, 1879]);
        let chat = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n";
        let want = [
            151644, 8948, 198, 2610, 525, 264, 10950, 17847, 13, 151645, 198, 151644, 872, 198,
            13048, 151645, 198, 151644, 77091, 198,
        ];
        assert_eq!(ids(&t, chat), want);
        assert_eq!(
            ids(&t, "12345 x\n\n  y"),
            vec![16, 17, 18, 19, 20, 856, 271, 220, 379]
        );
        assert!(!info.add_bos);
        println!(
            "qwen2: eos {:?} bos {:?}",
            info.eos_token_ids, info.bos_token_id
        );
    }
}
