//! `edgereason eval`: accuracy of the engine as it ships on a JSONL task file — each line
//! `{"prompt": "...", "answer": "..."}` (optionally `"difficulty": "easy"|"hard"`, which
//! makes the switcher's routing measurable). Answers are compared after normalisation;
//! every figure comes from the engine's own generation, adapters, switcher and vote.

use super::best_of_n::{BestOfN, Candidate, Decoding, VoteParams, VERIFY_SLOTS};
use super::serving::{request_blocks, Event, Request, Scheduler, SchedulerOptions};
use super::vote::{normalize, vote};
use crate::engine::{budget_statement, Engine, GenerateParams};
use crate::model::forward::BLOCK_SIZE;
use anyhow::{bail, Context, Result};
use std::path::Path;
use std::sync::Arc;

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
        let task: EvalTask = serde_json::from_str(line).with_context(|| {
            format!(
                "{}: line {}: expected {{\"prompt\": ..., \"answer\": ...}}",
                path.display(),
                i + 1
            )
        })?;
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
    /// Each candidate's extracted answer and verifier score, in stream order, so every
    /// vote below can be recomputed from the report.
    pub candidate_answers: Vec<Option<String>>,
    pub verifier_scores: Option<Vec<f32>>,
    /// Each candidate's reply, in stream order (to read traces: which steps went wrong).
    pub candidate_texts: Vec<String>,
    /// Each candidate's reply tokens (the think opener first, no stop token), in stream
    /// order: what a verifier is trained on without re-tokenizing the text.
    pub candidate_tokens: Vec<Vec<u32>>,
    /// Each candidate's summed log-probability of its sampled tokens, in stream order (the
    /// model's own confidence, beside the verifier's score).
    pub candidate_logprobs: Vec<f32>,
}

/// Accuracy of the vote over the first `candidates` streams of every task (maj@k):
/// streams are sampled independently (seed + stream index), so the first k of an N-stream
/// run are a k-stream run, and one N=8 evaluation gives best-of-1, 2, 4 and 8.
#[derive(Clone, Debug, serde::Serialize)]
pub struct VoteAt {
    pub candidates: usize,
    pub majority_accuracy: f64,
    /// With a verifier: the vote weighted by its scores.
    pub weighted_accuracy: Option<f64>,
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
    /// Votes over 1, 2, 4, … and all candidates (see [`VoteAt`]).
    pub vote_at: Vec<VoteAt>,
    pub seconds: f64,
    pub items: Vec<EvalItem>,
}

/// How [`evaluate`] runs the tasks.
#[derive(Clone, Debug)]
pub struct EvalRun {
    /// Candidates per task, voted by `vote`.
    pub n: usize,
    pub params: GenerateParams,
    pub vote: VoteParams,
    /// State the thinking budget in each prompt (as budget-trained adapters expect).
    pub state_budget: bool,
    /// Tasks decoded at once. 1: one task after another, each its own [`Decoding`];
    /// more: every task is a request to a continuous-batching [`Scheduler`], so up to
    /// `parallel` tasks share each decode step. Same seeds, rules and routing; but a
    /// batched step may add its sums in another order (on CPU adapters one stream takes
    /// its keys whole and a batch splits them), so where two tokens' logits nearly tie a
    /// greedy reply can take the other one: accuracy agrees statistically, not item by item.
    pub parallel: usize,
}

/// Evaluate `tasks`: each prompt through the chat template (the budget stated when
/// `run.state_budget`), `run.n` candidates, their vote. `progress` sees each task's
/// outcome in file order.
pub fn evaluate(
    engine: &Arc<Engine>,
    tasks: &[EvalTask],
    run: &EvalRun,
    mut progress: impl FnMut(usize, &EvalItem),
) -> Result<EvalReport> {
    let t0 = std::time::Instant::now();
    let mut items = Vec::with_capacity(tasks.len());
    let mut record = |i: usize, out: &BestOfN| {
        let item = eval_item(&tasks[i], out);
        progress(i, &item);
        items.push(item);
    };
    if run.parallel > 1 {
        evaluate_batched(engine, tasks, run, &mut record)?;
    } else {
        for (i, task) in tasks.iter().enumerate() {
            let ids = task_prompt(engine, task, run)?;
            let mut decoding = Decoding::start(engine, &ids, run.n, &run.params)?;
            while !decoding.is_finished() {
                decoding.step()?;
            }
            record(i, &decoding.finish(&run.vote)?);
        }
    }
    Ok(report(items, run.n, t0.elapsed().as_secs_f64()))
}

/// A task's prompt tokens: the chat template around its text (+ the budget statement).
fn task_prompt(engine: &Engine, task: &EvalTask, run: &EvalRun) -> Result<Vec<u32>> {
    let user = match (&run.params.budget, run.state_budget) {
        (Some(b), true) => format!("{}{}", task.prompt, budget_statement(b.thinking_tokens)),
        _ => task.prompt.clone(),
    };
    engine.encode(&engine.chat_prompt(None, &user)?)
}

/// Every task a request to one scheduler, sized for `run.parallel` of them at once;
/// outcomes are read in file order (later tasks decode meanwhile).
fn evaluate_batched(
    engine: &Arc<Engine>,
    tasks: &[EvalTask],
    run: &EvalRun,
    record: &mut impl FnMut(usize, &BestOfN),
) -> Result<()> {
    let n_ctx = engine.n_ctx();
    let mut requests = Vec::with_capacity(tasks.len());
    for (i, task) in tasks.iter().enumerate() {
        let prompt = task_prompt(engine, task, run)?;
        if prompt.len() + VERIFY_SLOTS >= n_ctx {
            bail!(
                "task {}: the prompt is {} tokens, too long for the context ({n_ctx}); raise --ctx",
                i + 1,
                prompt.len()
            );
        }
        // As Decoding does: the reply gets what the context leaves.
        let mut params = run.params.clone();
        params.max_tokens = params.max_tokens.min(n_ctx - prompt.len() - VERIFY_SLOTS);
        requests.push(Request {
            prompt,
            n: run.n,
            params,
            vote: run.vote.clone(),
        });
    }
    let largest = requests
        .iter()
        .map(|r| request_blocks(r, 0))
        .max()
        .unwrap_or(1);
    let options = SchedulerOptions {
        max_streams: run.parallel * run.n,
        max_queue: tasks.len(),
        max_n: run.n,
        kv_tokens: run.parallel * largest * BLOCK_SIZE,
        prefix_cache: true,
        ..Default::default()
    };
    let scheduler = Scheduler::start(engine.clone(), options)?;
    let submitted = requests
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            scheduler
                .submit(r)
                .with_context(|| format!("task {}", i + 1))
        })
        .collect::<Result<Vec<_>>>()?;
    for (i, mut request) in submitted.into_iter().enumerate() {
        loop {
            match request.events.blocking_recv() {
                Some(Event::Done(out)) => break record(i, &out),
                Some(Event::Failed(e)) => bail!("task {}: {e}", i + 1),
                Some(_) => {}
                None => bail!("task {}: the scheduler stopped", i + 1),
            }
        }
    }
    Ok(())
}

/// One task's outcome from its candidates and vote.
fn eval_item(task: &EvalTask, out: &BestOfN) -> EvalItem {
    let k = out.candidates.len() as f64;
    let mean = |f: &dyn Fn(&Candidate) -> usize| {
        out.candidates.iter().map(|c| f(c) as f64).sum::<f64>() / k
    };
    EvalItem {
        prompt: task.prompt.clone(),
        expected: task.answer.clone(),
        correct: out
            .answer
            .as_deref()
            .is_some_and(|a| a == normalize(&task.answer)),
        answer: out.answer.clone(),
        difficulty: task.difficulty.clone(),
        reasoning: out.reasoning,
        switcher_probability: out.switcher_probability,
        thinking_tokens: mean(&|c| c.thinking_tokens),
        answer_tokens: mean(&|c| c.answer_tokens),
        forced: out.candidates.iter().filter(|c| c.forced).count(),
        candidates: out.candidates.len(),
        candidate_answers: out.candidates.iter().map(|c| c.answer.clone()).collect(),
        verifier_scores: out.candidates.iter().map(|c| c.verifier_score).collect(),
        candidate_texts: out.candidates.iter().map(|c| c.text.clone()).collect(),
        candidate_tokens: out.candidates.iter().map(|c| c.tokens.clone()).collect(),
        candidate_logprobs: out.candidates.iter().map(|c| c.logprob).collect(),
    }
}

/// The run's figures over its items.
fn report(items: Vec<EvalItem>, n: usize, seconds: f64) -> EvalReport {
    let t = items.len() as f64;
    let total_c: f64 = items.iter().map(|i| i.candidates as f64).sum();
    let mean = |f: &dyn Fn(&EvalItem) -> f64| {
        items
            .iter()
            .map(|i| f(i) * i.candidates as f64)
            .sum::<f64>()
            / total_c
    };
    let labelled: Vec<&EvalItem> = items
        .iter()
        .filter(|i| i.difficulty.is_some() && i.switcher_probability.is_some())
        .collect();
    let routing_accuracy = (!labelled.is_empty()).then(|| {
        labelled
            .iter()
            .filter(|i| i.reasoning == (i.difficulty.as_deref() == Some("hard")))
            .count() as f64
            / labelled.len() as f64
    });
    let vote_at = vote_sizes(n)
        .into_iter()
        .map(|k| vote_accuracy(&items, k))
        .collect();
    EvalReport {
        tasks: items.len(),
        accuracy: items.iter().filter(|i| i.correct).count() as f64 / t,
        mean_thinking_tokens: mean(&|i| i.thinking_tokens),
        mean_answer_tokens: mean(&|i| i.answer_tokens),
        mean_tokens: mean(&|i| i.thinking_tokens + i.answer_tokens),
        forced_fraction: items.iter().map(|i| i.forced as f64).sum::<f64>() / total_c,
        reasoning_fraction: items.iter().filter(|i| i.reasoning).count() as f64 / t,
        routing_accuracy,
        by_difficulty: by_difficulty(&items),
        vote_at,
        seconds,
        items,
    }
}

/// Per difficulty label: (tasks, accuracy, mean tokens).
fn by_difficulty(items: &[EvalItem]) -> std::collections::BTreeMap<String, (usize, f64, f64)> {
    let mut out = std::collections::BTreeMap::new();
    for label in items
        .iter()
        .filter_map(|i| i.difficulty.clone())
        .collect::<std::collections::BTreeSet<_>>()
    {
        let group: Vec<&EvalItem> = items
            .iter()
            .filter(|i| i.difficulty.as_deref() == Some(&label))
            .collect();
        let g = group.len() as f64;
        let acc = group.iter().filter(|i| i.correct).count() as f64 / g;
        let len = group
            .iter()
            .map(|i| i.thinking_tokens + i.answer_tokens)
            .sum::<f64>()
            / g;
        out.insert(label, (group.len(), acc, len));
    }
    out
}

/// 1, 2, 4, … below `n`, then `n`.
fn vote_sizes(n: usize) -> Vec<usize> {
    let mut ks: Vec<usize> = std::iter::successors(Some(1usize), |k| Some(k * 2))
        .take_while(|&k| k < n)
        .collect();
    ks.push(n.max(1));
    ks
}

fn vote_accuracy(items: &[EvalItem], k: usize) -> VoteAt {
    let correct = |item: &EvalItem, weights: &[f32]| {
        let k = k.min(item.candidate_answers.len());
        vote(
            &item.candidate_answers[..k],
            &weights[..k.min(weights.len())],
        )
        .0
        .is_some_and(|a| a == normalize(&item.expected))
    };
    let t = items.len().max(1) as f64;
    let majority = items
        .iter()
        .filter(|i| correct(i, &vec![1.0; i.candidate_answers.len()]))
        .count() as f64
        / t;
    let weighted = items
        .iter()
        .map(|i| i.verifier_scores.as_ref().map(|s| correct(i, s)))
        .collect::<Option<Vec<bool>>>()
        .map(|c| c.iter().filter(|&&b| b).count() as f64 / t);
    VoteAt {
        candidates: k,
        majority_accuracy: majority,
        weighted_accuracy: weighted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(expected: &str, answers: &[&str], scores: Option<&[f32]>) -> EvalItem {
        EvalItem {
            prompt: String::new(),
            expected: expected.into(),
            answer: None,
            correct: false,
            difficulty: None,
            reasoning: true,
            switcher_probability: None,
            thinking_tokens: 0.0,
            answer_tokens: 0.0,
            forced: 0,
            candidates: answers.len(),
            candidate_answers: answers
                .iter()
                .map(|a| (!a.is_empty()).then(|| a.to_string()))
                .collect(),
            verifier_scores: scores.map(|s| s.to_vec()),
            candidate_texts: vec![String::new(); answers.len()],
            candidate_tokens: vec![Vec::new(); answers.len()],
            candidate_logprobs: vec![0.0; answers.len()],
        }
    }

    #[test]
    fn vote_sizes_are_powers_of_two_then_n() {
        assert_eq!(vote_sizes(8), vec![1, 2, 4, 8]);
        assert_eq!(vote_sizes(6), vec![1, 2, 4, 6]);
        assert_eq!(vote_sizes(1), vec![1]);
    }

    #[test]
    fn votes_over_the_first_k_candidates() {
        // Task 1: the first candidate is wrong, the majority of 4 right, the verifier
        // prefers the wrong one. Task 2: right only at k = 1.
        let items = vec![
            item("7", &["6", "7", "7", "5"], Some(&[0.9, 0.1, 0.1, 0.2])),
            item("3", &["3", "4", "4", ""], Some(&[0.9, 0.2, 0.2, 0.9])),
        ];
        let at = |k| vote_accuracy(&items, k);
        assert_eq!(
            (at(1).majority_accuracy, at(1).weighted_accuracy),
            (0.5, Some(0.5))
        );
        assert_eq!(
            (at(4).majority_accuracy, at(4).weighted_accuracy),
            (0.5, Some(0.5))
        );
        // k = 2: 6 vs 7 tie → first seen (6) wins for task 1; 3 vs 4 → 3 wins.
        assert_eq!(at(2).majority_accuracy, 0.5);
        let no_verifier = vec![item("7", &["6", "7", "7"], None)];
        assert_eq!(vote_accuracy(&no_verifier, 3).weighted_accuracy, None);
        assert_eq!(vote_accuracy(&no_verifier, 3).majority_accuracy, 1.0);
    }
}
