//! Round trip and corruption tests for the pre-quantized format.

use super::*;
use crate::loader::hf_dir::{
    load_hf_dir,
    tests::{write_hf_dir, Tiny},
};

fn tiny_quantized(model_type: &'static str) -> (tempfile::TempDir, HostModel) {
    let dir = tempfile::tempdir().unwrap();
    let hf = dir.path().join("hf");
    std::fs::create_dir(&hf).unwrap();
    write_hf_dir(
        &hf,
        &Tiny {
            model_type,
            dtype: Dtype::BF16,
            tied: model_type == "qwen2",
            shards: 1,
        },
    );
    let mut m = load_hf_dir(&hf).unwrap();
    m.quantize_matrices(|_| {});
    (dir, m)
}

#[test]
fn round_trip_is_exact() {
    for model_type in ["qwen2", "llama"] {
        let (dir, m) = tiny_quantized(model_type);
        let path = dir.path().join("model.er.safetensors");
        save_prequantized(&m, &path).unwrap();
        assert!(is_prequantized(&path));
        // Nothing but the final file is left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");

        let l = load_prequantized(&path).unwrap();
        assert_eq!(l.config, m.config);
        assert_eq!(l.tensors.len(), m.tensors.len());
        for (name, t) in &m.tensors {
            let lt = &l.tensors[name];
            assert_eq!(lt.shape, t.shape, "{name}");
            match (&t.data, &lt.data) {
                (TensorData::Q4(a), TensorData::Q4(b)) => assert_eq!(a, b, "{name}"),
                (TensorData::F32(a), TensorData::F32(b)) => assert_eq!(a, b, "{name}"),
                _ => panic!("{name}: data kind changed"),
            }
        }
        assert!(matches!(
            l.tensors["blk.0.attn_q.weight"].data,
            TensorData::Q4(_)
        ));
        assert_eq!(l.chat_template, m.chat_template);
        assert_eq!((l.bos_token_id, l.add_bos), (m.bos_token_id, m.add_bos));
        assert_eq!(l.eos_token_ids, m.eos_token_ids);
        for text in [
            "hello world",
            "the cat sat on the mat",
            "unknown words here",
        ] {
            assert_eq!(
                l.tokenizer.encode(text, true).unwrap().get_ids(),
                m.tokenizer.encode(text, true).unwrap().get_ids()
            );
        }
        assert!(l.source.contains(FORMAT), "{}", l.source);
    }
}

#[test]
fn optional_metadata_absent() {
    let (dir, mut m) = tiny_quantized("llama");
    m.chat_template = None;
    m.bos_token_id = None;
    let path = dir.path().join("m.safetensors");
    save_prequantized(&m, &path).unwrap();
    let l = load_prequantized(&path).unwrap();
    assert_eq!((l.chat_template, l.bos_token_id), (None, None));
}

fn err(path: &Path) -> String {
    match load_prequantized(path) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn not_ours_or_corrupt() {
    let (dir, m) = tiny_quantized("qwen2");
    // A plain safetensors file without the format key.
    let plain = dir.path().join("hf/model.safetensors");
    let e = err(&plain);
    assert!(
        e.contains("model.safetensors") && e.contains("edgereason.format"),
        "{e}"
    );
    assert!(!is_prequantized(&plain));

    let path = dir.path().join("m.safetensors");
    save_prequantized(&m, &path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
    let e = err(&path);
    assert!(
        e.contains("m.safetensors") && e.contains("malformed"),
        "{e}"
    );
    std::fs::write(&path, &bytes[..4]).unwrap();
    assert!(err(&path).contains("header length"));

    // Wrong-shaped q4 scale: rewrite the file with one tensor altered.
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    let mut ts: Vec<(String, Vec<usize>, Vec<u8>, Dtype)> = st
        .iter()
        .map(|(n, v)| {
            (
                n.to_string(),
                v.shape().to_vec(),
                v.data().to_vec(),
                v.dtype(),
            )
        })
        .collect();
    let write_with_meta = |ts: &[(String, Vec<usize>, Vec<u8>, Dtype)]| {
        let views: Vec<_> = ts
            .iter()
            .map(|(n, s, b, d)| {
                (
                    n.clone(),
                    safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
                )
            })
            .collect();
        std::fs::write(
            &path,
            safetensors::serialize(views, meta.metadata().clone()).unwrap(),
        )
        .unwrap();
    };
    for t in ts
        .iter_mut()
        .filter(|t| t.0 == "blk.1.ffn_up.weight.q4_scale")
    {
        t.1 = vec![3, 64]; // 2 * 96 f16 values = 3 * 64
    }
    write_with_meta(&ts);
    let e = err(&path);
    assert!(
        e.contains("blk.1.ffn_up.weight.q4_scale")
            && e.contains("[96, 2]")
            && e.contains("[3, 64]"),
        "{e}"
    );

    // A whole matrix missing, and an F32 tensor of the wrong shape.
    ts.retain(|t| !t.0.starts_with("blk.1.ffn_up.weight"));
    write_with_meta(&ts);
    assert!(err(&path).contains("missing tensor 'blk.1.ffn_up.weight'"));
    for t in ts.iter_mut().filter(|t| t.0 == "output_norm.weight") {
        t.1 = vec![32, 2];
    }
    write_with_meta(&ts);
    let e = err(&path);
    assert!(
        e.contains("output_norm.weight") && e.contains("[64]") && e.contains("[32, 2]"),
        "{e}"
    );
}

#[test]
fn load_model_dispatches() {
    let (dir, m) = tiny_quantized("llama");
    let hf = dir.path().join("hf");
    let from_dir = crate::loader::load_model(&hf).unwrap();
    assert!(matches!(
        from_dir.tensors["blk.0.attn_q.weight"].data,
        TensorData::F32(_)
    ));
    let path = dir.path().join("m.safetensors");
    save_prequantized(&m, &path).unwrap();
    let pre = crate::loader::load_model(&path).unwrap();
    assert!(matches!(
        pre.tensors["blk.0.attn_q.weight"].data,
        TensorData::Q4(_)
    ));
    let e = crate::loader::load_model(&hf.join("model.safetensors"))
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("edgereason.format") && e.contains("directory"),
        "{e}"
    );
    let e = crate::loader::load_model(&dir.path().join("nope.gguf"))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("no such file"), "{e}");
}
