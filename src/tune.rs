//! `edgereason tune`: time the per-device kernel choices on this device and keep the
//! fastest in its tuning file ([`crate::gpu::tuning`]), which every later run reads.
//!
//! Each candidate is a set of `EDGEREASON_*` knobs; the knobs are read once per process,
//! so each trial is a child `edgereason bench --json` with the candidate's variables (and
//! no tuning file). Rounds alternate the candidates, so a drifting machine slows them
//! alike; a candidate replaces the built-in defaults only if its median beats theirs by
//! [`MIN_GAIN`] (the decode and the prefill choices are made apart, each on its own
//! figure).

use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::Command;

/// A set of knob values to try.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Candidate {
    pub name: &'static str,
    pub vars: Vec<(&'static str, &'static str)>,
}

fn candidate(name: &'static str, vars: &[(&'static str, &'static str)]) -> Candidate {
    Candidate {
        name,
        vars: vars.to_vec(),
    }
}

/// The decode choices worth timing on a device, the built-in defaults first. GPUs: k split
/// inside the workgroup instead of a reduce launch, one stream's attention keys likewise
/// (5 launches a layer), command buffers per step (more or one), and steps not pipelined.
/// CPU drivers never split k: the slices alone, and steps not pipelined.
pub fn decode_candidates(cpu: bool) -> Vec<Candidate> {
    let (off, k8, k4, a4) = (
        ("EDGEREASON_K_SPLITS", "0"),
        ("EDGEREASON_K_SLICES", "8"),
        ("EDGEREASON_K_SLICES", "4"),
        ("EDGEREASON_ATTENTION_SLICES", "4"),
    );
    // Each step waited for before the next: where a driver runs submissions on the
    // submitting thread, pipelining can only cost.
    let unpipelined = candidate("unpipelined", &[("EDGEREASON_PIPELINE", "0")]);
    if cpu {
        return vec![
            candidate("default", &[]),
            candidate("k-slices-2", &[("EDGEREASON_K_SLICES", "2")]),
            candidate(
                "attention-slices-2",
                &[("EDGEREASON_ATTENTION_SLICES", "2")],
            ),
            unpipelined,
        ];
    }
    vec![
        candidate("default", &[]),
        candidate("k-slices-8", &[off, k8]),
        candidate("k-slices-8+attention-slices-4", &[off, k8, a4]),
        candidate("k-slices-4+attention-slices-4", &[off, k4, a4]),
        candidate("k-slices-4+splits", &[k4]),
        candidate("submit-parts-8", &[("EDGEREASON_SUBMIT_PARTS", "8")]),
        // With steps pipelined the host records ahead anyway: fewer submits may win.
        candidate("submit-parts-1", &[("EDGEREASON_SUBMIT_PARTS", "1")]),
        unpipelined,
    ]
}

/// The prefill choices worth timing: the cooperative-matrix path where the device has it.
pub fn prefill_candidates(cooperative: bool) -> Vec<Candidate> {
    let mut out = vec![candidate("default", &[])];
    if cooperative {
        out.push(candidate(
            "cooperative-matrix",
            &[("EDGEREASON_PREFILL_COOP", "1")],
        ));
    }
    out
}

/// A candidate must beat the defaults' median by this fraction to replace them.
pub const MIN_GAIN: f64 = 0.03;

/// Index of the candidate to keep: the fastest median, if it beats candidate 0 (the
/// defaults) by [`MIN_GAIN`]; else 0. `samples[i]` are candidate i's figures (higher is
/// better); a candidate without any (every trial failed) is never chosen.
pub fn choose(samples: &[Vec<f64>]) -> usize {
    let Some(base) = samples.first().and_then(|v| median(v)) else {
        return 0;
    };
    let best = samples
        .iter()
        .enumerate()
        .filter_map(|(i, v)| median(v).map(|m| (i, m)))
        .max_by(|a, b| a.1.total_cmp(&b.1));
    match best {
        Some((i, m)) if m > base * (1.0 + MIN_GAIN) => i,
        _ => 0,
    }
}

/// The median of `v` (the mean of the middle two for an even count); None if empty.
pub fn median(v: &[f64]) -> Option<f64> {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => None,
        n if n % 2 == 1 => Some(v[n / 2]),
        n => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

/// One trial's figures.
#[derive(Clone, Copy, Debug)]
pub struct Figures {
    pub prefill_tokens_per_s: f64,
    pub decode_tokens_per_s: f64,
    /// Launches a layer in a decode step (what the knobs change).
    pub launches_per_layer: f64,
}

/// Run `exe bench --json` on `model` with `cand`'s knobs (every knob any candidate sets
/// cleared first, the tuning file off) on device `device`.
pub fn trial(
    exe: &Path,
    device: &str,
    model: &str,
    tokens: (usize, usize),
    cand: &Candidate,
    all: &[Candidate],
) -> Result<Figures> {
    let mut cmd = Command::new(exe);
    cmd.args(["bench", "--json", "--model", model])
        .args(["--prompt-tokens", &tokens.0.to_string()])
        .args(["--gen-tokens", &tokens.1.to_string()])
        .env("EDGEREASON_DEVICE", device)
        .env("EDGEREASON_TUNING", "0");
    for (k, _) in all.iter().flat_map(|c| &c.vars) {
        cmd.env_remove(k);
    }
    cmd.envs(cand.vars.iter().copied());
    let out = cmd
        .output()
        .with_context(|| format!("running {}", exe.display()))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        bail!(
            "bench with {}: {}",
            cand.name,
            err.lines().last().unwrap_or("")
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("bench with {}: its --json output", cand.name))?;
    let field = |value: &serde_json::Value, name: &str| {
        value[name]
            .as_f64()
            .with_context(|| format!("bench with {}: no {name} in its --json output", cand.name))
    };
    Ok(Figures {
        prefill_tokens_per_s: field(&v, "prefill_tokens_per_s")?,
        decode_tokens_per_s: field(&v, "decode_tokens_per_s")?,
        launches_per_layer: field(&v["decode_step_cost"], "dispatches_per_layer")?,
    })
}

/// What [`run`] measured and chose.
#[derive(Clone, Debug, serde::Serialize)]
pub struct TuneReport {
    pub device: String,
    /// The tuning file's name for this device ([`crate::gpu::tuning::device_key`]).
    pub device_key: String,
    pub model: String,
    /// Per decode candidate: (candidate, decode tok/s of each round).
    pub decode: Vec<(Candidate, Vec<f64>)>,
    /// Per prefill candidate: (candidate, prefill tok/s of each round).
    pub prefill: Vec<(Candidate, Vec<f64>)>,
    /// The chosen knobs: the decode winner's, then the prefill winner's.
    pub chosen: Vec<(String, String)>,
}

/// Time every candidate for `ctx`'s device `rounds` times, alternating, with `exe`
/// (the `edgereason` binary) on `model` with a `tokens.0`-token prompt and `tokens.1`
/// decode steps, and choose ([`choose`]). `progress` gets a line per trial.
pub fn run(
    ctx: &crate::gpu::GpuContext,
    exe: &Path,
    model: &str,
    tokens: (usize, usize),
    rounds: usize,
    progress: &mut dyn FnMut(&str),
) -> Result<TuneReport> {
    let decode_cands = decode_candidates(ctx.is_cpu());
    let prefill_cands = prefill_candidates(ctx.cooperative_tile.is_some());
    let all: Vec<Candidate> = decode_cands.iter().chain(&prefill_cands).cloned().collect();
    let device = ctx.adapter.index.to_string();
    let mut decode = vec![Vec::new(); decode_cands.len()];
    // The defaults' prefill figures come from their decode trials.
    let mut prefill = vec![Vec::new(); prefill_cands.len()];
    for round in 0..rounds.max(1) {
        for (i, c) in decode_cands.iter().enumerate() {
            match trial(exe, &device, model, tokens, c, &all) {
                Ok(f) => {
                    progress(&format!(
                        "round {round}: {:<32} decode {:>9.2} tok/s ({:.1} launches a layer), prefill {:>9.1}",
                        c.name, f.decode_tokens_per_s, f.launches_per_layer, f.prefill_tokens_per_s
                    ));
                    decode[i].push(f.decode_tokens_per_s);
                    if i == 0 {
                        prefill[0].push(f.prefill_tokens_per_s);
                    }
                }
                Err(e) => progress(&format!("round {round}: {:<32} failed: {e:#}", c.name)),
            }
        }
        for (i, c) in prefill_cands.iter().enumerate().skip(1) {
            match trial(exe, &device, model, tokens, c, &all) {
                Ok(f) => {
                    let p = f.prefill_tokens_per_s;
                    progress(&format!(
                        "round {round}: {:<32} prefill {p:>9.1} tok/s",
                        c.name
                    ));
                    prefill[i].push(p);
                }
                Err(e) => progress(&format!("round {round}: {:<32} failed: {e:#}", c.name)),
            }
        }
    }
    if decode[0].is_empty() {
        bail!("every bench with the default knobs failed: nothing to compare against");
    }
    let chosen = decode_cands[choose(&decode)]
        .vars
        .iter()
        .chain(&prefill_cands[choose(&prefill)].vars)
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Ok(TuneReport {
        device: ctx.describe(),
        device_key: crate::gpu::tuning::device_key(&ctx.adapter),
        model: model.to_string(),
        decode: decode_cands.into_iter().zip(decode).collect(),
        prefill: prefill_cands.into_iter().zip(prefill).collect(),
        chosen,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_stay_unless_beaten_by_the_margin() {
        // Medians 100, 102 (within 3%), 90: the defaults stay.
        assert_eq!(
            choose(&[vec![99.0, 101.0], vec![102.0, 102.0], vec![90.0]]),
            0
        );
        // 110 beats 100 by 10%; the median, not one lucky round, decides.
        assert_eq!(
            choose(&[
                vec![100.0, 100.0],
                vec![110.0, 110.0],
                vec![200.0, 50.0, 60.0]
            ]),
            1
        );
        // A candidate whose every trial failed is never chosen; no defaults, no choice.
        assert_eq!(choose(&[vec![100.0], vec![]]), 0);
        assert_eq!(choose(&[vec![], vec![500.0]]), 0);
    }

    #[test]
    fn candidates_start_with_the_defaults_and_set_only_tuning_knobs() {
        for cands in [
            decode_candidates(true),
            decode_candidates(false),
            prefill_candidates(true),
        ] {
            assert!(cands[0].vars.is_empty());
            assert!(cands
                .iter()
                .flat_map(|c| &c.vars)
                .all(|(k, _)| crate::gpu::tuning::KNOBS.contains(k)));
        }
    }
}
