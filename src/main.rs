//! `edgereason` CLI: a thin layer over the library (see `edgereason --help`).

// As the library: no unwrap, expect or panic on an input path (src/lib.rs).
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::unreachable,
    clippy::todo,
    clippy::unimplemented
)]

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use edgereason::engine::{Engine, EngineOptions, GenerateParams};
use edgereason::sampling::SamplingParams;
use edgereason::sched::best_of_n::VoteParams;
use std::io::Write;

#[derive(Parser)]
#[command(
    name = "edgereason",
    version,
    about = "Int4 LLM inference on any wgpu GPU"
)]
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
    Run(RunArgs),
    /// Accuracy on a JSONL task file (`{"prompt", "answer"[, "difficulty"]}` per line), with
    /// the same adapter, reasoning, budget and best-of flags as `run`.
    Eval(EvalArgs),
    /// Teacher-forced log-probs, mean NLL and perplexity of a text.
    Score(ScoreArgs),
    /// Prefill/decode throughput, TTFT, memory and the per-kernel split.
    Bench(BenchArgs),
    /// Time the per-device kernel choices (k splits, slices, submissions, prefill path) on
    /// this device with `bench` and keep the fastest in its tuning file, which later runs
    /// read (an EDGEREASON_* variable still overrides; EDGEREASON_TUNING=0 ignores the file).
    Tune(TuneArgs),
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
    /// Write a model as the engine loads it: the engine's pre-quantized int4 safetensors (no
    /// re-quantizing at start-up), or, with an OUTPUT ending in .gguf, a GGUF file other
    /// engines read (int4 as Q4_1, int8 as Q8_0; no BPE merges: for benchmarks such as
    /// llama-bench on the same weights). INPUT may be `synthetic:<name>` (random weights in
    /// a registry model's shapes).
    Quantize {
        input: String,
        output: std::path::PathBuf,
    },
    /// OpenAI-compatible HTTP server with continuous batching (see README: Serving).
    Serve(ServeArgs),
    /// Interactive multi-turn chat on stdin: replies stream; earlier turns' KV is reused.
    /// Commands: /reset, /reasoning on|off|auto, /quit.
    Chat(ChatArgs),
}

/// `run`'s flags.
#[derive(clap::Args)]
struct RunArgs {
    /// The prompt; `-` (or none, with stdin a pipe) reads it from stdin.
    prompt: Option<String>,
    /// Registry name (`edgereason pull --list`) or a path (GGUF, HF dir, .safetensors).
    #[arg(long, default_value = "qwen2.5-coder-0.5b")]
    model: String,
    /// Feed the prompt as it is, without the chat template.
    #[arg(long)]
    raw: bool,
    /// System message for the chat template.
    #[arg(long, conflicts_with = "raw")]
    system: Option<String>,
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Print one JSON object instead of streaming.
    #[arg(long)]
    json: bool,
    /// Decode N candidates together over the shared prompt and vote on their answers.
    #[arg(long, default_value_t = 1)]
    best_of: usize,
    /// Regex whose first group is a candidate's answer (default: \boxed{}, "answer is", last number).
    #[arg(long)]
    answer_regex: Option<String>,
    #[command(flatten)]
    reasoning: ReasoningArgs,
}

/// `eval`'s flags.
#[derive(clap::Args)]
struct EvalArgs {
    #[arg(long)]
    tasks: std::path::PathBuf,
    #[arg(long, default_value = "qwen2.5-coder-0.5b")]
    model: String,
    /// Evaluate only the first N tasks.
    #[arg(long)]
    limit: Option<usize>,
    #[arg(long, default_value_t = 512)]
    max_tokens: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[arg(long, default_value_t = 1)]
    best_of: usize,
    #[arg(long)]
    answer_regex: Option<String>,
    #[arg(long)]
    json: bool,
    /// Tasks decoded at once (continuous batching over one session). A batched step may
    /// add its sums in another order, so near-tied tokens can differ from --parallel 1's.
    #[arg(long, default_value_t = 1)]
    parallel: usize,
    #[command(flatten)]
    reasoning: ReasoningArgs,
}

/// `score`'s flags.
#[derive(clap::Args)]
struct ScoreArgs {
    #[arg(long, default_value = "qwen2.5-coder-0.5b")]
    model: String,
    #[arg(long)]
    text: String,
    #[arg(long)]
    json: bool,
    /// Score with this PEFT LoRA adapter (folder) on the tokens after --prompt-len.
    #[arg(long)]
    adapter: Option<std::path::PathBuf>,
    /// Tokens that form the prompt, run as their own prefill by the base model (masked
    /// LoRA); the rest with the adapter, if any.
    #[arg(long, default_value_t = 0)]
    prompt_len: usize,
}

/// `bench`'s flags.
#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("mode").multiple(false).args(
    ["streams", "attention", "lora_ranks", "adapter_ttft", "prefill_matmul"]
)))]
struct BenchArgs {
    #[arg(long, default_value = "qwen2.5-coder-0.5b")]
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
    /// Instead: decode step with a random LoRA of each rank on all seven projections, fused
    /// and as separate passes, against the base model.
    #[arg(long, value_delimiter = ',')]
    lora_ranks: Option<Vec<usize>>,
    /// Instead: TTFT with the switcher-chosen adapter over the shared base prompt KV against
    /// re-encoding the prompt with the adapter (random adapter of --lora-rank).
    #[arg(long)]
    adapter_ttft: bool,
    #[arg(long, default_value_t = 16)]
    lora_rank: usize,
    /// Instead: prefill-sized matmuls of this many rows in the model's gate|up and down
    /// shapes, the int8 path against the f32 GEMM with each --gemm-tiles tile (GFLOP/s).
    #[arg(long)]
    prefill_matmul: Option<usize>,
    /// Register tiles (ROWSxCOLS: rows x quads of 4 columns) for --prefill-matmul (on GPUs,
    /// tiles over 16 accumulators are skipped: see `prefill_gemm::max_tile_area`).
    #[arg(long, value_delimiter = ',', default_value = "8x2,4x2,16x2,16x4")]
    gemm_tiles: Vec<String>,
    /// Repetitions for --adapter-ttft and --prefill-matmul (median).
    #[arg(long, default_value_t = 3)]
    reps: usize,
}

/// `tune`'s flags.
#[derive(clap::Args)]
struct TuneArgs {
    #[arg(long, default_value = "qwen2.5-coder-0.5b")]
    model: String,
    #[arg(long, default_value_t = 512)]
    prompt_tokens: usize,
    #[arg(long, default_value_t = 64)]
    gen_tokens: usize,
    /// Trials per candidate (alternating); the median decides.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Measure and print, but leave the tuning file as it is.
    #[arg(long)]
    dry_run: bool,
    #[arg(long)]
    json: bool,
}

/// `chat`'s flags.
#[derive(clap::Args)]
struct ChatArgs {
    #[arg(long, default_value = "qwen2.5-coder-0.5b")]
    model: String,
    /// System message for the chat template.
    #[arg(long)]
    system: Option<String>,
    #[arg(long, default_value_t = 512)]
    max_tokens: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    reasoning: ReasoningArgs,
}

/// `serve`: where to listen, how many streams and requests, which adapters and heads.
#[derive(clap::Args, Clone, Debug)]
struct ServeArgs {
    #[arg(long, default_value = "qwen2.5-coder-0.5b")]
    model: String,
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port (0: any free one; the chosen address is printed).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Candidate streams decoded per step at most (all requests together).
    #[arg(long, default_value_t = 16)]
    max_streams: usize,
    /// Requests waiting beyond the running ones; more get 429 with Retry-After.
    #[arg(long, default_value_t = 64)]
    max_queue: usize,
    /// Largest `n` a request may ask for.
    #[arg(long, default_value_t = 16)]
    max_n: usize,
    /// KV cache slots shared by all streams and the prefix cache.
    #[arg(long, default_value_t = 16384)]
    kv_tokens: usize,
    /// max_tokens of requests that give none (capped by the context left).
    #[arg(long, default_value_t = 512)]
    max_tokens: usize,
    /// Require `Authorization: Bearer <KEY>` (env EDGEREASON_API_KEY).
    #[arg(long, env = "EDGEREASON_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Do not keep earlier prompts' KV blocks for later requests.
    #[arg(long)]
    no_prefix_cache: bool,
    /// Do not build the kernels' variants while idle (each is then built by the first
    /// step that needs it: for measuring the stall).
    #[arg(long)]
    no_warm_up: bool,
    /// Extra LoRA adapter as NAME=PEFT_DIR (repeatable); requests pick it with "adapter".
    #[arg(long = "adapter", value_name = "NAME=DIR")]
    adapters: Vec<String>,
    /// Do not load adapters/<model>/ (reasoning, reasoning-budget, switcher, verifier).
    #[arg(long)]
    no_default_adapters: bool,
}

/// The live view of `run --best-of N`: the last line's worth of each stream's text.
struct StreamsView {
    texts: Vec<String>,
    drawn: bool,
    width: usize,
}

impl StreamsView {
    fn new(n: usize) -> Self {
        let width = std::env::var("COLUMNS")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(100usize);
        StreamsView {
            texts: vec![String::new(); n],
            drawn: false,
            width: width.max(20),
        }
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
            let flat: String = t
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
            let room = self.width - 8;
            let chars: Vec<char> = flat.chars().collect();
            let tail: String = chars[chars.len().saturating_sub(room)..].iter().collect();
            out.push_str(&format!("\r\x1b[2K[{i:>2}] {tail}\n"));
        }
        eprint!("{out}");
        self.drawn = true;
    }
}

/// Sampling flags `run` and `eval` share.
#[derive(clap::Args, Clone, Debug)]
struct SamplingArgs {
    /// Softmax temperature; 0 = greedy. Default: 0 for one candidate, and
    /// BEST_OF_TEMPERATURE (0.8) with --best-of > 1 (N greedy streams would be identical).
    #[arg(long)]
    temperature: Option<f32>,
    /// Keep the k most likely tokens; 0 = off (every token).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches p, in (0, 1]; 1 = off.
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Seed of the draws; candidate i of --best-of uses seed + i.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// Temperature of --best-of > 1 when none is given: the paper's sampling temperature for
/// parallel candidates.
const BEST_OF_TEMPERATURE: f32 = 0.8;

impl SamplingArgs {
    /// The settings for `best_of` candidates; greedy with several is refused.
    fn params(&self, best_of: usize) -> Result<SamplingParams> {
        let default = if best_of > 1 {
            BEST_OF_TEMPERATURE
        } else {
            0.0
        };
        let params = SamplingParams {
            temperature: self.temperature.unwrap_or(default),
            top_k: self.top_k,
            top_p: self.top_p,
            seed: self.seed,
        };
        params.validate()?;
        if best_of > 1 && params.temperature == 0.0 {
            anyhow::bail!("--best-of {best_of} with --temperature 0 decodes {best_of} identical greedy streams: give a temperature > 0 (default {BEST_OF_TEMPERATURE})");
        }
        Ok(params)
    }
}

/// Adapters, heads, budget and vote: the flags `run` (and `eval`) share.
#[derive(clap::Args, Clone, Debug)]
struct ReasoningArgs {
    /// Reasoning LoRA adapter (PEFT folder). Default: adapters/<model>/reasoning if present,
    /// or with --budget its budget-trained version adapters/<model>/reasoning-budget.
    #[arg(long)]
    adapter: Option<std::path::PathBuf>,
    /// auto: the switcher head decides per prompt (on if there is no switcher); on; off.
    #[arg(long, default_value = "auto", value_parser = ["auto", "on", "off"])]
    reasoning: String,
    /// Switcher head. Default: adapters/<model>/switcher.safetensors if present.
    #[arg(long)]
    switcher: Option<std::path::PathBuf>,
    /// Override the switcher's threshold (probability).
    #[arg(long)]
    switch_threshold: Option<f32>,
    /// Verifier head. Default: adapters/<model>/verifier.safetensors if present.
    #[arg(long)]
    verifier: Option<std::path::PathBuf>,
    /// majority, or weighted by the verifier's scores.
    #[arg(long, default_value = "majority", value_parser = ["majority", "weighted"])]
    vote: String,
    /// Cap on thinking tokens; at the cap the end of thinking and --force are injected.
    #[arg(long)]
    budget: Option<usize>,
    /// Tokens allowed for the answer after forcing (or after the reasoning closes).
    #[arg(long, default_value_t = 64, requires = "budget")]
    answer_tokens: usize,
    /// The answer-forcing text injected at the budget.
    #[arg(long, default_value = "</think>\n\nFinal answer:", requires = "budget")]
    force: String,
    /// State the budget in the prompt, as the budget-trained adapters expect.
    #[arg(long, requires = "budget")]
    state_budget: bool,
    /// Apply the adapter to the prompt as well (unmasked; for comparison).
    #[arg(long)]
    adapter_on_prompt: bool,
    /// Text fed at the start of the reply when reasoning is on ("" for none).
    #[arg(long, default_value = "<think>\n")]
    think_prefix: String,
}

impl ReasoningArgs {
    /// Load the adapter and heads into `engine` (explicit paths, else the model's defaults)
    /// and say what to generate and how to vote.
    fn params(
        &self,
        engine: &Engine,
        model: &str,
        max_tokens: usize,
        sampling: SamplingParams,
        answer_regex: Option<&str>,
    ) -> Result<(GenerateParams, VoteParams)> {
        let files = ModelFiles::of(model);
        let d = engine.model.config.n_embd;
        let reasoning = self.reasoning_mode(engine, &files, d)?;
        let verifier = self.verifier(&files, d)?;
        let params = GenerateParams {
            max_tokens,
            sampling,
            reasoning,
            adapter_on_prompt: self.adapter_on_prompt,
            budget: self.budget(),
            think_prefix: self.think_prefix.replace("\\n", "\n"),
            ..Default::default()
        };
        let vote = VoteParams {
            answer_regex: answer_regex
                .map(regex::Regex::new)
                .transpose()
                .context("--answer-regex")?,
            verifier,
            weighted: self.vote == "weighted",
        };
        Ok((params, vote))
    }

    /// Whether and how the reasoning adapter decodes: loads it (and the switcher head for
    /// `--reasoning auto`) into `engine`.
    fn reasoning_mode(
        &self,
        engine: &Engine,
        files: &ModelFiles,
        d: usize,
    ) -> Result<edgereason::engine::Reasoning> {
        use edgereason::engine::Reasoning;
        let model = files.model;
        let adapter = match self.budget {
            Some(_) => files
                .pick(&self.adapter, "reasoning-budget")
                .or_else(|| files.pick(&None, "reasoning")),
            None => files.pick(&self.adapter, "reasoning"),
        };
        match (self.reasoning.as_str(), adapter) {
            ("off", _) | (_, None) => {
                if self.reasoning == "on" {
                    anyhow::bail!(
                        "--reasoning on needs --adapter (no adapters/{model}/reasoning either)"
                    );
                }
                Ok(Reasoning::Off)
            }
            (mode, Some(path)) => {
                engine
                    .load_adapter("reasoning", &path)
                    .with_context(|| format!("--adapter {}", path.display()))?;
                eprintln!("reasoning adapter: {}", path.display());
                self.reasoning_with_adapter(
                    mode,
                    files.pick(&self.switcher, "switcher.safetensors"),
                    d,
                )
            }
        }
    }

    /// With the reasoning adapter loaded: the switcher head at `switcher` decides per
    /// prompt under `--reasoning auto`; without one (or under `on`) it always decodes.
    fn reasoning_with_adapter(
        &self,
        mode: &str,
        switcher: Option<std::path::PathBuf>,
        d: usize,
    ) -> Result<edgereason::engine::Reasoning> {
        use edgereason::adapters::Switcher;
        use edgereason::engine::Reasoning;
        Ok(match (mode, switcher) {
            ("auto", Some(sw)) => {
                let mut s = Switcher::load(&sw, d)?;
                if let Some(t) = self.switch_threshold {
                    s.threshold = t;
                }
                eprintln!("switcher: {} (threshold {:.2})", sw.display(), s.threshold);
                Reasoning::Auto {
                    adapter: "reasoning".into(),
                    switcher: std::sync::Arc::new(s),
                }
            }
            (m, _) => {
                if m == "auto" {
                    eprintln!("no switcher head: --reasoning auto means on (--reasoning off to decode with the base model)");
                }
                Reasoning::On {
                    adapter: "reasoning".into(),
                }
            }
        })
    }

    /// The verifier head, if there is one (`--vote weighted` needs it).
    fn verifier(
        &self,
        files: &ModelFiles,
        d: usize,
    ) -> Result<Option<std::sync::Arc<edgereason::adapters::Verifier>>> {
        use edgereason::adapters::Verifier;
        let model = files.model;
        Ok(match files.pick(&self.verifier, "verifier.safetensors") {
            Some(p) => {
                eprintln!("verifier: {}", p.display());
                Some(std::sync::Arc::new(Verifier::load(&p, d)?))
            }
            None if self.vote == "weighted" => anyhow::bail!("--vote weighted needs --verifier (no adapters/{model}/verifier.safetensors either)"),
            None => None,
        })
    }

    /// Budget forcing, with `--budget`.
    fn budget(&self) -> Option<edgereason::engine::Budget> {
        use edgereason::engine::Budget;
        self.budget.map(|t| Budget {
            thinking_tokens: t,
            force: self.force.replace("\\n", "\n"),
            answer_tokens: self.answer_tokens,
            ..Budget::new(t)
        })
    }

    /// The user message with the budget stated, if asked.
    fn user_message(&self, prompt: &str) -> String {
        match (self.state_budget, self.budget) {
            (true, Some(b)) => format!("{prompt}{}", edgereason::engine::budget_statement(b)),
            _ => prompt.to_string(),
        }
    }
}

/// A model's name and its default adapter folder (adapters/<model>), if it has one.
struct ModelFiles<'a> {
    model: &'a str,
    defaults: Option<std::path::PathBuf>,
}

impl<'a> ModelFiles<'a> {
    fn of(model: &'a str) -> Self {
        ModelFiles {
            model,
            defaults: edgereason::adapters::default_dir(model),
        }
    }

    /// The explicit path, else `name` in the default folder if it exists there.
    fn pick(
        &self,
        explicit: &Option<std::path::PathBuf>,
        name: &str,
    ) -> Option<std::path::PathBuf> {
        explicit.clone().or_else(|| {
            self.defaults
                .as_ref()
                .map(|d| d.join(name))
                .filter(|p| p.exists())
        })
    }
}

fn load(model: &str, cli: &Cli) -> Result<Engine> {
    let opts = EngineOptions {
        device: cli.device.clone(),
        n_ctx: cli.ctx,
        progress: true,
        int4_only: cli.int4_only,
        ..Default::default()
    };
    Engine::load(model, &opts).with_context(|| format!("loading model '{model}'"))
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", edgereason::error_line(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// Load the model and its adapters and heads, start the scheduler, serve until Ctrl-C.
fn serve(a: &ServeArgs, cli: &Cli) -> Result<()> {
    use edgereason::adapters::{default_dir, Switcher, Verifier};
    use edgereason::sched::serving::{Scheduler, SchedulerOptions};
    use edgereason::server::{openai::ServingDefaults, ServerState};
    use std::sync::Arc;
    let engine = load(&a.model, cli)?;
    let d = engine.model.config.n_embd;
    let mut defaults = ServingDefaults {
        max_tokens: a.max_tokens,
        n_ctx: engine.n_ctx(),
        ..Default::default()
    };
    let dir = (!a.no_default_adapters)
        .then(|| default_dir(&a.model))
        .flatten();
    let mut named: Vec<(String, std::path::PathBuf)> = Vec::new();
    if let Some(dir) = &dir {
        for n in ["reasoning", "reasoning-budget"] {
            if dir.join(n).exists() {
                named.push((n.into(), dir.join(n)));
            }
        }
        let sw = dir.join("switcher.safetensors");
        defaults.switcher = sw
            .exists()
            .then(|| Switcher::load(&sw, d))
            .transpose()?
            .map(Arc::new);
        let vf = dir.join("verifier.safetensors");
        defaults.verifier = vf
            .exists()
            .then(|| Verifier::load(&vf, d))
            .transpose()?
            .map(Arc::new);
    }
    for spec in &a.adapters {
        let (n, p) = spec
            .split_once('=')
            .with_context(|| format!("--adapter {spec}: expected NAME=DIR"))?;
        named.push((n.into(), p.into()));
    }
    for (n, p) in &named {
        engine
            .load_adapter(n, p)
            .with_context(|| format!("adapter {n} ({})", p.display()))?;
        eprintln!("adapter {n}: {}", p.display());
    }
    for (what, on) in [
        ("switcher", defaults.switcher.is_some()),
        ("verifier", defaults.verifier.is_some()),
    ] {
        if let (true, Some(dir)) = (on, &dir) {
            eprintln!("{what}: {}", dir.display());
        }
    }
    defaults.adapters = engine.adapter_names();
    let options = SchedulerOptions {
        max_streams: a.max_streams,
        max_queue: a.max_queue,
        max_n: a.max_n,
        kv_tokens: a.kv_tokens,
        prefix_cache: !a.no_prefix_cache,
        warm_up: !a.no_warm_up,
        ..Default::default()
    };
    let scheduler = Scheduler::start(Arc::new(engine), options)?;
    let state = Arc::new(ServerState::new(
        scheduler,
        defaults,
        &a.model,
        a.api_key.clone(),
    ));
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind((a.host.as_str(), a.port))
            .await
            .with_context(|| format!("binding {}:{}", a.host, a.port))?;
        eprintln!("serving {} on http://{}", a.model, listener.local_addr()?);
        edgereason::server::serve(state, listener).await
    })
}

/// The prompt: the argument; `-`, or no argument with stdin not a terminal, reads stdin;
/// else a sample question.
fn prompt_text(arg: Option<&str>) -> Result<String> {
    let piped = !std::io::IsTerminal::is_terminal(&std::io::stdin());
    match arg {
        Some("-") => read_stdin(),
        None if piped => read_stdin(),
        Some(p) => Ok(p.to_string()),
        None => Ok("What is the capital of France? Answer in one sentence.".into()),
    }
}

fn read_stdin() -> Result<String> {
    let mut s = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
        .context("reading the prompt from stdin")?;
    if s.trim().is_empty() {
        anyhow::bail!("the prompt on stdin is empty");
    }
    Ok(s.trim_end_matches('\n').to_string())
}

/// `chat`: a conversation through the scheduler, whose prefix cache keeps each turn's KV
/// blocks, so the next turn encodes only what is new (and the last partial block).
fn chat(
    model: &str,
    system: Option<&str>,
    params: edgereason::engine::GenerateParams,
    modes: ChatModes,
    engine: Engine,
) -> Result<()> {
    use edgereason::loader::chat_template::ChatMessage;
    use edgereason::sched::serving::{Scheduler, SchedulerOptions};
    use std::io::BufRead;
    let engine = std::sync::Arc::new(engine);
    let sched = Scheduler::start(
        engine.clone(),
        SchedulerOptions {
            max_streams: 1,
            ..Default::default()
        },
    )?;
    let mut params = params;
    let mut history: Vec<ChatMessage> = system
        .map(|s| ChatMessage::new("system", s))
        .into_iter()
        .collect();
    let first = history.clone();
    eprintln!(
        "chat with {model} on {} (/reset, /reasoning on|off|auto, /quit)",
        engine.ctx.describe()
    );
    let stdin = std::io::stdin();
    loop {
        eprint!("> ");
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            return Ok(());
        }
        let line = line.trim();
        match line {
            "" => continue,
            "/quit" | "/exit" => return Ok(()),
            "/reset" => {
                history = first.clone();
                eprintln!("[history cleared]");
                continue;
            }
            l if l.starts_with("/reasoning") => {
                match modes.pick(l.trim_start_matches("/reasoning").trim()) {
                    Ok(r) => params.reasoning = r,
                    Err(e) => eprintln!("{e}"),
                }
                continue;
            }
            _ => {}
        }
        history.push(ChatMessage::new("user", line));
        let ids = engine.encode(&engine.chat(&history)?)?;
        let limit = engine.n_ctx().saturating_sub(ids.len());
        if limit == 0 {
            eprintln!("[the conversation fills the context: /reset]");
            history.pop();
            continue;
        }
        let turn = edgereason::engine::GenerateParams {
            max_tokens: params.max_tokens.min(limit),
            ..params.clone()
        };
        let reply = chat_turn(&sched, ids, turn)?;
        history.push(ChatMessage::new("assistant", reply));
    }
}

/// One reply of `chat`: its tokens printed as they come, then a line of figures.
fn chat_turn(
    sched: &edgereason::sched::serving::Scheduler,
    ids: Vec<u32>,
    params: edgereason::engine::GenerateParams,
) -> Result<String> {
    use edgereason::sched::serving::{Event, Request};
    let mut sub = sched
        .submit(Request::new(ids, params))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut cached = 0;
    let mut stdout = std::io::stdout();
    while let Some(ev) = sub.events.blocking_recv() {
        match ev {
            Event::Started { cached_tokens, .. } => cached = cached_tokens,
            Event::Token { text, .. } => {
                let _ = write!(stdout, "{text}");
                let _ = stdout.flush();
            }
            Event::Failed(e) => anyhow::bail!(e),
            Event::Done(out) => {
                let c = &out.candidates[0];
                println!();
                eprintln!("[{} prompt tokens ({cached} reused), TTFT {:.0} ms, {} tokens at {:.2} tok/s, reasoning {}]", out.prompt_tokens, out.ttft_ms, c.tokens.len(), out.decode_tokens_per_s, if out.reasoning { "on" } else { "off" });
                return Ok(c.text.clone());
            }
        }
    }
    anyhow::bail!("the scheduler stopped")
}

/// What `/reasoning on|off|auto` switches between in `chat`.
struct ChatModes {
    adapter: Option<String>,
    switcher: Option<std::sync::Arc<edgereason::adapters::Switcher>>,
}

impl ChatModes {
    fn pick(&self, mode: &str) -> Result<edgereason::engine::Reasoning> {
        use edgereason::engine::Reasoning;
        match (mode, &self.adapter, &self.switcher) {
            ("off", _, _) => Ok(Reasoning::Off),
            ("on", Some(a), _) => Ok(Reasoning::On { adapter: a.clone() }),
            ("auto", Some(a), Some(sw)) => Ok(Reasoning::Auto {
                adapter: a.clone(),
                switcher: sw.clone(),
            }),
            ("auto", Some(_), None) => {
                anyhow::bail!("no switcher head loaded: /reasoning on or off")
            }
            ("on" | "auto", None, _) => {
                anyhow::bail!("no reasoning adapter loaded (--adapter DIR)")
            }
            _ => anyhow::bail!("/reasoning on|off|auto"),
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match &cli.cmd {
        Cmd::Serve(a) => serve(a, &cli)?,
        Cmd::Chat(a) => chat_cmd(a, &cli)?,
        Cmd::Run(a) => run_prompt(a, &cli)?,
        Cmd::Eval(a) => eval_tasks(a, &cli)?,
        Cmd::Score(a) => score_text(a, &cli)?,
        Cmd::Bench(a) => bench(a, &cli)?,
        Cmd::Tune(a) => tune(a, &cli)?,
        Cmd::Inspect { model } => inspect(model)?,
        Cmd::Devices { json } => devices(*json)?,
        Cmd::Pull { name, list } => match name.as_ref().filter(|_| !*list) {
            None => {
                for m in edgereason::pull::known_models() {
                    let also = match m.aliases {
                        [] => String::new(),
                        a => format!(" (also: {})", a.join(", ")),
                    };
                    println!("{:<20} {}{also}", m.name, m.description);
                }
            }
            Some(name) => {
                let p = edgereason::pull::resolve_model(name)?;
                println!("{}", p.display());
            }
        },
        Cmd::Quantize { input, output } => {
            let mut host = match edgereason::loader::synthetic::synthetic_model(input) {
                Some(host) => host,
                None => edgereason::loader::load_model(&edgereason::pull::resolve_model(input)?)?,
            };
            host.quantize_matrices(|_| {});
            if output
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
            {
                edgereason::loader::gguf_writer::write_model(&host, output)?;
            } else {
                edgereason::loader::prequant::save_prequantized(&host, output)?;
            }
            println!("wrote {}", output.display());
        }
    }
    Ok(())
}

/// `inspect`: a model's configuration and tensors.
fn inspect(model: &str) -> Result<()> {
    let path = edgereason::pull::resolve_model(model)?;
    let host = edgereason::loader::load_model(&path)?;
    println!("source  {}", host.source);
    println!("{}", serde_json::to_string_pretty(&host.config)?);
    println!(
        "bos {:?} eos {:?} add_bos {} chat_template {}",
        host.bos_token_id,
        host.eos_token_ids,
        host.add_bos,
        host.chat_template.is_some()
    );
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
    Ok(())
}

/// `devices`: the GPU adapters wgpu finds.
fn devices(json: bool) -> Result<()> {
    let list = edgereason::gpu::list_adapters();
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
    } else if list.is_empty() {
        println!("{}", edgereason::gpu::GpuError::NoAdapter);
    } else {
        for a in list {
            println!(
                "{}: {} [{} {}] f16={} subgroups={} (size {}..{}) timestamps={} pipeline_cache={} max_buffer={} MiB max_storage_binding={} MiB storage_buffers/stage={} workgroup_mem={} KiB{}",
                a.index, a.name, a.backend, a.device_type, a.shader_f16, a.subgroups, a.subgroup_size[0], a.subgroup_size[1], a.timestamps, a.pipeline_cache,
                a.max_buffer_size >> 20, a.max_storage_buffer_binding_size >> 20, a.max_storage_buffers_per_shader_stage, a.max_compute_workgroup_storage_size >> 10,
                if a.cooperative_matrix.is_empty() { String::new() } else { format!(" cooperative_matrix=[{}]", a.cooperative_matrix.join(", ")) }
            );
        }
    }
    Ok(())
}

fn run_prompt(a: &RunArgs, cli: &Cli) -> Result<()> {
    let RunArgs {
        prompt,
        model,
        raw,
        system,
        max_tokens,
        sampling,
        json,
        best_of,
        answer_regex,
        reasoning,
        ..
    } = a;
    let sampling = sampling.params(*best_of)?; // bad values fail before the load
    let engine = load(model, cli)?;
    let (params, vp) = reasoning.params(
        &engine,
        model,
        *max_tokens,
        sampling,
        answer_regex.as_deref(),
    )?;
    let prompt = prompt_text(prompt.as_deref())?;
    let user = reasoning.user_message(&prompt);
    let text = if *raw {
        user
    } else {
        engine.chat_prompt(system.as_deref(), &user)?
    };
    let ids = engine.encode(&text)?;
    let n = (*best_of).max(1);
    // Live view (not --json): one stream goes to stdout as it comes; several get one
    // line each on stderr (a terminal), redrawn after each batched step.
    let live = !*json && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut view = StreamsView::new(n);
    let mut stdout = std::io::stdout();
    let mut run = edgereason::sched::best_of_n::Decoding::start(&engine, &ids, n, &params)?;
    while !run.is_finished() {
        for t in run.step()? {
            if n == 1 && !*json {
                let _ = write!(stdout, "{}", t.text);
                let _ = stdout.flush();
            }
            view.push(t.stream, &t.text);
        }
        if live && n > 1 {
            view.draw();
        }
    }
    let out = run.finish(&vp)?;
    if *json {
        return print_run_json(&engine, &ids, &out);
    }
    print_run_summary(&engine, &out);
    Ok(())
}

/// `run --json`: one object; with one candidate its fields at the top level (as `generate`).
fn print_run_json(
    engine: &Engine,
    ids: &[u32],
    out: &edgereason::sched::best_of_n::BestOfN,
) -> Result<()> {
    let n = out.candidates.len();
    // One candidate: the candidate's fields at the top level (as `generate`).
    let mut v = if n == 1 {
        let mut c = serde_json::to_value(&out.candidates[0])?;
        let all = serde_json::to_value(out)?;
        for key in [
            "prompt_tokens",
            "ttft_ms",
            "decode_tokens_per_s",
            "kv_bytes_used",
            "reasoning",
            "switcher_probability",
        ] {
            c[key] = all[key].clone();
        }
        c
    } else {
        serde_json::to_value(out)?
    };
    v["prompt_token_ids"] = serde_json::json!(ids);
    v["device"] = serde_json::json!(engine.ctx.describe());
    v["model"] = serde_json::json!(engine.source);
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}

/// `run`'s output after the streamed text: the timings line, or each candidate and the vote.
fn print_run_summary(engine: &Engine, out: &edgereason::sched::best_of_n::BestOfN) {
    let n = out.candidates.len();
    let mode = match out.switcher_probability {
        Some(p) => format!(
            "reasoning {} (switcher p = {p:.2})",
            if out.reasoning { "on" } else { "off" }
        ),
        None => format!("reasoning {}", if out.reasoning { "on" } else { "off" }),
    };
    if n == 1 {
        println!();
        let c = &out.candidates[0];
        eprintln!(
            "[{} prompt tokens, TTFT {:.0} ms, {} tokens ({} thinking{}) at {:.2} tok/s, {mode}, {}]",
            out.prompt_tokens, out.ttft_ms, c.tokens.len(), c.thinking_tokens, if c.forced { ", forced" } else { "" }, out.decode_tokens_per_s, engine.ctx.describe()
        );
    } else {
        for c in &out.candidates {
            let score = c
                .verifier_score
                .map(|s| format!(", verifier {s:.2}"))
                .unwrap_or_default();
            println!(
                "--- candidate {} ({} tokens: {} thinking{}, {}, logprob {:.2}{score}, answer {:?})",
                c.index, c.tokens.len(), c.thinking_tokens, if c.forced { " forced" } else { "" }, c.finish_reason, c.logprob, c.answer
            );
            println!("{}", c.text.trim());
        }
        println!(
            "=== answer: {} (votes: {:?})",
            out.answer.as_deref().unwrap_or("none"),
            out.votes
        );
        eprintln!("[{n} candidates, TTFT {:.0} ms, {:.2} tok/s over all streams, KV {:.1} MiB, {mode}, {}]", out.ttft_ms, out.decode_tokens_per_s, out.kv_bytes_used as f64 / 1048576.0, engine.ctx.describe());
    }
}

fn eval_tasks(a: &EvalArgs, cli: &Cli) -> Result<()> {
    let EvalArgs {
        tasks,
        model,
        limit,
        max_tokens,
        sampling,
        best_of,
        answer_regex,
        json,
        reasoning,
        parallel,
        ..
    } = a;
    let sampling = sampling.params(*best_of)?; // bad values fail before the load
    let mut list = edgereason::sched::eval::read_tasks(tasks)?;
    list.truncate(limit.unwrap_or(usize::MAX));
    let engine = load(model, cli)?;
    let (params, vp) = reasoning.params(
        &engine,
        model,
        *max_tokens,
        sampling,
        answer_regex.as_deref(),
    )?;
    let total = list.len();
    let run = edgereason::sched::eval::EvalRun {
        n: (*best_of).max(1),
        params,
        vote: vp,
        state_budget: reasoning.state_budget,
        parallel: (*parallel).max(1),
    };
    let engine = std::sync::Arc::new(engine);
    let mut correct = 0;
    let r = edgereason::sched::eval::evaluate(&engine, &list, &run, |i, item| {
        correct += item.correct as usize;
        eprintln!(
            "[{}/{total}] {} {:?} (expected {:?}), {:.0} thinking + {:.0} answer tokens{}, acc so far {:.3}",
            i + 1, if item.correct { "ok " } else { "BAD" }, item.answer.as_deref().unwrap_or("none"), item.expected, item.thinking_tokens, item.answer_tokens,
            if item.reasoning { ", reasoning" } else { "" }, correct as f64 / (i + 1) as f64
        );
    })?;
    let device = engine.ctx.describe();
    if *json {
        let mut v = serde_json::to_value(&r)?;
        v["model"] = serde_json::json!(model);
        v["device"] = serde_json::json!(device);
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        let title = format!(
            "{model} on {} ({} tasks, best-of-{best_of}, vote {})",
            tasks.display(),
            r.tasks,
            reasoning.vote
        );
        print_eval_summary(&title, &r, &device);
    }
    Ok(())
}

/// `eval`'s plain-text report.
fn print_eval_summary(title: &str, r: &edgereason::sched::eval::EvalReport, device: &str) {
    println!("{title}:");
    println!(
        "  accuracy {:.3}; mean tokens {:.1} ({:.1} thinking + {:.1} answer); forced {:.1}%",
        r.accuracy,
        r.mean_tokens,
        r.mean_thinking_tokens,
        r.mean_answer_tokens,
        100.0 * r.forced_fraction
    );
    println!(
        "  reasoning on for {:.1}% of tasks{}",
        100.0 * r.reasoning_fraction,
        r.routing_accuracy
            .map(|a| format!("; switcher routing accuracy {a:.3}"))
            .unwrap_or_default()
    );
    for (label, (n, acc, len)) in &r.by_difficulty {
        println!("  {label}: {n} tasks, accuracy {acc:.3}, mean tokens {len:.1}");
    }
    if r.vote_at.len() > 1 {
        let at = |f: &dyn Fn(&edgereason::sched::eval::VoteAt) -> Option<f64>| {
            r.vote_at
                .iter()
                .filter_map(|v| f(v).map(|a| format!("@{} {a:.3}", v.candidates)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!("  majority vote {}", at(&|v| Some(v.majority_accuracy)));
        if r.vote_at.iter().any(|v| v.weighted_accuracy.is_some()) {
            println!("  weighted vote {}", at(&|v| v.weighted_accuracy));
        }
    }
    println!("  {:.1} s on {device}", r.seconds);
}

fn score_text(a: &ScoreArgs, cli: &Cli) -> Result<()> {
    let ScoreArgs {
        model,
        text,
        json,
        adapter,
        prompt_len,
        ..
    } = a;
    let engine = load(model, cli)?;
    let ids = engine.encode(text)?;
    if *prompt_len >= ids.len() {
        anyhow::bail!(
            "--prompt-len {prompt_len} leaves nothing to score: the text is {} tokens",
            ids.len()
        );
    }
    let s = match adapter {
        Some(path) => {
            engine
                .load_adapter("adapter", path)
                .with_context(|| format!("--adapter {}", path.display()))?;
            engine.score_with_adapter(&ids, "adapter", *prompt_len)?
        }
        None if *prompt_len > 0 => engine.score_split(&ids, *prompt_len)?,
        None => engine.score(&ids)?,
    };
    // Over the tokens after the prompt: what an adapter is trained on.
    let after: Vec<f32> = s
        .positions
        .iter()
        .enumerate()
        .filter(|(i, _)| i + 1 >= *prompt_len)
        .map(|(_, p)| p.logprob)
        .collect();
    let response_nll = -after.iter().map(|&l| l as f64).sum::<f64>() / after.len() as f64;
    if *json {
        let mut v = serde_json::to_value(&s)?;
        v["prompt_len"] = serde_json::json!(prompt_len);
        v["response_mean_nll"] = serde_json::json!(response_nll);
        println!("{}", serde_json::to_string(&v)?);
    } else {
        println!(
            "{} tokens, mean NLL {:.4}, perplexity {:.3}",
            ids.len(),
            s.mean_nll,
            s.perplexity
        );
        if *prompt_len > 0 {
            println!("after the {prompt_len}-token prompt: {} tokens, mean NLL {response_nll:.4}, perplexity {:.3}", after.len(), response_nll.exp());
        }
    }
    Ok(())
}

/// `bench`: one of its modes (clap allows at most one), else the full report.
fn bench(a: &BenchArgs, cli: &Cli) -> Result<()> {
    let engine = load(&a.model, cli)?;
    if let Some(m) = a.prefill_matmul {
        return bench_prefill_matmul(&engine, a, m);
    }
    if let Some(ranks) = &a.lora_ranks {
        return bench_lora_ranks(&engine, a, ranks);
    }
    if a.adapter_ttft {
        return bench_adapter_ttft(&engine, a);
    }
    if let Some(n) = a.attention {
        return bench_attention(&engine, a, n);
    }
    if let Some(ns) = &a.streams {
        return bench_streams(&engine, a, ns);
    }
    bench_report(&engine, a)
}

/// `tune`: every candidate's trials, the medians, and the knobs kept.
fn tune(a: &TuneArgs, cli: &Cli) -> Result<()> {
    let ctx = edgereason::gpu::GpuContext::new(cli.device.as_deref())?;
    let exe = std::env::current_exe().context("finding the edgereason binary")?;
    let mut progress = |line: &str| eprintln!("tune: {line}");
    let tokens = (a.prompt_tokens, a.gen_tokens);
    let r = edgereason::tune::run(&ctx, &exe, &a.model, tokens, a.rounds, &mut progress)?;
    let median = |v: &[f64]| edgereason::tune::median(v).unwrap_or(f64::NAN);
    let mut summary = format!("edgereason tune on {} / {}", r.device, r.model);
    for (c, v) in &r.decode {
        summary += &format!("\ndecode  {:<32} {:>9.2} tok/s {v:.2?}", c.name, median(v));
    }
    for (c, v) in &r.prefill {
        summary += &format!("\nprefill {:<32} {:>9.1} tok/s {v:.1?}", c.name, median(v));
    }
    let kept: Vec<String> = r.chosen.iter().map(|(k, v)| format!("{k}={v}")).collect();
    summary += &format!(
        "\nkept: {}",
        if kept.is_empty() {
            "the defaults".into()
        } else {
            kept.join(" ")
        }
    );
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!("{summary}");
    }
    if !a.dry_run {
        let path = edgereason::gpu::tuning::save(&r.device_key, &summary, &r.chosen)
            .context("writing the tuning file")?;
        eprintln!("tune: wrote {}", path.display());
    }
    Ok(())
}

/// `bench --prefill-matmul`: prefill-sized matmuls, each path and tile (GFLOP/s).
fn bench_prefill_matmul(engine: &Engine, a: &BenchArgs, m: usize) -> Result<()> {
    let BenchArgs {
        model,
        json,
        reps,
        gemm_tiles,
        ..
    } = a;
    let tiles = gemm_tiles
        .iter()
        .map(|t| parse_tile(t))
        .collect::<Result<Vec<_>>>()?;
    let rows = edgereason::bench::prefill_matmul(engine, m, &tiles, (*reps).max(1))?;
    if *json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        println!(
            "{} / {model}: prefill matmuls of {m} rows (median of {reps})",
            engine.ctx.describe()
        );
        for r in &rows {
            println!(
                "  {:<8} {:>5}x{:<5} {:<16} {:>9.2} ms {:>8.2} GFLOP/s",
                r.matrix, r.n, r.k, r.path, r.ms, r.gflop_per_s
            );
        }
    }
    Ok(())
}

/// `bench --lora-ranks`: decode step with a LoRA of each rank, fused and separate.
fn bench_lora_ranks(engine: &Engine, a: &BenchArgs, ranks: &[usize]) -> Result<()> {
    let BenchArgs {
        model,
        prompt_tokens,
        gen_tokens,
        json,
        ..
    } = a;
    let (base, base_again, rows) =
        edgereason::bench::lora_ranks(engine, *prompt_tokens, *gen_tokens, ranks)?;
    if *json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"device": engine.ctx.describe(), "base_step_ms": base, "base_step_ms_again": base_again, "ranks": rows})
            )?
        );
    } else {
        println!("{} / {model}: decode step after a {prompt_tokens}-token prompt (median of {gen_tokens})", engine.ctx.describe());
        println!("  base            {base:>8.2} ms (again at the end: {base_again:.2} ms)");
        for r in &rows {
            println!(
                "  rank {:<4} fused {:>8.2} ms (+{:.1}%)  separate {:>8.2} ms (+{:.1}%)  adapter {:.1} MiB",
                r.rank, r.fused_step_ms, 100.0 * r.fused_overhead, r.separate_step_ms, 100.0 * r.separate_overhead, r.adapter_bytes as f64 / 1048576.0
            );
        }
    }
    Ok(())
}

/// `bench --adapter-ttft`: TTFT over the shared base prompt KV vs re-encoding with the adapter.
fn bench_adapter_ttft(engine: &Engine, a: &BenchArgs) -> Result<()> {
    let BenchArgs {
        model,
        prompt_tokens,
        json,
        lora_rank,
        reps,
        ..
    } = a;
    let r = edgereason::bench::adapter_ttft(engine, *prompt_tokens, *lora_rank, (*reps).max(1))?;
    if *json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!("{} / {model}: {prompt_tokens}-token prompt, rank-{} adapter chosen by the switcher (p = {:.2})", engine.ctx.describe(), r.rank, r.switcher_probability);
        println!(
            "  TTFT, shared prompt KV (base prefill + switcher)   {:>9.1} ms",
            r.shared_ttft_ms
        );
        println!(
            "  TTFT, switcher prefill then re-encode with adapter {:>9.1} ms ({:.2}x)",
            r.reencode_ttft_ms,
            r.reencode_ttft_ms / r.shared_ttft_ms
        );
        println!(
            "  prefill, base only                                 {:>9.1} ms",
            r.base_prefill_ms
        );
        println!(
            "  prefill, adapter on the prompt                     {:>9.1} ms ({:.2}x)",
            r.adapter_prefill_ms,
            r.adapter_prefill_ms / r.base_prefill_ms
        );
    }
    Ok(())
}

/// `bench --attention`: one layer's decode attention, shared-prefix pass vs per-stream.
fn bench_attention(engine: &Engine, a: &BenchArgs, n: usize) -> Result<()> {
    let BenchArgs {
        model,
        prompt_tokens,
        gen_tokens,
        json,
        ..
    } = a;
    let c = &engine.model.config;
    let r = edgereason::bench::attention(
        &engine.ctx,
        (c.n_head, c.n_kv_head, c.head_dim),
        n,
        *prompt_tokens,
        *gen_tokens,
        10,
    )?;
    if *json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!("{} / {model}: attention, {n} streams, {prompt_tokens}-token shared prompt + {gen_tokens} own tokens each ({} heads, {} KV heads, head_dim {})", r.device, r.n_head, r.n_kv_head, r.head_dim);
        println!(
            "  shared-prefix pass, shared cache   {:>9.3} ms",
            r.shared_prefix_ms
        );
        println!(
            "  per-stream kernel, shared cache    {:>9.3} ms ({:.2}x the shared-prefix pass)",
            r.per_stream_shared_cache_ms,
            r.per_stream_shared_cache_ms / r.shared_prefix_ms
        );
        println!(
            "  per-stream kernel, copied KV       {:>9.3} ms ({:.2}x the shared-prefix pass)",
            r.per_stream_copied_kv_ms,
            r.per_stream_copied_kv_ms / r.shared_prefix_ms
        );
        println!(
            "  KV held: {:.2} MiB shared, {:.2} MiB copied",
            r.kv_bytes_shared as f64 / 1048576.0,
            r.kv_bytes_copied as f64 / 1048576.0
        );
    }
    Ok(())
}

/// `bench --streams`: batched decode steps for several stream counts.
fn bench_streams(engine: &Engine, a: &BenchArgs, ns: &[usize]) -> Result<()> {
    let BenchArgs {
        model,
        prompt_tokens,
        gen_tokens,
        json,
        ..
    } = a;
    let rows = edgereason::bench::streams(engine, *prompt_tokens, *gen_tokens, ns)?;
    if *json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        println!(
            "{} / {model}: {prompt_tokens}-token shared prompt, {gen_tokens} steps",
            engine.ctx.describe()
        );
        let base = rows.first().map(|r| r.tokens_per_s).unwrap_or(1.0);
        for r in &rows {
            println!(
                "  N={:<3} step {:>8.2} ms  {:>8.2} tok/s ({:.2}x N=1)  {} launches  KV {:.1} MiB (unshared {:.1} MiB)",
                r.streams, r.step_ms, r.tokens_per_s, r.tokens_per_s / base, r.launches_per_step, r.kv_bytes_used as f64 / 1048576.0, r.kv_bytes_unshared as f64 / 1048576.0
            );
            if !r.kernel_ms.ms.is_empty() {
                println!("        one step by kernel: {}", kernel_line(&r.kernel_ms));
            }
        }
    }
    Ok(())
}

/// `bench`: prefill and decode throughput, TTFT, memory, the decode step's cost and the
/// per-kernel split.
fn bench_report(engine: &Engine, a: &BenchArgs) -> Result<()> {
    let BenchArgs {
        model,
        prompt_tokens,
        gen_tokens,
        json,
        ..
    } = a;
    let r = edgereason::bench::run(engine, model, *prompt_tokens, *gen_tokens)?;
    if *json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!("device        {}", r.device);
        println!("model         {}", r.model);
        let knobs = if r.knobs.is_empty() {
            "defaults".into()
        } else {
            r.knobs.join(", ")
        };
        println!("knobs         {knobs}");
        println!("prefill       {:.1} tok/s ({} tokens, TTFT {:.0} ms; {:.0} ms cold, with pipeline compilation)", r.prefill_tokens_per_s, r.prompt_tokens, r.ttft_ms, r.cold_ttft_ms);
        println!("decode        {:.2} tok/s (median step {:.1} ms over {} tokens; {} B read back per step)", r.decode_tokens_per_s, r.decode_step_ms, r.gen_tokens, r.readback_bytes_per_step);
        println!(
            "gpu memory    {:.1} MiB (weights {:.1}, KV {:.1})",
            r.gpu_bytes as f64 / 1048576.0,
            r.weight_bytes as f64 / 1048576.0,
            r.kv_bytes as f64 / 1048576.0
        );
        println!(
            "int4 GEMV     {}x{}: {:.2} ms = {:.2} GB/s; read kernel {:.2} GB/s; ratio {:.2}",
            r.gemv.n,
            r.gemv.k,
            r.gemv.gemv_ms,
            r.gemv.gemv_gb_per_s,
            r.gemv.read_gb_per_s,
            r.gemv.ratio
        );
        let c = &r.decode_step_cost;
        println!(
            "decode step   {} launches ({:.1} per layer + head), {} pass, {} submit, {} B read back, host {:.0} us, GPU {}, wall {:.2} ms (a step alone, not pipelined)",
            c.dispatches,
            c.dispatches_per_layer,
            c.passes,
            c.submits,
            c.readback_bytes,
            c.host_encode_us,
            c.gpu_ms.map_or("n/a".into(), |g| format!("{g:.2} ms")),
            c.wall_ms
        );
        if c.pipelines_built > 0 {
            println!(
                "              (these steps built {} kernel variants: their medians hold a compile)",
                c.pipelines_built
            );
        }
        print_kernel_split("decode step", &r.decode_kernel_ms);
        print_kernel_split(
            &format!("prefill of {} tokens", r.prefill_profile_tokens),
            &r.prefill_kernel_ms,
        );
    }
    Ok(())
}

fn chat_cmd(a: &ChatArgs, cli: &Cli) -> Result<()> {
    let ChatArgs {
        model,
        system,
        max_tokens,
        sampling,
        reasoning,
        ..
    } = a;
    let sampling = sampling.params(1)?;
    let engine = load(model, cli)?;
    let (params, _) = reasoning.params(&engine, model, *max_tokens, sampling, None)?;
    let modes = ChatModes {
        adapter: engine.adapter_names().first().cloned(),
        switcher: match &params.reasoning {
            edgereason::engine::Reasoning::Auto { switcher, .. } => Some(switcher.clone()),
            _ => None,
        },
    };
    chat(model, system.as_deref(), params, modes, engine)?;
    Ok(())
}

/// One kernel-time split of `bench`, largest first.
fn print_kernel_split(what: &str, p: &edgereason::model::KernelProfile) {
    let total: f64 = p.ms.values().sum();
    println!("{what} by kernel ({}, {total:.1} ms total):", p.source);
    let mut v: Vec<_> = p.ms.iter().collect();
    v.sort_by(|a, b| b.1.total_cmp(a.1));
    for (k, ms) in v {
        println!("  {k:<12} {ms:>8.2} ms  {:>5.1}%", 100.0 * ms / total);
    }
}

/// A kernel-time split on one line, largest first: "qkv 0.41 ms, attention 0.30 ms, ...".
fn kernel_line(p: &edgereason::model::KernelProfile) -> String {
    let mut v: Vec<_> = p.ms.iter().collect();
    v.sort_by(|a, b| b.1.total_cmp(a.1));
    let total: f64 = p.ms.values().sum();
    let parts: Vec<String> = v.iter().map(|(k, ms)| format!("{k} {ms:.3}")).collect();
    format!("{total:.3} ms = {} ({})", parts.join(" + "), p.source)
}

/// "8x2" → (8, 2): a GEMM register tile of ROWS x COLS (quads of 4 columns).
fn parse_tile(t: &str) -> Result<(u32, u32)> {
    let parsed = t
        .split_once('x')
        .and_then(|(r, c)| Some((r.parse().ok()?, c.parse().ok()?)));
    parsed
        .filter(|&(r, c)| (1..=32).contains(&r) && (1..=32).contains(&c))
        .ok_or_else(|| anyhow::anyhow!("--gemm-tiles: '{t}' is not ROWSxCOLS with each in 1..=32"))
}
