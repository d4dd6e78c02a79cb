//! Counters, gauges and latency histograms of a [`super::Scheduler`], rendered as
//! Prometheus text.

use std::collections::BTreeMap;
use std::fmt::Write;

/// Cumulative histogram with fixed bucket bounds (seconds).
#[derive(Clone, Debug)]
pub struct Histogram {
    pub bounds: Vec<f64>,
    pub counts: Vec<u64>,
    pub sum: f64,
    pub count: u64,
}

impl Histogram {
    pub fn new(bounds: &[f64]) -> Self {
        Histogram {
            bounds: bounds.to_vec(),
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    pub fn observe(&mut self, v: f64) {
        for (b, c) in self.bounds.iter().zip(self.counts.iter_mut()) {
            if v <= *b {
                *c += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {c}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}\n{name}_count {}", self.sum, self.count);
    }
}

const LATENCY_BOUNDS: [f64; 12] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// What the scheduler has done and holds now.
#[derive(Clone, Debug)]
pub struct Metrics {
    pub admitted: u64,
    pub completed: u64,
    pub failed: u64,
    pub cancelled: u64,
    /// Refused with a full queue.
    pub rejected: u64,
    pub prompt_tokens: u64,
    /// Prompt tokens served from the prefix cache.
    pub cached_prompt_tokens: u64,
    pub generated_tokens: u64,
    /// Batched decode steps, and those submitted fed the last step's draws before the host
    /// read them (pipelined).
    pub decode_steps: u64,
    pub decode_steps_fed_ahead: u64,
    /// Compute pipelines (kernel variants) built on the scheduler's device in all, and
    /// those of them built while idle, before a step needed them (the rest stalled a step).
    pub pipelines_compiled: u64,
    pub pipelines_warmed: u64,
    /// Kernel variants a step may still have to build (0 once warmed up).
    pub pipelines_cold: usize,
    pub running: usize,
    pub queued: usize,
    pub live_streams: usize,
    /// The most candidate streams one decode step has decoded (requests batched together).
    pub peak_step_streams: usize,
    pub kv_blocks_total: usize,
    pub kv_blocks_free: usize,
    /// Blocks only the prefix cache holds (free once evicted).
    pub kv_blocks_cached_only: usize,
    pub prefix_cache_entries: usize,
    /// Requests by the adapter that decoded them ("none": the base model).
    pub per_adapter: BTreeMap<String, u64>,
    /// Submission to the first token's logits (seconds).
    pub ttft: Histogram,
    /// Between a request's consecutive decode steps (seconds).
    pub inter_token: Histogram,
    pub started: std::time::Instant,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            admitted: 0,
            completed: 0,
            failed: 0,
            cancelled: 0,
            rejected: 0,
            prompt_tokens: 0,
            cached_prompt_tokens: 0,
            generated_tokens: 0,
            decode_steps: 0,
            decode_steps_fed_ahead: 0,
            pipelines_compiled: 0,
            pipelines_warmed: 0,
            pipelines_cold: 0,
            running: 0,
            queued: 0,
            live_streams: 0,
            peak_step_streams: 0,
            kv_blocks_total: 0,
            kv_blocks_free: 0,
            kv_blocks_cached_only: 0,
            prefix_cache_entries: 0,
            per_adapter: BTreeMap::new(),
            ttft: Histogram::new(&LATENCY_BOUNDS),
            inter_token: Histogram::new(&LATENCY_BOUNDS),
            started: std::time::Instant::now(),
        }
    }
}

impl Metrics {
    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        self.render_counters(&mut out);
        self.render_gauges(&mut out);
        self.render_per_adapter(&mut out);
        self.ttft.render(
            &mut out,
            "edgereason_time_to_first_token_seconds",
            "Submission to the first token.",
        );
        self.inter_token.render(
            &mut out,
            "edgereason_inter_token_seconds",
            "Between a request's decode steps.",
        );
        out
    }

    fn render_counters(&self, out: &mut String) {
        let counters = [
            (
                "edgereason_requests_admitted_total",
                "Requests admitted.",
                self.admitted,
            ),
            (
                "edgereason_requests_completed_total",
                "Requests answered.",
                self.completed,
            ),
            (
                "edgereason_requests_failed_total",
                "Requests that failed.",
                self.failed,
            ),
            (
                "edgereason_requests_cancelled_total",
                "Requests cancelled by their client.",
                self.cancelled,
            ),
            (
                "edgereason_requests_rejected_total",
                "Requests refused with a full queue.",
                self.rejected,
            ),
            (
                "edgereason_prompt_tokens_total",
                "Prompt tokens.",
                self.prompt_tokens,
            ),
            (
                "edgereason_prompt_tokens_cached_total",
                "Prompt tokens served from the prefix cache.",
                self.cached_prompt_tokens,
            ),
            (
                "edgereason_generated_tokens_total",
                "Tokens decoded.",
                self.generated_tokens,
            ),
            (
                "edgereason_decode_steps_total",
                "Batched decode steps.",
                self.decode_steps,
            ),
            (
                "edgereason_decode_steps_fed_ahead_total",
                "Decode steps submitted before the last step's tokens were read (pipelined).",
                self.decode_steps_fed_ahead,
            ),
            (
                "edgereason_pipelines_compiled_total",
                "Compute pipelines (kernel variants) built.",
                self.pipelines_compiled,
            ),
            (
                "edgereason_pipelines_warmed_total",
                "Compute pipelines built while idle, before a step needed them.",
                self.pipelines_warmed,
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        }
    }

    fn render_gauges(&self, out: &mut String) {
        let secs = self.started.elapsed().as_secs_f64().max(1e-9);
        let gauges = [
            (
                "edgereason_requests_running",
                "Requests being encoded or decoded.",
                self.running as f64,
            ),
            (
                "edgereason_requests_queued",
                "Requests waiting for admission.",
                self.queued as f64,
            ),
            (
                "edgereason_streams_live",
                "Candidate streams of running requests.",
                self.live_streams as f64,
            ),
            (
                "edgereason_step_streams_peak",
                "The most candidate streams one decode step has decoded.",
                self.peak_step_streams as f64,
            ),
            (
                "edgereason_generated_tokens_per_second",
                "Decoded tokens per second since start.",
                self.generated_tokens as f64 / secs,
            ),
            (
                "edgereason_pipelines_cold",
                "Kernel variants a step may still have to build (0 once warmed up).",
                self.pipelines_cold as f64,
            ),
            (
                "edgereason_kv_blocks_total",
                "KV cache blocks.",
                self.kv_blocks_total as f64,
            ),
            (
                "edgereason_kv_blocks_free",
                "KV cache blocks free.",
                self.kv_blocks_free as f64,
            ),
            (
                "edgereason_kv_blocks_used",
                "KV cache blocks in use.",
                (self.kv_blocks_total - self.kv_blocks_free) as f64,
            ),
            (
                "edgereason_kv_blocks_cached_only",
                "KV cache blocks only the prefix cache holds.",
                self.kv_blocks_cached_only as f64,
            ),
            (
                "edgereason_prefix_cache_entries",
                "Prompts in the prefix cache.",
                self.prefix_cache_entries as f64,
            ),
        ];
        for (name, help, v) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
    }

    fn render_per_adapter(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP edgereason_requests_by_adapter_total Requests by adapter.\n# TYPE edgereason_requests_by_adapter_total counter");
        for (a, n) in &self.per_adapter {
            let _ = writeln!(
                out,
                "edgereason_requests_by_adapter_total{{adapter=\"{a}\"}} {n}"
            );
        }
    }
}
