//! Per-device tuning: the kernel choices `edgereason tune` measured fastest on a device.
//!
//! The engine's per-device choices (k splits of decode matmuls, slices inside a workgroup,
//! command buffers per step, the prefill path, ...) are `EDGEREASON_*` knobs with defaults
//! measured on the devices we had. A phone, a laptop iGPU or another vendor's card may want
//! others, so `edgereason tune` times the candidates on the device itself and keeps the
//! winner in `<cache>/tuning/<device>.env` (`KEY=VALUE` lines, `#` comments). Every knob is
//! read through [`knob`]: the process environment first (an explicit choice, and what the
//! A/B runs set), then the file of the first device this process opened, then the built-in
//! default. `EDGEREASON_TUNING=0` ignores the file.
//!
//! ```
//! let vars = edgereason::gpu::tuning::parse("# tuned\nEDGEREASON_K_SLICES=8\n").unwrap();
//! assert_eq!(vars, vec![("EDGEREASON_K_SLICES".to_string(), "8".to_string())]);
//! ```

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::OnceLock;

/// Every knob [`knob`] serves: what a tuning file may set, and what [`in_effect`] reports.
pub const KNOBS: &[&str] = &[
    "EDGEREASON_K_SPLITS",
    "EDGEREASON_SPLIT_TARGET",
    "EDGEREASON_SPLIT_MIN_GROUPS",
    "EDGEREASON_K_SLICES",
    "EDGEREASON_ATTENTION_SLICES",
    "EDGEREASON_SPLIT_ONE_STREAM",
    "EDGEREASON_KEYS_PER_SPLIT",
    "EDGEREASON_SHARED_PREFIX",
    "EDGEREASON_FLASH_PREFILL",
    "EDGEREASON_SUBMIT_PARTS",
    "EDGEREASON_PIPELINE",
    "EDGEREASON_LORA_SPLIT",
    "EDGEREASON_PREFILL_COOP",
    "EDGEREASON_COOP_TILES",
    "EDGEREASON_PREFILL_GEMM",
    "EDGEREASON_GEMM_TILE",
    "EDGEREASON_MAX_TILE",
    "EDGEREASON_ROW_TILES",
    "EDGEREASON_FOLD_NORMS",
    "EDGEREASON_SHARE_BLOCKS",
];

/// The tuning file this process loaded (if any) and its knobs.
struct Tuned {
    path: Option<PathBuf>,
    vars: HashMap<String, String>,
}

static TUNED: OnceLock<Tuned> = OnceLock::new();

/// A knob's value: the environment's, else the tuning file's (see the module docs).
pub fn knob(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .or_else(|| TUNED.get().and_then(|t| t.vars.get(name).cloned()))
}

/// The knobs set away from their built-in defaults, each as `NAME=VALUE (env)` or
/// `NAME=VALUE (<tuning file>)`, environment first (what `bench` prints beside its figures).
pub fn in_effect() -> Vec<String> {
    let mut out: Vec<String> = KNOBS
        .iter()
        .filter_map(|k| std::env::var(k).ok().map(|v| format!("{k}={v} (env)")))
        .collect();
    if let Some(t) = TUNED.get() {
        let mut vars: Vec<_> = t
            .vars
            .iter()
            .filter(|(k, _)| std::env::var(k).is_err())
            .collect();
        vars.sort();
        let from = t
            .path
            .as_ref()
            .map_or(String::new(), |p| p.display().to_string());
        out.extend(vars.into_iter().map(|(k, v)| format!("{k}={v} ({from})")));
    }
    out
}

/// `$EDGEREASON_CACHE`, else `<platform cache dir>/edgereason` (models, tuning files).
pub fn cache_root() -> Option<PathBuf> {
    match std::env::var_os("EDGEREASON_CACHE").filter(|d| !d.is_empty()) {
        Some(d) => Some(PathBuf::from(d)),
        None => dirs::cache_dir().map(|d| d.join("edgereason")),
    }
}

/// A file name for a device: its name, backend and driver (see [`super::AdapterSummary`]),
/// lower-case, other characters as '-' (a driver update may change what is fastest, so
/// it is part of the key).
pub fn device_key(adapter: &super::AdapterSummary) -> String {
    let raw = format!("{}-{}-{}", adapter.name, adapter.backend, adapter.driver);
    let mut key = String::new();
    for c in raw.to_lowercase().chars() {
        let c = if c.is_ascii_alphanumeric() || c == '.' {
            c
        } else {
            '-'
        };
        if !(c == '-' && key.ends_with('-')) {
            key.push(c);
        }
    }
    key.trim_matches('-').to_string()
}

/// Where the tuning of device `key` is kept.
pub fn tuning_file(key: &str) -> Option<PathBuf> {
    cache_root().map(|d| d.join("tuning").join(format!("{key}.env")))
}

/// `KEY=VALUE` lines (blank lines and `#` comments skipped); a line that is not one, or a
/// key that is not one of the [`KNOBS`], is an error naming the line.
pub fn parse(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut vars = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            return Err(format!("line {}: expected EDGEREASON_NAME=VALUE", i + 1));
        };
        let k = k.trim();
        if !KNOBS.contains(&k) {
            return Err(format!("line {}: {k} is not a tuning knob", i + 1));
        }
        vars.push((k.to_string(), v.trim().to_string()));
    }
    Ok(vars)
}

/// Load device `key`'s tuning file, once per process (the first device opened); a missing
/// file is no tuning, a malformed one a warning and no tuning.
pub(crate) fn load(key: &str) {
    TUNED.get_or_init(|| {
        let none = Tuned {
            path: None,
            vars: HashMap::new(),
        };
        let off = std::env::var("EDGEREASON_TUNING").is_ok_and(|v| v == "0");
        let Some(path) = tuning_file(key).filter(|p| !off && p.exists()) else {
            return none;
        };
        let parsed = std::fs::read_to_string(&path)
            .map_err(|e| e.to_string())
            .and_then(|text| parse(&text));
        match parsed {
            Ok(vars) => Tuned {
                path: Some(path),
                vars: vars.into_iter().collect(),
            },
            Err(e) => {
                eprintln!("edgereason: ignoring tuning file {}: {e}", path.display());
                none
            }
        }
    });
}

/// Write device `key`'s tuning (`header` as `#` comment lines first); returns the path.
pub fn save(key: &str, header: &str, vars: &[(String, String)]) -> std::io::Result<PathBuf> {
    let path = tuning_file(key).ok_or_else(|| {
        std::io::Error::other("no cache directory on this platform: set EDGEREASON_CACHE")
    })?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut text: String = header.lines().map(|l| format!("# {l}\n")).collect();
    for (k, v) in vars {
        text.push_str(&format!("{k}={v}\n"));
    }
    std::fs::write(&path, text)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_takes_knobs_and_names_a_bad_line() {
        let vars = parse("# h\n\nEDGEREASON_K_SPLITS = 0\nEDGEREASON_K_SLICES=8\n").unwrap();
        assert_eq!(
            vars,
            vec![
                ("EDGEREASON_K_SPLITS".to_string(), "0".to_string()),
                ("EDGEREASON_K_SLICES".to_string(), "8".to_string())
            ]
        );
        assert_eq!(
            parse("EDGEREASON_K_SLICES=8\nPATH=/tmp\n").unwrap_err(),
            "line 2: PATH is not a tuning knob"
        );
        assert_eq!(
            parse("EDGEREASON_K_SLICE=8").unwrap_err(),
            "line 1: EDGEREASON_K_SLICE is not a tuning knob"
        );
        assert_eq!(
            parse("EDGEREASON_K_SLICES 8").unwrap_err(),
            "line 1: expected EDGEREASON_NAME=VALUE"
        );
    }

    #[test]
    fn device_keys_are_file_names() {
        let adapter = crate::gpu::AdapterSummary {
            index: 0,
            name: "NVIDIA H200 (PCIe)".into(),
            backend: "Vulkan".into(),
            device_type: "DiscreteGpu".into(),
            driver: "NVIDIA 580.95.05".into(),
            shader_f16: true,
            subgroups: true,
            subgroup_size: [32, 32],
            timestamps: true,
            pipeline_cache: true,
            max_buffer_size: 0,
            max_storage_buffer_binding_size: 0,
            max_storage_buffers_per_shader_stage: 0,
            max_compute_workgroup_storage_size: 0,
            cooperative_matrix: Vec::new(),
        };
        assert_eq!(
            device_key(&adapter),
            "nvidia-h200-pcie-vulkan-nvidia-580.95.05"
        );
    }
}
