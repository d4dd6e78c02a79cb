//! Kernel microbenchmarks: the int4 GEMV at M = 1..16 rows (decode with N streams reads
//! each weight once for all rows) against the plain read kernel over the same bytes, and
//! decode attention for N = 1..16 streams over a shared 2048-token prompt: the shared-prefix
//! pass against the per-stream kernel over copied KV; and GPU sampling over Qwen2.5's
//! 151,936 logits for 1 and 8 rows, greedy and top-p. Throughput is reported in bytes of
//! weights (GEMV), of K/V attended (attention) and of logits read (sampling), so criterion
//! prints GB/s.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use edgereason::gpu::GpuContext;
use edgereason::loader::Q4Group;
use edgereason::ops::{
    self,
    matmul_int4::{MatmulIo, QuantGroups, QuantMatrix},
};

fn kernels(c: &mut Criterion) {
    let ctx = GpuContext::new(None).expect("a GPU adapter");
    // Qwen2.5-0.5B's fused gate|up projection.
    let (n, k) = (2 * 4864, 896);
    let groups: Vec<Q4Group> = (0..n * k / 32)
        .map(|i| Q4Group {
            scale: 0.01,
            min: -0.08,
            q: std::array::from_fn(|j| ((i + j) % 16) as u8),
        })
        .collect();
    let w = QuantMatrix::upload(&ctx, "w", n, k, QuantGroups::Int4(&groups)).unwrap();
    let xq = ctx.storage("xq", (16 * k) as u64);
    let xs = ctx.storage("xs", (16 * k / 32 * 16) as u64);
    let out = ctx.storage("out", (16 * n * 4) as u64);
    let partials = ctx.storage("partials", ops::matmul_int4::partial_bytes(&ctx, &w));
    let io = MatmulIo::new(&xq, &xs, &out, n, &partials);
    let mm = ops::matmul_int4::matmul_int4(&ctx, "gemv", &w, &io).unwrap();
    let refs: Vec<_> = mm.iter().collect();
    let mut g = c.benchmark_group(format!("matmul_int4 {n}x{k} on {}", ctx.describe()));
    g.sample_size(20);
    g.throughput(Throughput::Bytes(w.bytes()));
    for m in [1u32, 2, 4, 8, 16] {
        g.bench_function(format!("M={m}"), |b| {
            b.iter(|| ops::run_once(&ctx, &refs, m, 0))
        });
    }
    let src = ctx.storage("src", w.bytes());
    let dst = ctx.storage("dst", 64 * 1024 * 4);
    let rd =
        ops::read_bandwidth::read_bandwidth(&ctx, &src, (w.bytes() / 4) as usize, 64 * 1024, &dst);
    g.bench_function("read kernel (same bytes)", |b| {
        b.iter(|| ops::run_once(&ctx, &[&rd], 1, 0))
    });
    g.finish();
}

fn attention(c: &mut Criterion) {
    use edgereason::ops::attention::{keys_per_split, AttentionPlan, StreamsOverPrompt};
    let ctx = GpuContext::new(None).expect("a GPU adapter");
    // One layer of Qwen2.5-0.5B: 14 query heads over 2 KV heads of 64; 2048-token prompt,
    // 64 tokens of each stream's own.
    let (shape, prompt, own) = ((14, 2, 64), 2048, 64);
    let block = edgereason::model::forward::BLOCK_SIZE;
    let mut g = c.benchmark_group(format!(
        "attention 14/2x64, {prompt}-token shared prompt on {}",
        ctx.describe()
    ));
    g.sample_size(10);
    for n in [1usize, 2, 4, 8, 16] {
        let shared = StreamsOverPrompt::new(&ctx, shape, prompt, &vec![own; n], block, true, 1);
        let copied = StreamsOverPrompt::new(&ctx, shape, prompt, &vec![own; n], block, false, 1);
        g.throughput(Throughput::Bytes(shared.attended_kv_bytes()));
        let kps = keys_per_split(&ctx);
        for (name, case, shared_prefix) in [
            ("shared-prefix pass", &shared, true),
            ("per-stream, copied KV", &copied, false),
        ] {
            let list = case
                .attention(
                    &ctx,
                    AttentionPlan {
                        keys_per_split: kps,
                        shared_prefix,
                        flash_prefill: false,
                        split_one_stream: true,
                        one_stream_slices: 1,
                    },
                )
                .unwrap();
            let refs: Vec<_> = list.iter().collect();
            let step = case.step();
            g.bench_function(format!("N={n} {name}"), |b| {
                b.iter(|| ops::run_step(&ctx, &refs, &step))
            });
        }
    }
    g.finish();
}

fn sampling(c: &mut Criterion) {
    use edgereason::ops::sampling::SampleRow;
    let ctx = GpuContext::new(None).expect("a GPU adapter");
    // Qwen2.5's vocabulary; logits spread like a model's (a few tokens carry most mass).
    let n_vocab = 151_936usize;
    let logits: Vec<f32> = (0..8 * n_vocab)
        .map(|i| ((i as u64).wrapping_mul(2654435761) % 4096) as f32 / 4096.0 * 24.0 - 12.0)
        .collect();
    let lb = ctx.storage_from("logits", &logits);
    let [rows, out, top] = ops::sampling::SamplingIo::allocate(&ctx, 8);
    let next = ctx.storage("next_tokens", 8 * 4);
    let io = ops::sampling::SamplingIo {
        rows: &rows,
        out: &out,
        next_tokens: &next,
        top: &top,
    };
    let d = ops::sampling::sampling(&ctx, "sampling", &lb, n_vocab, &io).unwrap();
    let mut g = c.benchmark_group(format!(
        "sampling over {n_vocab} logits on {}",
        ctx.describe()
    ));
    g.sample_size(10);
    for m in [1u32, 8] {
        g.throughput(Throughput::Bytes(m as u64 * n_vocab as u64 * 4));
        for (name, temperature, top_p, top_n) in [
            ("greedy", 0.0f32, 1.0f32, 0u32),
            ("greedy + top 5 listed", 0.0, 1.0, 5),
            ("top-p 0.9, T 0.8", 0.8, 0.9, 0),
        ] {
            let settings: Vec<SampleRow> = (0..m)
                .map(|r| SampleRow {
                    temperature,
                    top_k: 0,
                    top_p,
                    seed_lo: r,
                    seed_hi: 0,
                    step: 0,
                    logits_row: r,
                    top_n,
                })
                .collect();
            ctx.queue
                .write_buffer(&rows, 0, bytemuck::cast_slice(&settings));
            g.bench_function(format!("rows={m} {name}"), |b| {
                b.iter(|| ops::run_once(&ctx, &[&d], m, 0))
            });
        }
    }
    g.finish();
}

criterion_group!(benches, kernels, attention, sampling);
criterion_main!(benches);
