//! GPU sampling (`shaders/sampling.wgsl`) on every path present (Vulkan with subgroups,
//! Vulkan portable, GL): greedy bit-identical to `sampling::argmax`, the sampled
//! distribution equal to the CPU sampler's rules (chi-square), the log-prob equal to
//! `sampling::log_prob`, draws reproducible per (seed, step), and the draw equal to the
//! CPU reference of the kernel's rules.

mod common;

use common::{contexts, path, rand_vec};
use edgereason::gpu::GpuContext;
use edgereason::ops::{
    self,
    sampling::{SampleRow, Sampled},
};
use edgereason::sampling::{argmax, log_prob};
use std::sync::Arc;

/// The sampling launch over fixed logits, relaunched with new row settings.
struct Launch {
    ctx: Arc<GpuContext>,
    rows: wgpu::Buffer,
    out: wgpu::Buffer,
    /// The ids again, where a session's next step reads its tokens.
    next_tokens: wgpu::Buffer,
    /// Each row's most likely tokens, where it asks.
    top: wgpu::Buffer,
    dispatch: ops::Dispatch,
    max_rows: usize,
}

impl Launch {
    fn new(ctx: &Arc<GpuContext>, logits: &[f32], n_vocab: usize, max_rows: usize) -> Self {
        let lb = ctx.storage_from("logits", logits);
        let [rows, out, top] = ops::sampling::SamplingIo::allocate(ctx, max_rows);
        let next_tokens = ctx.storage("sampling.next_tokens", max_rows as u64 * 4);
        let io = ops::sampling::SamplingIo {
            rows: &rows,
            out: &out,
            next_tokens: &next_tokens,
            top: &top,
        };
        let dispatch = ops::sampling::sampling(ctx, "sampling", &lb, n_vocab, &io).unwrap();
        Launch {
            ctx: ctx.clone(),
            rows,
            out,
            next_tokens,
            top,
            dispatch,
            max_rows,
        }
    }

    fn run(&self, rows: &[SampleRow]) -> Vec<Sampled> {
        assert!(rows.len() <= self.max_rows);
        self.ctx
            .queue
            .write_buffer(&self.rows, 0, bytemuck::cast_slice(rows));
        ops::run_once(&self.ctx, &[&self.dispatch], rows.len() as u32, 0);
        let out: Vec<Sampled> = self.ctx.read(&self.out, 0, rows.len()).unwrap();
        let next: Vec<u32> = self.ctx.read(&self.next_tokens, 0, rows.len()).unwrap();
        let ids: Vec<u32> = out.iter().map(|s| s.id).collect();
        assert_eq!(next, ids, "next_tokens holds each row's id");
        out
    }

    /// Row `r`'s `top` slots as the host reads them after [`run`](Self::run).
    fn top(&self, r: usize, n: usize) -> Vec<(u32, f32)> {
        let per_row = 2 * ops::sampling::TOP_SLOTS;
        let slots: Vec<u32> = self.ctx.read(&self.top, r * per_row, per_row).unwrap();
        ops::sampling::top_from_slots(&slots, n)
    }
}

fn row(
    temperature: f32,
    top_k: u32,
    top_p: f32,
    seed: u64,
    step: u32,
    logits_row: u32,
) -> SampleRow {
    SampleRow {
        temperature,
        top_k,
        top_p,
        seed_lo: seed as u32,
        seed_hi: (seed >> 32) as u32,
        step,
        logits_row,
        top_n: 0,
    }
}

/// Rows of `n` logits with planted ties at the maximum (inside one invocation's stride
/// and across invocations), -inf entries, a constant row and an all -inf row.
fn greedy_rows(n: usize) -> Vec<Vec<f32>> {
    let mut rows = Vec::new();
    let base = |s| rand_vec(n, s);
    // Ties at the max: the first is the answer.
    let mut r = base(1);
    for &i in &[
        n - 1,
        n / 2,
        3.min(n - 1),
        (3 + 256).min(n - 1),
        (n / 3 + 1).min(n - 1),
    ] {
        r[i] = 4.5;
    }
    rows.push(r);
    // Ties only among the last indices.
    let mut r = base(2);
    r[n - 1] = 2.0;
    r[n - 2] = 2.0;
    rows.push(r);
    // Every value equal: index 0.
    rows.push(vec![0.25; n]);
    // -inf every third entry, the max near the end.
    let mut r: Vec<f32> = base(3)
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            if i % 3 == 0 {
                f32::NEG_INFINITY
            } else {
                v * 8.0
            }
        })
        .collect();
    r[n - 2] = 9.0;
    rows.push(r);
    // All -inf: index 0, as argmax.
    rows.push(vec![f32::NEG_INFINITY; n]);
    // Plain random (24-bit values: long rows hold repeated values, a tie at the max may occur).
    rows.push(base(4).iter().map(|v| v * 30.0).collect());
    // All negative, max at 0 and tied at the end.
    let mut r: Vec<f32> = base(5).iter().map(|v| -100.0 - v.abs()).collect();
    r[0] = -1.0;
    r[n - 1] = -1.0;
    rows.push(r);
    rows
}

#[test]
fn greedy_is_bit_identical_to_argmax() {
    for ctx in contexts() {
        for n in [151_936usize, 1000, 77] {
            let rows = greedy_rows(n);
            let flat: Vec<f32> = rows.concat();
            let launch = Launch::new(&ctx, &flat, n, rows.len());
            let settings: Vec<SampleRow> = (0..rows.len())
                .map(|i| row(0.0, 0, 1.0, 0, 0, i as u32))
                .collect();
            let got = launch.run(&settings);
            for (i, (r, g)) in rows.iter().zip(&got).enumerate() {
                let want = argmax(r);
                assert_eq!(
                    g.id,
                    want,
                    "{} n={n} row {i}: got id {}, expected {want}",
                    path(&ctx),
                    g.id
                );
                let lp = log_prob(r, want);
                if lp.is_finite() {
                    assert!(
                        (g.logprob - lp).abs() <= 1e-4,
                        "{} n={n} row {i}: log-prob got {}, expected {lp}",
                        path(&ctx),
                        g.logprob
                    );
                }
            }
        }
    }
}

/// P(token) under the CPU sampler's rules (`Sampler::sample`): top-k logits, softmax at
/// temperature T, the smallest prefix by descending probability reaching top_p, renormalized.
fn exact_probs(logits: &[f32], t: f32, k: usize, p: f32) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    idx.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    if k > 0 {
        idx.truncate(k);
    }
    let mx = logits[idx[0]] as f64;
    let w: Vec<f64> = idx
        .iter()
        .map(|&i| ((logits[i] as f64 - mx) / t as f64).exp())
        .collect();
    let z: f64 = w.iter().sum();
    let mut keep = idx.len();
    if p < 1.0 {
        let mut acc = 0.0;
        keep = w
            .iter()
            .position(|&v| {
                acc += v / z;
                acc >= p as f64
            })
            .map_or(idx.len(), |i| i + 1);
    }
    let kept: f64 = w[..keep].iter().sum();
    let mut out = vec![0.0; logits.len()];
    for j in 0..keep {
        out[idx[j]] = w[j] / kept;
    }
    out
}

/// Pearson's chi-square of `counts` against `probs` (bins expecting < 5 pooled) and its
/// degrees of freedom.
fn chi_square(counts: &[u64], probs: &[f64]) -> (f64, usize) {
    let total: u64 = counts.iter().sum();
    let (mut chi2, mut bins) = (0.0, 0);
    let (mut pool_obs, mut pool_exp) = (0.0, 0.0);
    for (&c, &q) in counts.iter().zip(probs) {
        let e = q * total as f64;
        if e >= 5.0 {
            chi2 += (c as f64 - e).powi(2) / e;
            bins += 1;
        } else {
            pool_obs += c as f64;
            pool_exp += e;
        }
    }
    if pool_exp > 0.0 {
        chi2 += (pool_obs - pool_exp).powi(2) / pool_exp;
        bins += 1;
    }
    (chi2, bins - 1)
}

/// Chi-square value with upper tail ≈ 3e-7 (z = 5, Wilson–Hilferty): conservative.
fn chi_square_limit(df: usize) -> f64 {
    let d = df as f64;
    let a = 2.0 / (9.0 * d);
    d * (1.0 - a + 5.0 * a.sqrt()).powi(3)
}

#[test]
fn sampled_histogram_matches_the_cpu_samplers_distribution() {
    let n = 50;
    let logits: Vec<f32> = rand_vec(n, 77).iter().map(|v| v * 3.0).collect();
    let (rows_per_launch, launches) = (2048usize, 4u32);
    for ctx in contexts() {
        let launch = Launch::new(&ctx, &logits, n, rows_per_launch);
        for (j, (t, k, p)) in [(0.7f32, 0usize, 1.0f32), (1.0, 5, 1.0), (0.8, 20, 0.9)]
            .into_iter()
            .enumerate()
        {
            let probs = exact_probs(&logits, t, k, p);
            let mut counts = vec![0u64; n];
            for step in 0..launches {
                let settings: Vec<SampleRow> = (0..rows_per_launch)
                    .map(|i| row(t, k as u32, p, (j as u64 + 1) << 32 | i as u64, step, 0))
                    .collect();
                for (i, s) in launch.run(&settings).iter().enumerate() {
                    assert!(
                        probs[s.id as usize] > 0.0,
                        "{} T={t} k={k} p={p}: row {i} drew token {} outside the kept set",
                        path(&ctx),
                        s.id
                    );
                    counts[s.id as usize] += 1;
                }
            }
            let (chi2, df) = chi_square(&counts, &probs);
            let limit = chi_square_limit(df);
            eprintln!(
                "{} T={t} k={k} p={p}: chi-square {chi2:.1} on {df} df (limit {limit:.1})",
                path(&ctx)
            );
            assert!(chi2 < limit, "{} T={t} k={k} p={p}: chi-square {chi2:.1} on {df} df exceeds {limit:.1}; counts {counts:?}", path(&ctx));
            // The test has power: a neighbouring distribution is rejected.
            let k_wrong = if (1..10).contains(&k) { k + 1 } else { k };
            let (wrong, wdf) = chi_square(&counts, &exact_probs(&logits, t * 1.5, k_wrong, p));
            assert!(wrong > chi_square_limit(wdf), "{} T={t} k={k} p={p}: the test cannot tell T·1.5, k={k_wrong} apart (chi-square {wrong:.1})", path(&ctx));
        }
    }
}

#[test]
fn sampled_log_prob_and_draw_match_the_reference() {
    for ctx in contexts() {
        for n in [151_936usize, 1000, 77] {
            // Logits spread like a model's (a few tokens carry most of the mass).
            let rows: Vec<Vec<f32>> = (0..4)
                .map(|r| rand_vec(n, 10 + r).iter().map(|v| v * 12.0).collect())
                .collect();
            let flat = rows.concat();
            let settings: Vec<SampleRow> = [
                (1.0f32, 0u32, 1.0f32),
                (0.8, 40, 1.0),
                (1.0, 0, 0.9),
                (0.6, 50, 0.95),
                (1.5, 2, 1.0),
                (1.0, 1, 1.0),
            ]
            .iter()
            .enumerate()
            .flat_map(|(j, &(t, k, p))| {
                (0..rows.len()).map(move |r| row(t, k, p, 5 + j as u64, r as u32 * 3, r as u32))
            })
            .collect();
            let launch = Launch::new(&ctx, &flat, n, settings.len());
            let got = launch.run(&settings);
            let mut differ = 0;
            for (s, g) in settings.iter().zip(&got) {
                let logits = &rows[s.logits_row as usize];
                let lp = log_prob(logits, g.id);
                assert!(
                    (g.logprob - lp).abs() <= 1e-4,
                    "{} n={n} {s:?}: log-prob of {} got {}, expected {lp}",
                    path(&ctx),
                    g.id,
                    g.logprob
                );
                let want = ops::sampling::reference(logits, s);
                if want.id != g.id {
                    differ += 1;
                    eprintln!(
                        "{} n={n} {s:?}: id {} vs reference {}",
                        path(&ctx),
                        g.id,
                        want.id
                    );
                }
                if s.top_k == 1 {
                    assert_eq!(
                        g.id,
                        argmax(logits),
                        "{} n={n}: top_k 1 is greedy",
                        path(&ctx)
                    );
                }
            }
            // Only float rounding of the sums may move a draw across a token boundary.
            assert!(
                differ <= 1,
                "{} n={n}: {differ} of {} draws differ from the reference",
                path(&ctx),
                settings.len()
            );
        }
    }
}

#[test]
fn same_seed_and_step_give_the_same_token() {
    let n = 50;
    let logits: Vec<f32> = rand_vec(n, 3).iter().map(|v| v * 0.5).collect();
    for ctx in contexts() {
        let launch = Launch::new(&ctx, &logits, n, 512);
        let at = |step: u32| -> Vec<u32> {
            launch
                .run(
                    &(0..512)
                        .map(|i| row(1.0, 0, 1.0, 42 + i as u64, step, 0))
                        .collect::<Vec<_>>(),
                )
                .iter()
                .map(|s| s.id)
                .collect()
        };
        let (a, b, c) = (at(7), at(7), at(8));
        assert_eq!(a, b, "{}: same seeds and step, same tokens", path(&ctx));
        let same = a.iter().zip(&c).filter(|(x, y)| x == y).count();
        // Near-flat over 50 tokens: a new draw repeats the token ~1/50 of the time.
        assert!(
            same < 512 / 8,
            "{}: step 7 and 8 agree on {same} of 512 rows",
            path(&ctx)
        );
        // The row a stream sits in does not matter, only (seed, step).
        let moved: Vec<SampleRow> = (0..512)
            .rev()
            .map(|i| row(1.0, 0, 1.0, 42 + i as u64, 7, 0))
            .collect();
        let rev: Vec<u32> = launch.run(&moved).iter().rev().map(|s| s.id).collect();
        assert_eq!(
            a,
            rev,
            "{}: a stream's draw depends on its seed and step, not its row",
            path(&ctx)
        );
    }
}

/// A session over the tiny Qwen2 fixture with `n` streams forked from one prompt.
fn forked(
    engine: &edgereason::engine::Engine,
    n: usize,
) -> (edgereason::model::Session, Vec<edgereason::kv::StreamId>) {
    let mut s = engine.session().unwrap();
    let prompt: Vec<u32> = (0..13).map(|i| 20 + 7 * i).collect();
    s.forward(&prompt).unwrap();
    let kids = s.fork(s.main, n).unwrap();
    (s, kids)
}

/// The tiny Qwen2 fixture with a context of `n_ctx`.
fn tiny_qwen2(n_ctx: usize) -> edgereason::engine::Engine {
    let host = edgereason::loader::load_model(&common::fixture("tiny-qwen2")).unwrap();
    let options = edgereason::engine::EngineOptions {
        n_ctx,
        ..Default::default()
    };
    edgereason::engine::Engine::from_host(host, &options).unwrap()
}

#[test]
fn forward_rows_sampled_samples_the_rows_forward_rows_returns() {
    use edgereason::ops::sampling::RowSampling;
    use edgereason::sampling::SamplingParams;
    let engine = tiny_qwen2(128);
    let settings: Vec<RowSampling> = [(0.0f32, 0usize, 1.0f32), (1.0, 0, 1.0), (0.7, 20, 0.9)]
        .iter()
        .enumerate()
        .map(|(i, &(temperature, top_k, top_p))| RowSampling {
            params: SamplingParams {
                temperature,
                top_k,
                top_p,
                seed: 9 + i as u64,
            },
            step: 4,
            top_logprobs: [0, 3, 20][i],
        })
        .collect();
    let (mut a, kids_a) = forked(&engine, 3);
    let (mut b, kids_b) = forked(&engine, 3);
    for step in [[5u32, 77, 300], [42, 42, 9]] {
        let logits = a
            .forward_rows(
                &kids_a
                    .iter()
                    .zip(step)
                    .map(|(&k, t)| (k, t))
                    .collect::<Vec<_>>(),
            )
            .unwrap();
        let rows_b: Vec<_> = kids_b.iter().zip(step).map(|(&k, t)| (k, t)).collect();
        let submitted = b.submit_rows_sampled(&rows_b, &settings).unwrap();
        let draws = b.wait_draws(submitted).unwrap();
        let sampled: Vec<(u32, f32)> = draws.iter().map(|d| (d.id, d.logprob)).collect();
        for (d, (l, s)) in draws.iter().zip(logits.iter().zip(&settings)) {
            let want = ops::sampling::top_reference(l, s.top_logprobs as usize);
            let ids = |v: &[(u32, f32)]| v.iter().map(|e| e.0).collect::<Vec<_>>();
            assert_eq!(ids(&d.top), ids(&want), "the step's most likely tokens");
        }
        for (i, ((l, &(id, lp)), s)) in logits.iter().zip(&sampled).zip(&settings).enumerate() {
            let want = ops::sampling::reference(l, &s.row(0));
            assert_eq!(
                id, want.id,
                "row {i} ({:?}): sampled {id}, reference {}",
                s.params, want.id
            );
            assert!(
                (lp - log_prob(l, id)).abs() <= 1e-4,
                "row {i}: log-prob {lp} vs {}",
                log_prob(l, id)
            );
        }
        assert_eq!(sampled[0].0, argmax(&logits[0]), "greedy row");
    }
    // The first token of forked streams: from the prompt's logits left on the GPU.
    let mut c = engine.session().unwrap();
    let prompt: Vec<u32> = (0..13).map(|i| 20 + 7 * i).collect();
    let last = c.forward(&prompt).unwrap();
    let first = c.sample_last_logits(&settings).unwrap();
    for (&(id, _), s) in first.iter().zip(&settings) {
        assert_eq!(
            id,
            ops::sampling::reference(&last, &s.row(0)).id,
            "{:?}",
            s.params
        );
    }
}

#[test]
fn a_step_fed_the_last_steps_draws_on_the_gpu_equals_one_fed_by_the_host() {
    use edgereason::model::ForwardError;
    use edgereason::ops::sampling::RowSampling;
    use edgereason::sampling::SamplingParams;
    let engine = tiny_qwen2(128);
    let settings = |step: u32| -> Vec<RowSampling> {
        (0..3)
            .map(|i| RowSampling {
                params: SamplingParams {
                    temperature: [0.0, 1.0, 0.8][i],
                    top_k: 0,
                    top_p: [1.0, 1.0, 0.9][i],
                    seed: 5 + i as u64,
                },
                step,
                top_logprobs: 0,
            })
            .collect()
    };
    let rows = |kids: &[edgereason::kv::StreamId], toks: &[u32]| -> Vec<_> {
        kids.iter().copied().zip(toks.iter().copied()).collect()
    };
    // Host-fed: each step waits for the draws and feeds them back.
    let (mut a, kids_a) = forked(&engine, 3);
    let mut toks = vec![11u32, 12, 13];
    let mut host_fed = Vec::new();
    for step in 0..6 {
        let out = a
            .forward_rows_sampled(&rows(&kids_a, &toks), &settings(step))
            .unwrap();
        toks = out.iter().map(|d| d.0).collect();
        host_fed.push(out);
    }
    // GPU-fed: each step submitted before the last one's draws are read.
    let (mut b, kids_b) = forked(&engine, 3);
    let mut last = b
        .submit_rows_sampled(&rows(&kids_b, &[11, 12, 13]), &settings(0))
        .unwrap();
    let mut gpu_fed = Vec::new();
    for step in 1..6 {
        let next = b.submit_fed(&last, &settings(step)).unwrap();
        gpu_fed.push(b.wait_sampled(last).unwrap());
        last = next;
    }
    gpu_fed.push(b.wait_sampled(last).unwrap());
    assert_eq!(gpu_fed, host_fed, "draws, step by step");
    for (ka, kb) in kids_a.iter().zip(&kids_b) {
        assert_eq!(a.pool.len(*ka).unwrap(), b.pool.len(*kb).unwrap());
    }
    // A step fed ahead and taken back leaves the cache as if it never ran.
    let last = b
        .submit_rows_sampled(&rows(&kids_b, &toks), &settings(6))
        .unwrap();
    let ahead = b.submit_fed(&last, &settings(7)).unwrap();
    let want = b.wait_sampled(last).unwrap();
    drop(ahead);
    for &k in &kids_b {
        b.truncate(k, 1).unwrap();
    }
    let again = a
        .forward_rows_sampled(&rows(&kids_a, &toks), &settings(6))
        .unwrap();
    assert_eq!(again, want);
    let next: Vec<u32> = want.iter().map(|d| d.0).collect();
    assert_eq!(
        a.forward_rows_sampled(&rows(&kids_a, &next), &settings(7))
            .unwrap(),
        b.forward_rows_sampled(&rows(&kids_b, &next), &settings(7))
            .unwrap(),
        "the step after a truncation reads the same cache"
    );
    // Draws are only fed to the step right after the one that drew them.
    let first = b
        .submit_rows_sampled(&rows(&kids_b, &next), &settings(8))
        .unwrap();
    b.forward_rows(&rows(&kids_b, &next)).unwrap();
    assert!(matches!(
        b.submit_fed(&first, &settings(9)),
        Err(ForwardError::StaleDraws)
    ));
}

/// `edgereason run` on the tiny Qwen2 fixture, with `env`, as JSON.
fn run_json(args: &[&str], env: &[(&str, &str)]) -> serde_json::Value {
    let model = common::fixture("tiny-qwen2");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_edgereason"))
        .args([
            "run",
            "--model",
            model.to_str().unwrap(),
            "--raw",
            "The capital of France is",
            "--json",
        ])
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn greedy_generation_is_the_same_with_gpu_or_cpu_sampling() {
    let cpu = [("EDGEREASON_CPU_SAMPLING", "1")];
    let args = ["--max-tokens", "16"];
    let (gpu_out, cpu_out) = (run_json(&args, &[]), run_json(&args, &cpu));
    assert_eq!(gpu_out["tokens"], cpu_out["tokens"], "greedy tokens");
    let lp = |v: &serde_json::Value| v["logprob"].as_f64().unwrap();
    assert!(
        (lp(&gpu_out) - lp(&cpu_out)).abs() < 1e-3,
        "log-prob {} vs {}",
        lp(&gpu_out),
        lp(&cpu_out)
    );
    // Sampled best-of-3: each path reproducible; the paths draw from different RNGs.
    let sampled = [
        "--max-tokens",
        "12",
        "--temperature",
        "1",
        "--best-of",
        "3",
        "--seed",
        "5",
    ];
    let toks = |v: &serde_json::Value| {
        v["candidates"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["tokens"].clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        toks(&run_json(&sampled, &[])),
        toks(&run_json(&sampled, &[])),
        "GPU sampling reproduces"
    );
    assert_eq!(
        toks(&run_json(&sampled, &cpu)),
        toks(&run_json(&sampled, &cpu)),
        "CPU sampling reproduces"
    );
}

#[test]
fn ties_at_a_threshold_are_kept_and_edge_settings_hold() {
    let n = 77;
    // Ten logits tied at the top, the rest well below.
    let tied: Vec<usize> = (0..10).map(|i| 3 + 7 * i).collect();
    let mut logits: Vec<f32> = rand_vec(n, 8).iter().map(|v| v * 0.5 - 2.0).collect();
    tied.iter().for_each(|&i| logits[i] = 1.0);
    for ctx in contexts() {
        let launch = Launch::new(&ctx, &logits, n, 256);
        let draw = |t: f32, k: u32, p: f32| -> Vec<u32> {
            let rows: Vec<SampleRow> = (0..256).map(|i| row(t, k, p, i, 0, 0)).collect();
            launch.run(&rows).iter().map(|s| s.id).collect()
        };
        // top_k 3 keeps every token tied with the 3rd largest (documented), top_p 0 every
        // token tied at the max: all ten, none other.
        for (k, p) in [(3, 1.0), (0, 0.0), (2, 0.5)] {
            let ids = draw(1.0, k, p);
            assert!(
                ids.iter().all(|id| tied.contains(&(*id as usize))),
                "{} k={k} p={p}: {ids:?}",
                path(&ctx)
            );
            let distinct: std::collections::HashSet<_> = ids.iter().collect();
            assert!(
                distinct.len() >= 8,
                "{} k={k} p={p}: ties drawn evenly, got {distinct:?}",
                path(&ctx)
            );
        }
        // top_k ≥ n is all tokens; a tiny temperature is (nearly) greedy among the ties.
        assert_eq!(
            draw(1.0, 500, 1.0),
            draw(1.0, 0, 1.0),
            "{}: top_k past the vocabulary",
            path(&ctx)
        );
        assert!(
            draw(1e-6, 0, 1.0)
                .iter()
                .all(|id| tied.contains(&(*id as usize))),
            "{}: T = 1e-6",
            path(&ctx)
        );
    }
}

#[test]
fn the_most_likely_tokens_listed_beside_a_draw_are_the_top_of_the_logits() {
    // OpenAI's top_logprobs: each row asking for n gets the n largest logits with their
    // log-probs, most likely first, whatever it samples with; a row asking for none
    // leaves its slots alone. Awkward vocabularies (not multiples of the workgroup), -inf
    // entries, a vocabulary smaller than what is asked, and ties at the threshold.
    for ctx in contexts() {
        for n_vocab in [7usize, 1000, 50_257] {
            let mut logits = [
                rand_vec(n_vocab, 11),
                rand_vec(n_vocab, 12),
                rand_vec(n_vocab, 13),
            ];
            for (i, v) in logits[1].iter_mut().enumerate() {
                if i % 5 == 0 {
                    *v = f32::NEG_INFINITY;
                }
            }
            // Ties: the three largest equal, then two more equal.
            let top = n_vocab - 1;
            logits[2][top] = 9.0;
            logits[2][0] = 9.0;
            logits[2][n_vocab / 2] = 9.0;
            if n_vocab > 10 {
                logits[2][3] = 8.0;
                logits[2][n_vocab - 3] = 8.0;
            }
            let flat: Vec<f32> = logits.concat();
            let launch = Launch::new(&ctx, &flat, n_vocab, 3);
            let settings = [(0.0, 0, 1.0, 20), (0.8, 40, 0.9, 5), (1.0, 0, 1.0, 4)];
            let rows: Vec<SampleRow> = settings
                .iter()
                .enumerate()
                .map(|(i, &(t, k, p, n))| SampleRow {
                    top_n: n,
                    ..row(t, k, p, 7, 0, i as u32)
                })
                .collect();
            launch.run(&rows);
            for (i, (r, &(_, _, _, n))) in logits.iter().zip(&settings).enumerate() {
                let got = launch.top(i, n as usize);
                let want = ops::sampling::top_reference(r, n as usize);
                let ids = |v: &[(u32, f32)]| v.iter().map(|e| e.0).collect::<Vec<_>>();
                assert_eq!(ids(&got), ids(&want), "{} n={n_vocab} row {i}", path(&ctx));
                for (g, w) in got.iter().zip(&want) {
                    assert!(
                        (g.1 - w.1).abs() <= 1e-4 || (g.1 == w.1),
                        "{} n={n_vocab} row {i} token {}: log-prob {} vs {}",
                        path(&ctx),
                        g.0,
                        g.1,
                        w.1
                    );
                }
            }
        }
    }
}
