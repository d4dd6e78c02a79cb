//! `edgereason` CLI: a thin layer over the library (see `edgereason --help`).

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use edgereason::engine::{Engine, EngineOptions, GenerateParams};
use edgereason::sampling::SamplingParams;
use std::io::Write;

#[derive(Parser)]
#[command(name = "edgereason", version, about = "Int4 LLM inference on any wgpu GPU")]
struct Cli {
    /// Adapter index or name/backend substring (see `devices`); env EDGEREASON_DEVICE.
    #[arg(long, global = true, env = "EDGEREASON_DEVICE")]
    device: Option<String>,
    /// KV cache length (default: the model's, capped at 4096).
    #[arg(long, global = true, default_value_t = 0)]
    ctx: usize,
    /// Run every matrix at int4 (tensors the file stores at 5-8 bits are kept at int8 otherwise).
    #[arg(long, global = true)]
    int4_only: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Generate a reply (chat template applied unless --raw), streamed to stdout.
    Run {
        prompt: Option<String>,
        /// Registry name (`edgereason pull --list`) or a path (GGUF, HF dir, .safetensors).
        #[arg(long, default_value = "qwen2.5-0.5b")]
        model: String,
        #[arg(long)]
        raw: bool,
        #[arg(long)]
        system: Option<String>,
        #[arg(long, default_value_t = 256)]
        max_tokens: usize,
        #[arg(long, default_value_t = 0.0)]
        temperature: f32,
        #[arg(long, default_value_t = 0)]
        top_k: usize,
        #[arg(long, default_value_t = 1.0)]
        top_p: f32,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Print one JSON object instead of streaming.
        #[arg(long)]
        json: bool,
        /// Decode N candidates together over the shared prompt and vote on their answers.
        #[arg(long, default_value_t = 1)]
        best_of: usize,
        /// How candidates' answers are combined (majority; weighted comes with the verifier).
        #[arg(long, default_value = "majority", value_parser = ["majority"])]
        vote: String,
        /// Regex whose first group is a candidate's answer (default: \boxed{}, "answer is", last number).
        #[arg(long)]
        answer_regex: Option<String>,
    },
    /// Teacher-forced log-probs, mean NLL and perplexity of a text.
    Score {
        #[arg(long, default_value = "qwen2.5-0.5b")]
        model: String,
        #[arg(long)]
        text: String,
        #[arg(long)]
        json: bool,
    },
    /// Prefill/decode throughput, TTFT, memory and the per-kernel split.
    Bench {
        #[arg(long, default_value = "qwen2.5-0.5b")]
        model: String,
        #[arg(long, default_value_t = 128)]
        prompt_tokens: usize,
        #[arg(long, default_value_t = 32)]
        gen_tokens: usize,
        #[arg(long)]
        json: bool,
        /// Instead: batched decode step time for these stream counts over one shared prompt.
        #[arg(long, value_delimiter = ',')]
        streams: Option<Vec<usize>>,
        /// Instead: one layer's decode attention for this many streams over a shared prompt
        /// of --prompt-tokens tokens (--gen-tokens own tokens each): the shared-prefix pass
        /// against the per-stream kernel, over the shared cache and over copied KV.
        #[arg(long)]
        attention: Option<usize>,
    },
    /// Print a model's configuration and tensors.
    Inspect { model: String },
    /// List GPU adapters with backend, features and limits.
    Devices {
        #[arg(long)]
        json: bool,
    },
    /// Download a known model into the cache (or list them).
    Pull {
        name: Option<String>,
        #[arg(long)]
        list: bool,
    },
    /// Write the engine's pre-quantized int4 safetensors (no re-quantizing at start-up).
    Quantize { input: String, output: std::path::PathBuf },
}

/// The live view of `run --best-of N`: the last line's worth of each stream's text.
struct StreamsView {
    texts: Vec<String>,
    drawn: bool,
    width: usize,
}

impl StreamsView {
    fn new(n: usize) -> Self {
        let width = std::env::var("COLUMNS").ok().and_then(|c| c.parse().ok()).unwrap_or(100usize);
        StreamsView { texts: vec![String::new(); n], drawn: false, width: width.max(20) }
    }

    fn push(&mut self, stream: usize, text: &str) {
        self.texts[stream].push_str(text);
    }

    fn draw(&mut self) {
        let mut out = String::new();
        if self.drawn {
            out.push_str(&format!("\x1b[{}A", self.texts.len())); // back to the first line
        }
        for (i, t) in self.texts.iter().enumerate() {
            let flat: String = t.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
            let room = self.width - 8;
            let chars: Vec<char> = flat.chars().collect();
            let tail: String = chars[chars.len().saturating_sub(room)..].iter().collect();
            out.push_str(&format!("\r\x1b[2K[{i:>2}] {tail}\n"));
        }
        eprint!("{out}");
        self.drawn = true;
    }
}

fn load(model: &str, cli: &Cli) -> Result<Engine> {
    let opts = EngineOptions { device: cli.device.clone(), n_ctx: cli.ctx, progress: true, int4_only: cli.int4_only, ..Default::default() };
    Engine::load(model, &opts).with_context(|| format!("loading model '{model}'"))
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line: the context chain joined, no backtrace.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match &cli.cmd {
        Cmd::Run { prompt, model, raw, system, max_tokens, temperature, top_k, top_p, seed, json, best_of, vote: _, answer_regex } => {
            let engine = load(model, &cli)?;
            let prompt = prompt.clone().unwrap_or_else(|| "What is the capital of France? Answer in one sentence.".into());
            let text = if *raw { prompt } else { engine.chat_prompt(system.as_deref(), &prompt)? };
            let ids = engine.encode(&text)?;
            let params = GenerateParams {
                max_tokens: *max_tokens,
                sampling: SamplingParams { temperature: *temperature, top_k: *top_k, top_p: *top_p, seed: *seed },
                stop: vec![],
            };
            if *best_of > 1 {
                let vp = edgereason::sched::best_of_n::VoteParams {
                    answer_regex: answer_regex.as_deref().map(regex::Regex::new).transpose().context("--answer-regex")?,
                };
                // Live view on stderr (a terminal, not --json): one line per stream with the
                // tail of its text, redrawn after each batched step.
                let live = !*json && std::io::IsTerminal::is_terminal(&std::io::stderr());
                let mut view = StreamsView::new(*best_of);
                let mut run = edgereason::sched::best_of_n::Decoding::start(&engine, &ids, *best_of, &params)?;
                while !run.is_finished() {
                    for t in run.step()? {
                        view.push(t.stream, &t.text);
                    }
                    if live {
                        view.draw();
                    }
                }
                let out = run.finish(&vp);
                if *json {
                    let mut v = serde_json::to_value(&out)?;
                    v["device"] = serde_json::json!(engine.ctx.describe());
                    println!("{}", serde_json::to_string_pretty(&v)?);
                } else {
                    for c in &out.candidates {
                        println!("--- candidate {} ({} tokens, {}, logprob {:.2}, answer {:?})", c.index, c.tokens.len(), c.finish_reason, c.logprob, c.answer);
                        println!("{}", c.text.trim());
                    }
                    println!("=== answer: {} (votes: {:?})", out.answer.as_deref().unwrap_or("none"), out.votes);
                    eprintln!("[{} candidates, TTFT {:.0} ms, {:.2} tok/s over all streams, KV {:.1} MiB, {}]", best_of, out.ttft_ms, out.decode_tokens_per_s, out.kv_bytes_used as f64 / 1048576.0, engine.ctx.describe());
                }
                return Ok(());
            }
            let mut stdout = std::io::stdout();
            let out = engine.generate(&ids, &params, |_, piece| {
                if !*json {
                    let _ = write!(stdout, "{piece}");
                    let _ = stdout.flush();
                }
                true
            })?;
            if *json {
                let mut v = serde_json::to_value(&out)?;
                v["prompt_token_ids"] = serde_json::json!(ids);
                v["device"] = serde_json::json!(engine.ctx.describe());
                v["model"] = serde_json::json!(engine.source);
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!();
                eprintln!(
                    "[{} prompt tokens, TTFT {:.0} ms ({:.1} tok/s prefill), {} tokens at {:.2} tok/s, {}]",
                    out.prompt_tokens, out.ttft_ms, out.prefill_tokens_per_s, out.tokens.len(), out.decode_tokens_per_s, engine.ctx.describe()
                );
            }
        }
        Cmd::Score { model, text, json } => {
            let engine = load(model, &cli)?;
            let ids = engine.encode(text)?;
            let s = engine.score(&ids)?;
            if *json {
                println!("{}", serde_json::to_string(&s)?);
            } else {
                println!("{} tokens, mean NLL {:.4}, perplexity {:.3}", ids.len(), s.mean_nll, s.perplexity);
            }
        }
        Cmd::Bench { model, prompt_tokens, gen_tokens, json, streams, attention } => {
            let engine = load(model, &cli)?;
            if let Some(n) = attention {
                let c = &engine.model.config;
                let r = edgereason::bench::attention(&engine.ctx, (c.n_head, c.n_kv_head, c.head_dim), *n, *prompt_tokens, *gen_tokens, 10);
                if *json {
                    println!("{}", serde_json::to_string_pretty(&r)?);
                } else {
                    println!("{} / {model}: attention, {n} streams, {prompt_tokens}-token shared prompt + {gen_tokens} own tokens each ({} heads, {} KV heads, head_dim {})", r.device, r.n_head, r.n_kv_head, r.head_dim);
                    println!("  shared-prefix pass, shared cache   {:>9.3} ms", r.shared_prefix_ms);
                    println!("  per-stream kernel, shared cache    {:>9.3} ms ({:.2}x the shared-prefix pass)", r.per_stream_shared_cache_ms, r.per_stream_shared_cache_ms / r.shared_prefix_ms);
                    println!("  per-stream kernel, copied KV       {:>9.3} ms ({:.2}x the shared-prefix pass)", r.per_stream_copied_kv_ms, r.per_stream_copied_kv_ms / r.shared_prefix_ms);
                    println!("  KV held: {:.2} MiB shared, {:.2} MiB copied", r.kv_bytes_shared as f64 / 1048576.0, r.kv_bytes_copied as f64 / 1048576.0);
                }
                return Ok(());
            }
            if let Some(ns) = streams {
                let rows = edgereason::bench::streams(&engine, *prompt_tokens, *gen_tokens, ns)?;
                if *json {
                    println!("{}", serde_json::to_string_pretty(&rows)?);
                } else {
                    println!("{} / {model}: {prompt_tokens}-token shared prompt, {gen_tokens} steps", engine.ctx.describe());
                    let base = rows.first().map(|r| r.tokens_per_s).unwrap_or(1.0);
                    for r in &rows {
                        println!(
                            "  N={:<3} step {:>8.2} ms  {:>8.2} tok/s ({:.2}x N=1)  KV {:.1} MiB (unshared {:.1} MiB)",
                            r.streams, r.step_ms, r.tokens_per_s, r.tokens_per_s / base, r.kv_bytes_used as f64 / 1048576.0, r.kv_bytes_unshared as f64 / 1048576.0
                        );
                    }
                }
                return Ok(());
            }
            let r = edgereason::bench::run(&engine, model, *prompt_tokens, *gen_tokens)?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!("device        {}", r.device);
                println!("model         {}", r.model);
                println!("prefill       {:.1} tok/s ({} tokens, TTFT {:.0} ms; {:.0} ms cold, with pipeline compilation)", r.prefill_tokens_per_s, r.prompt_tokens, r.ttft_ms, r.cold_ttft_ms);
                println!("decode        {:.2} tok/s (median step {:.1} ms over {} tokens)", r.decode_tokens_per_s, r.decode_step_ms, r.gen_tokens);
                println!("gpu memory    {:.1} MiB (weights {:.1}, KV {:.1})", r.gpu_bytes as f64 / 1048576.0, r.weight_bytes as f64 / 1048576.0, r.kv_bytes as f64 / 1048576.0);
                println!(
                    "int4 GEMV     {}x{}: {:.2} ms = {:.2} GB/s; read kernel {:.2} GB/s; ratio {:.2}",
                    r.gemv.n, r.gemv.k, r.gemv.gemv_ms, r.gemv.gemv_gb_per_s, r.gemv.read_gb_per_s, r.gemv.ratio
                );
                let total: f64 = r.decode_kernel_ms.ms.values().sum();
                println!("decode step by kernel ({}, {total:.1} ms total):", r.decode_kernel_ms.source);
                let mut v: Vec<_> = r.decode_kernel_ms.ms.iter().collect();
                v.sort_by(|a, b| b.1.total_cmp(a.1));
                for (k, ms) in v {
                    println!("  {k:<12} {ms:>8.2} ms  {:>5.1}%", 100.0 * ms / total);
                }
            }
        }
        Cmd::Inspect { model } => {
            let path = edgereason::pull::resolve_model(model)?;
            let host = edgereason::loader::load_model(&path)?;
            println!("source  {}", host.source);
            println!("{}", serde_json::to_string_pretty(&host.config)?);
            println!("bos {:?} eos {:?} add_bos {} chat_template {}", host.bos_token_id, host.eos_token_ids, host.add_bos, host.chat_template.is_some());
            let mut names: Vec<_> = host.tensors.iter().collect();
            names.sort_by(|a, b| a.0.cmp(b.0));
            for (n, t) in names {
                let kind = match t.data {
                    edgereason::loader::TensorData::F32(_) => "f32",
                    edgereason::loader::TensorData::Q4(_) => "int4",
                    edgereason::loader::TensorData::Q8(_) => "int8",
                };
                println!("  {n:<32} {:?} {kind}", t.shape);
            }
        }
        Cmd::Devices { json } => {
            let list = edgereason::gpu::list_adapters();
            if *json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else if list.is_empty() {
                println!("{}", edgereason::gpu::GpuError::NoAdapter);
            } else {
                for a in list {
                    println!(
                        "{}: {} [{} {}] f16={} subgroups={} (size {}..{}) timestamps={} max_buffer={} MiB max_storage_binding={} MiB storage_buffers/stage={} workgroup_mem={} KiB",
                        a.index, a.name, a.backend, a.device_type, a.shader_f16, a.subgroups, a.subgroup_size[0], a.subgroup_size[1], a.timestamps,
                        a.max_buffer_size >> 20, a.max_storage_buffer_binding_size >> 20, a.max_storage_buffers_per_shader_stage, a.max_compute_workgroup_storage_size >> 10
                    );
                }
            }
        }
        Cmd::Pull { name, list } => {
            if *list || name.is_none() {
                for m in edgereason::pull::known_models() {
                    println!("{:<16} {}", m.name, m.description);
                }
            } else {
                let p = edgereason::pull::resolve_model(name.as_ref().unwrap())?;
                println!("{}", p.display());
            }
        }
        Cmd::Quantize { input, output } => {
            let path = edgereason::pull::resolve_model(input)?;
            let mut host = edgereason::loader::load_model(&path)?;
            host.quantize_matrices(|_| {});
            edgereason::loader::prequant::save_prequantized(&host, output)?;
            println!("wrote {}", output.display());
        }
    }
    Ok(())
}
