//! The CLI as a user meets it: JSON output, the pre-quantized round trip, and clear
//! one-line errors (no panic, no backtrace) for bad input.

use std::process::Command;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_edgereason"));
    c.env("RUST_BACKTRACE", "0");
    c
}

fn fixture(rel: &str) -> String {
    format!("{}/tests/fixtures/{rel}", env!("CARGO_MANIFEST_DIR"))
}

fn run_ok(args: &[&str]) -> String {
    let out = bin().args(args).output().unwrap();
    assert!(
        out.status.success(),
        "edgereason {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn run_err(args: &[&str], envs: &[(&str, &str)]) -> String {
    let out = bin()
        .args(args)
        .envs(envs.iter().copied())
        .output()
        .unwrap();
    assert!(!out.status.success(), "edgereason {args:?} should fail");
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !err.contains("panicked"),
        "edgereason {args:?} panicked: {err}"
    );
    err
}

#[test]
fn run_json_has_the_documented_fields() {
    let out = run_ok(&[
        "run",
        "--model",
        &fixture("tiny-qwen2"),
        "--raw",
        "The capital of France",
        "--max-tokens",
        "4",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    for key in [
        "text",
        "prompt_tokens",
        "tokens",
        "prompt_token_ids",
        "ttft_ms",
        "decode_tokens_per_s",
        "device",
    ] {
        assert!(v.get(key).is_some(), "missing '{key}' in {out}");
    }
    assert_eq!(v["tokens"].as_array().unwrap().len(), 4);
}

#[test]
fn quantized_file_gives_the_same_tokens_as_its_source() {
    let dir = tempfile::tempdir().unwrap();
    let q = dir.path().join("tiny.safetensors");
    run_ok(&["quantize", &fixture("tiny-llama"), q.to_str().unwrap()]);
    let args = |m: &str| {
        vec![
            "run".to_string(),
            "--model".into(),
            m.to_string(),
            "--raw".into(),
            "hello world".into(),
            "--max-tokens".into(),
            "6".into(),
            "--json".into(),
        ]
    };
    let a: serde_json::Value = serde_json::from_str(&run_ok(
        &args(&fixture("tiny-llama"))
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    ))
    .unwrap();
    let b: serde_json::Value = serde_json::from_str(&run_ok(
        &args(q.to_str().unwrap())
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    ))
    .unwrap();
    assert_eq!(a["tokens"], b["tokens"]);
}

#[test]
fn score_json_reports_perplexity() {
    let out = run_ok(&[
        "score",
        "--model",
        &fixture("tiny-qwen2"),
        "--text",
        "The capital of France is Paris.",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v["perplexity"].as_f64().unwrap() > 1.0);
    assert_eq!(v["positions"][0]["top5"].as_array().unwrap().len(), 5);
}

#[test]
fn bad_input_is_a_clear_error() {
    // No GPU adapter at all: Vulkan and EGL both pointed at nothing.
    let err = run_err(
        &["run", "--model", &fixture("tiny-qwen2"), "hi"],
        &[
            ("VK_DRIVER_FILES", "/nonexistent.json"),
            ("VK_ICD_FILENAMES", "/nonexistent.json"),
            ("__EGL_VENDOR_LIBRARY_FILENAMES", "/nonexistent.json"),
        ],
    );
    assert!(err.contains("no GPU adapter found"), "{err}");
    // A truncated GGUF.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("cut.gguf");
    let mut bytes = b"GGUF".to_vec();
    bytes.extend(3u32.to_le_bytes());
    bytes.extend(1000u64.to_le_bytes());
    std::fs::write(&bad, &bytes).unwrap();
    let err = run_err(&["inspect", bad.to_str().unwrap()], &[]);
    assert!(
        err.contains("cut.gguf") && err.contains("malformed"),
        "{err}"
    );
    // A prompt longer than the context.
    let err = run_err(
        &[
            "--ctx",
            "8",
            "run",
            "--model",
            &fixture("tiny-llama"),
            "--raw",
            "one two three four five six seven eight nine ten eleven twelve",
        ],
        &[],
    );
    assert!(err.contains("longer than the context"), "{err}");
    // An unknown model name.
    let err = run_err(&["run", "--model", "no-such-model", "hi"], &[]);
    assert!(err.contains("no-such-model"), "{err}");
}

#[test]
fn adapters_budget_and_heads_from_the_cli() {
    let model = fixture("tiny-qwen2");
    let adapter = fixture("lora/lora");
    // score --adapter: the response tokens score differently with the adapter; the prompt part
    // is the base model's.
    let text = "What is 2 + 3 * 4? The answer is 14.";
    let base: serde_json::Value = serde_json::from_str(&run_ok(&[
        "score",
        "--model",
        &model,
        "--text",
        text,
        "--prompt-len",
        "8",
        "--json",
    ]))
    .unwrap();
    let with: serde_json::Value = serde_json::from_str(&run_ok(&[
        "score",
        "--model",
        &model,
        "--text",
        text,
        "--adapter",
        &adapter,
        "--prompt-len",
        "8",
        "--json",
    ]))
    .unwrap();
    let lp = |v: &serde_json::Value, i: usize| v["positions"][i]["logprob"].as_f64().unwrap();
    assert_eq!(
        lp(&base, 3),
        lp(&with, 3),
        "prompt positions are the base model's"
    );
    assert_ne!(
        lp(&base, 10),
        lp(&with, 10),
        "response positions use the adapter"
    );
    assert!(with["response_mean_nll"].as_f64().is_some());
    // run with the adapter, a budget and 3 candidates: JSON reports the forcing per candidate.
    let out = run_ok(&[
        "run",
        "--model",
        &model,
        "--raw",
        "Think about it",
        "--adapter",
        &adapter,
        "--reasoning",
        "on",
        "--budget",
        "4",
        "--answer-tokens",
        "3",
        "--best-of",
        "3",
        "--temperature",
        "1",
        "--max-tokens",
        "60",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["reasoning"], true);
    for c in v["candidates"].as_array().unwrap() {
        assert!(
            c["thinking_tokens"].as_u64().is_some() && c["answer_tokens"].as_u64().is_some(),
            "{c}"
        );
        if c["finish_reason"] != "eos" || c["thinking_tokens"].as_u64().unwrap() >= 4 {
            assert_eq!(c["forced"], true, "{c}");
        }
    }
    // Bad input: an adapter for another model, a weighted vote without a verifier.
    let err = run_err(
        &[
            "run",
            "--model",
            &fixture("tiny-llama"),
            "--raw",
            "hi",
            "--adapter",
            &adapter,
        ],
        &[],
    );
    assert!(
        err.contains("--adapter")
            && err.contains("adapter_model.safetensors")
            && err.contains("another model"),
        "{err}"
    );
    assert!(
        err.lines()
            .any(|l| l.starts_with("error: --adapter") && l.contains("another model")),
        "one line: {err}"
    );
    let err = run_err(
        &[
            "run",
            "--model",
            &model,
            "--raw",
            "hi",
            "--best-of",
            "2",
            "--vote",
            "weighted",
        ],
        &[],
    );
    assert!(err.contains("--vote weighted needs --verifier"), "{err}");
}

/// `eval` over the tiny pipeline's tasks with its adapter, switcher and verifier (best-of-2,
/// weighted vote, budget 8), then `extra` flags; the JSON report.
fn eval_tiny_pipeline(extra: &[&str]) -> serde_json::Value {
    let dir = fixture("tiny-pipeline");
    let (model, tasks) = (fixture("tiny-qwen2"), format!("{dir}/tasks.jsonl"));
    let (adapter, switcher) = (
        format!("{dir}/reasoning"),
        format!("{dir}/switcher.safetensors"),
    );
    let verifier = format!("{dir}/verifier.safetensors");
    let mut args = vec![
        "eval",
        "--model",
        &model,
        "--tasks",
        &tasks,
        "--adapter",
        &adapter,
        "--switcher",
        &switcher,
        "--verifier",
        &verifier,
        "--vote",
        "weighted",
        "--best-of",
        "2",
        "--temperature",
        "0.8",
        "--budget",
        "8",
        "--answer-tokens",
        "4",
        "--max-tokens",
        "24",
        "--json",
    ];
    args.extend_from_slice(extra);
    serde_json::from_str(&run_ok(&args)).unwrap()
}

#[test]
fn eval_runs_the_trained_artifacts_of_the_tiny_pipeline() {
    // tests/fixtures/tiny-pipeline: what `tools/train/pipeline.sh --tiny` exports for the tiny
    // Qwen2 (reasoning adapter, switcher, verifier) and the first held-out tasks.
    let v = eval_tiny_pipeline(&[]);
    assert_eq!(v["tasks"], 6);
    let acc = v["accuracy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&acc));
    assert!(
        v["routing_accuracy"].as_f64().is_some(),
        "difficulty labels + switcher give a routing accuracy: {v}"
    );
    assert!(
        v["by_difficulty"]["easy"].is_array() && v["by_difficulty"]["hard"].is_array(),
        "{v}"
    );
    for item in v["items"].as_array().unwrap() {
        assert!(item["switcher_probability"].as_f64().is_some(), "{item}");
        assert_eq!(item["candidates"], 2);
        assert_eq!(
            item["candidate_answers"].as_array().unwrap().len(),
            2,
            "{item}"
        );
        assert_eq!(
            item["verifier_scores"].as_array().map(Vec::len),
            Some(2),
            "{item}"
        );
    }
    // One best-of-2 run reports the vote over the first 1 and 2 streams, majority and weighted.
    let at = v["vote_at"].as_array().unwrap();
    assert_eq!(
        at.iter()
            .map(|a| a["candidates"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        vec![1, 2]
    );
    for a in at {
        assert!(
            (0.0..=1.0).contains(&a["majority_accuracy"].as_f64().unwrap())
                && a["weighted_accuracy"].as_f64().is_some(),
            "{a}"
        );
    }
    assert_eq!(
        at[1]["weighted_accuracy"].as_f64().unwrap(),
        acc,
        "the weighted vote over all streams is the run's vote"
    );
    // A bad task file is a one-line error naming file and line.
    let bad = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        bad.path(),
        "{\"prompt\": \"hi\", \"answer\": \"1\"}\n{\"prompt\": 3}\n",
    )
    .unwrap();
    let err = run_err(
        &[
            "eval",
            "--model",
            &fixture("tiny-qwen2"),
            "--tasks",
            bad.path().to_str().unwrap(),
        ],
        &[],
    );
    assert!(err.contains("line 2"), "{err}");
}

#[test]
fn eval_in_parallel_equals_one_task_at_a_time() {
    // --parallel batches the tasks through the serving scheduler: every candidate's text,
    // answer and verifier score must be those of the sequential run (sampled candidates with
    // per-stream seeds, budget forcing, switcher routing and the weighted vote included).
    // A batch adds some sums in another order; on this fixture no token's logits are close
    // enough for that to flip one (on real models a near-tie can: see EvalRun::parallel).
    let eval = |parallel: &str| {
        let v = eval_tiny_pipeline(&["--seed", "5", "--parallel", parallel]);
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                let keep = [
                    "candidate_texts",
                    "candidate_answers",
                    "reasoning",
                    "answer",
                    "candidate_tokens",
                ];
                let scores: Vec<f64> = i["verifier_scores"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|s| s.as_f64().unwrap())
                    .collect();
                (keep.map(|k| i[k].clone()), scores)
            })
            .collect::<Vec<_>>()
    };
    let one = eval("1");
    assert_eq!(one.len(), 6);
    let routed: Vec<bool> = one.iter().map(|(i, _)| i[2] == true).collect();
    assert!(
        routed.contains(&true) && routed.contains(&false),
        "the switcher routes both ways: {one:?}"
    );
    let four = eval("4");
    for ((a, sa), (b, sb)) in one.iter().zip(&four) {
        assert_eq!(a, b);
        // The verifier scores rows of a batch: the same sums, but not necessarily in the
        // same order of additions.
        assert_eq!(sa.len(), sb.len());
        for (x, y) in sa.iter().zip(sb) {
            assert!((x - y).abs() < 1e-4, "verifier scores {sa:?} vs {sb:?}");
        }
    }
}

#[test]
fn shipped_adapters_are_the_default_and_budget_runs_take_the_budget_adapter() {
    // adapters/<model>/ under EDGEREASON_ADAPTERS: reasoning/ is good, reasoning-budget/ a
    // truncated copy, so which one a run loaded shows in whether it fails.
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("tiny-qwen2");
    let src = fixture("tiny-pipeline/reasoning");
    for name in ["reasoning", "reasoning-budget"] {
        std::fs::create_dir_all(dir.join(name)).unwrap();
        std::fs::copy(
            format!("{src}/adapter_config.json"),
            dir.join(name).join("adapter_config.json"),
        )
        .unwrap();
        let weights = std::fs::read(format!("{src}/adapter_model.safetensors")).unwrap();
        let keep = if name == "reasoning" {
            weights.len()
        } else {
            weights.len() / 2
        };
        std::fs::write(
            dir.join(name).join("adapter_model.safetensors"),
            &weights[..keep],
        )
        .unwrap();
    }
    let env = [("EDGEREASON_ADAPTERS", root.path().to_str().unwrap())];
    let model = fixture("tiny-qwen2");
    let out = bin()
        .args([
            "run",
            "--model",
            &model,
            "--raw",
            "hi",
            "--reasoning",
            "on",
            "--max-tokens",
            "3",
            "--json",
        ])
        .envs(env)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["reasoning"], true,
        "adapters/tiny-qwen2/reasoning is picked up without --adapter: {v}"
    );
    let err = run_err(
        &[
            "run",
            "--model",
            &model,
            "--raw",
            "hi",
            "--reasoning",
            "on",
            "--budget",
            "4",
            "--max-tokens",
            "3",
        ],
        &env,
    );
    assert!(
        err.contains("reasoning-budget"),
        "--budget loads adapters/<model>/reasoning-budget: {err}"
    );
}

#[test]
fn flags_that_would_be_ignored_or_cannot_work_are_errors() {
    // Each fails at argument checking, before any model is loaded, with a line naming
    // the flag.
    for (args, says) in [
        (
            &["run", "--raw", "--system", "be brief", "hi"][..],
            "--system",
        ),
        (&["run", "--state-budget", "hi"], "--budget"),
        (&["run", "--answer-tokens", "9", "hi"], "--budget"),
        (&["run", "--force", "Answer:", "hi"], "--budget"),
        (
            &["bench", "--streams", "1,8", "--attention", "8"],
            "--attention",
        ),
        (&["run", "--top-p", "0", "hi"], "top_p 0"),
        (&["run", "--temperature=-0.5", "hi"], "temperature -0.5"),
        (
            &["run", "--best-of", "4", "--temperature", "0", "hi"],
            "identical greedy",
        ),
        (
            &[
                "eval",
                "--tasks",
                "t.jsonl",
                "--best-of",
                "2",
                "--temperature",
                "0",
            ],
            "identical greedy",
        ),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_edgereason"))
            .args(args)
            .args(["--model", "/nonexistent/model.gguf"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(
            err.contains(says),
            "{args:?}: stderr does not name {says:?}: {err}"
        );
        assert!(
            !err.contains("loading model"),
            "{args:?} loaded a model first: {err}"
        );
    }
}

#[test]
fn tune_keeps_a_tuning_file_that_later_runs_read() {
    let cache = tempfile::tempdir().unwrap();
    let with_cache = |args: &[&str]| {
        bin()
            .args(args)
            .env("EDGEREASON_CACHE", cache.path())
            .output()
            .unwrap()
    };
    let tiny = fixture("tiny-qwen2");
    // A short bench, as `tune`'s trials and the checks below run it.
    let short = |cmd: &'static str| {
        let sizes = ["--prompt-tokens", "8", "--gen-tokens", "4", "--json"];
        let mut args = vec![cmd, "--model", tiny.as_str()];
        args.extend(sizes);
        args
    };
    let mut tune = short("tune");
    tune.extend(["--rounds", "1"]);
    let out = with_cache(&tune);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "tune failed: {err}");
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // Every candidate ran once; the defaults come first.
    let decode = r["decode"].as_array().unwrap();
    assert!(decode.len() >= 2, "{r}");
    assert_eq!(decode[0][0]["name"], "default");
    for c in decode {
        assert_eq!(c[1].as_array().unwrap().len(), 1, "a trial failed: {err}");
    }
    // The file holds what was chosen, under the device's key.
    let key = r["device_key"].as_str().unwrap();
    let path = cache.path().join("tuning").join(format!("{key}.env"));
    let text = std::fs::read_to_string(&path).unwrap();
    let vars = edgereason::gpu::tuning::parse(&text).unwrap();
    let chosen: Vec<(String, String)> = serde_json::from_value(r["chosen"].clone()).unwrap();
    assert_eq!(vars, chosen);
    // A damaged file is a warning naming it, not a failure.
    std::fs::write(&path, "EDGEREASON_K_SLICES=2\nnot a knob\n").unwrap();
    let run = with_cache(&["run", "--model", &tiny, "--raw", "hi", "--max-tokens", "2"]);
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "run failed: {err}");
    assert!(
        err.contains("ignoring tuning file") && err.contains("line 2"),
        "no warning: {err}"
    );
    // A knob in the file applies (two command buffers a step and the read-back's), and
    // the environment still overrides it.
    std::fs::write(&path, "EDGEREASON_SUBMIT_PARTS=2\n").unwrap();
    let submits = |envs: &[(&str, &str)]| {
        let mut cmd = bin();
        cmd.args(short("bench"))
            .env("EDGEREASON_CACHE", cache.path());
        for k in edgereason::gpu::tuning::KNOBS {
            cmd.env_remove(k);
        }
        let out = cmd.envs(envs.iter().copied()).output().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let knobs = v["knobs"].as_array().unwrap().clone();
        (v["decode_step_cost"]["submits"].as_u64().unwrap(), knobs)
    };
    // bench names the knobs in effect and where they come from.
    let (n, knobs) = submits(&[]);
    assert_eq!(n, 3);
    let from_file = format!("EDGEREASON_SUBMIT_PARTS=2 ({})", path.display());
    assert_eq!(knobs, vec![serde_json::Value::from(from_file)]);
    let (n, knobs) = submits(&[("EDGEREASON_SUBMIT_PARTS", "1")]);
    assert_eq!((n, knobs.len()), (2, 1));
    assert_eq!(knobs[0], "EDGEREASON_SUBMIT_PARTS=1 (env)");
    let (n, knobs) = submits(&[("EDGEREASON_TUNING", "0")]);
    assert_eq!((n, knobs.len()), (2, 0));
}
