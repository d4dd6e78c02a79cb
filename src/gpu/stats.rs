//! Counters of what the host asks of the GPU: launches, compute passes, submissions, bytes
//! read back, and host time spent encoding and submitting steps. `bench` reads them around
//! a decode step to report its fixed cost, which on a fast GPU is most of a small model's
//! token time.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Running totals since the context was made.
#[derive(Debug, Default)]
pub struct GpuStats {
    dispatches: AtomicU64,
    passes: AtomicU64,
    submits: AtomicU64,
    readback_bytes: AtomicU64,
    host_encode_ns: AtomicU64,
    pipelines_compiled: AtomicU64,
    compile_ns: AtomicU64,
}

/// The totals at one moment; subtract two to get what happened in between.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct StatsSnapshot {
    pub dispatches: u64,
    pub passes: u64,
    pub submits: u64,
    pub readback_bytes: u64,
    /// Host time recording and submitting forward steps (not waiting for them).
    pub host_encode_ns: u64,
    /// Compute pipelines built (a kernel variant's first use, or a warm-up).
    pub pipelines_compiled: u64,
    /// Host time building them (shader translation and the driver's compile).
    pub compile_ns: u64,
}

impl GpuStats {
    pub fn dispatch(&self) {
        self.dispatches.fetch_add(1, Relaxed);
    }
    pub fn pass(&self) {
        self.passes.fetch_add(1, Relaxed);
    }
    pub fn submit(&self) {
        self.submits.fetch_add(1, Relaxed);
    }
    pub fn readback(&self, bytes: u64) {
        self.readback_bytes.fetch_add(bytes, Relaxed);
    }
    pub fn host_encode(&self, elapsed: std::time::Duration) {
        self.host_encode_ns
            .fetch_add(elapsed.as_nanos() as u64, Relaxed);
    }

    pub fn compiled(&self, elapsed: std::time::Duration) {
        self.pipelines_compiled.fetch_add(1, Relaxed);
        self.compile_ns
            .fetch_add(elapsed.as_nanos() as u64, Relaxed);
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            dispatches: self.dispatches.load(Relaxed),
            passes: self.passes.load(Relaxed),
            submits: self.submits.load(Relaxed),
            readback_bytes: self.readback_bytes.load(Relaxed),
            host_encode_ns: self.host_encode_ns.load(Relaxed),
            pipelines_compiled: self.pipelines_compiled.load(Relaxed),
            compile_ns: self.compile_ns.load(Relaxed),
        }
    }
}

impl std::ops::Sub for StatsSnapshot {
    type Output = StatsSnapshot;
    fn sub(self, o: StatsSnapshot) -> StatsSnapshot {
        StatsSnapshot {
            dispatches: self.dispatches - o.dispatches,
            passes: self.passes - o.passes,
            submits: self.submits - o.submits,
            readback_bytes: self.readback_bytes - o.readback_bytes,
            host_encode_ns: self.host_encode_ns - o.host_encode_ns,
            pipelines_compiled: self.pipelines_compiled - o.pipelines_compiled,
            compile_ns: self.compile_ns - o.compile_ns,
        }
    }
}
