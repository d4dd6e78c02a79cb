//! `edgereason eval`: accuracy of the engine as it ships on a JSONL task file — each line
//! `{"prompt": "...", "answer": "..."}` (optionally `"difficulty": "easy"|"hard"`, which
//! makes the switcher's routing measurable). Answers are compared after normalisation;
//! every figure comes from the engine's own generation, adapters, switcher and vote.

use super::best_of_n::{BestOfN, Decoding, VoteParams};
use super::vote::normalize;
use crate::engine::{budget_statement, Engine, GenerateParams};
use anyhow::{bail, Context, Result};
use std::path::Path;

/// One task of the file.
#[derive(Clone, Debug, serde::Deserialize, serde::Serialize)]
pub struct EvalTask {
    pub prompt: String,
    pub answer: String,
    #[serde(default)]
    pub difficulty: Option<String>,
}

/// Read a task file; a bad line is an error naming the file and line.
pub fn read_tasks(path: &Path) -> Result<Vec<EvalTask>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let task: EvalTask = serde_json::from_str(line).with_context(|| format!("{}: line {}: expected {{\"prompt\": ..., \"answer\": ...}}", path.display(), i + 1))?;
        out.push(task);
    }
    if out.is_empty() {
        bail!("{}: no tasks", path.display());
    }
    Ok(out)
}

/// One task's outcome.
#[derive(Clone, Debug, serde::Serialize)]
pub struct EvalItem {
    pub prompt: String,
    pub expected: String,
    pub answer: Option<String>,
    pub correct: bool,
    pub difficulty: Option<String>,
    pub reasoning: bool,
    pub switcher_probability: Option<f32>,
    /// Means over this task's candidates.
    pub thinking_tokens: f64,
    pub answer_tokens: f64,
    pub forced: usize,
    pub candidates: usize,
}

/// The whole run.
#[derive(Clone, Debug, serde::Serialize)]
pub struct EvalReport {
    pub tasks: usize,
    pub accuracy: f64,
    /// Means over all candidates of all tasks.
    pub mean_thinking_tokens: f64,
    pub mean_answer_tokens: f64,
    pub mean_tokens: f64,
    pub forced_fraction: f64,
    /// Tasks decoded with the reasoning adapter.
    pub reasoning_fraction: f64,
    /// With difficulty labels and a switcher: hard → reasoning, easy → not.
    pub routing_accuracy: Option<f64>,
    /// Accuracy and mean length per difficulty label.
    pub by_difficulty: std::collections::BTreeMap<String, (usize, f64, f64)>,
    pub seconds: f64,
    pub items: Vec<EvalItem>,
}

/// Evaluate `tasks`: each prompt through the chat template (the budget stated when
/// `state_budget`), `n` candidates, the vote of `vote_params`.
pub fn evaluate(engine: &Engine, tasks: &[EvalTask], n: usize, params: &GenerateParams, vote_params: &VoteParams, state_budget: bool, mut progress: impl FnMut(usize, &EvalItem)) -> Result<EvalReport> {
    let t0 = std::time::Instant::now();
    let mut items = Vec::with_capacity(tasks.len());
    for (i, task) in tasks.iter().enumerate() {
        let user = match (&params.budget, state_budget) {
            (Some(b), true) => format!("{}{}", task.prompt, budget_statement(b.thinking_tokens)),
            _ => task.prompt.clone(),
        };
        let ids = engine.encode(&engine.chat_prompt(None, &user)?)?;
        let mut run = Decoding::start(engine, &ids, n, params)?;
        while !run.is_finished() {
            run.step()?;
        }
        let out: BestOfN = run.finish(vote_params)?;
        let k = out.candidates.len() as f64;
        let item = EvalItem {
            prompt: task.prompt.clone(),
            expected: task.answer.clone(),
            correct: out.answer.as_deref().is_some_and(|a| a == normalize(&task.answer)),
            answer: out.answer.clone(),
            difficulty: task.difficulty.clone(),
            reasoning: out.reasoning,
            switcher_probability: out.switcher_probability,
            thinking_tokens: out.candidates.iter().map(|c| c.thinking_tokens as f64).sum::<f64>() / k,
            answer_tokens: out.candidates.iter().map(|c| c.answer_tokens as f64).sum::<f64>() / k,
            forced: out.candidates.iter().filter(|c| c.forced).count(),
            candidates: out.candidates.len(),
        };
        progress(i, &item);
        items.push(item);
    }
    let t = items.len() as f64;
    let total_c: f64 = items.iter().map(|i| i.candidates as f64).sum();
    let mean = |f: &dyn Fn(&EvalItem) -> f64| items.iter().map(|i| f(i) * i.candidates as f64).sum::<f64>() / total_c;
    let labelled: Vec<&EvalItem> = items.iter().filter(|i| i.difficulty.is_some() && i.switcher_probability.is_some()).collect();
    let routing_accuracy = (!labelled.is_empty()).then(|| labelled.iter().filter(|i| i.reasoning == (i.difficulty.as_deref() == Some("hard"))).count() as f64 / labelled.len() as f64);
    let mut by_difficulty = std::collections::BTreeMap::new();
    for label in items.iter().filter_map(|i| i.difficulty.clone()).collect::<std::collections::BTreeSet<_>>() {
        let group: Vec<&EvalItem> = items.iter().filter(|i| i.difficulty.as_deref() == Some(&label)).collect();
        let g = group.len() as f64;
        let acc = group.iter().filter(|i| i.correct).count() as f64 / g;
        let len = group.iter().map(|i| i.thinking_tokens + i.answer_tokens).sum::<f64>() / g;
        by_difficulty.insert(label, (group.len(), acc, len));
    }
    Ok(EvalReport {
        tasks: items.len(),
        accuracy: items.iter().filter(|i| i.correct).count() as f64 / t,
        mean_thinking_tokens: mean(&|i| i.thinking_tokens),
        mean_answer_tokens: mean(&|i| i.answer_tokens),
        mean_tokens: mean(&|i| i.thinking_tokens + i.answer_tokens),
        forced_fraction: items.iter().map(|i| i.forced as f64).sum::<f64>() / total_c,
        reasoning_fraction: items.iter().filter(|i| i.reasoning).count() as f64 / t,
        routing_accuracy,
        by_difficulty,
        seconds: t0.elapsed().as_secs_f64(),
        items,
    })
}
