//! Kernel microbenchmarks: the int4 GEMV at M = 1..16 rows (decode with N streams reads
//! each weight once for all rows) against the plain read kernel over the same bytes, and
//! decode attention for N = 1..16 streams over a shared 2048-token prompt: the shared-prefix
//! pass against the per-stream kernel over copied KV. Throughput is reported in bytes of
//! weights (GEMV) and of K/V attended (attention), so criterion prints GB/s.

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
    let w = QuantMatrix::upload(&ctx, "w", n, k, QuantGroups::Int4(&groups));
    let xq = ctx.storage("xq", (16 * k) as u64);
    let xs = ctx.storage("xs", (16 * k / 32 * 16) as u64);
    let out = ctx.storage("out", (16 * n * 4) as u64);
    let partials = ctx.storage("partials", ops::matmul_int4::partial_bytes(&ctx, &w));
    let io = MatmulIo {
        xq: &xq,
        xs: &xs,
        out: &out,
        out_stride: n,
        out_offset: 0,
        bias: None,
        accumulate: false,
        partials: &partials,
        lora: None,
        swiglu: None,
    };
    let mm = ops::matmul_int4::matmul_int4(&ctx, "gemv", &w, &io);
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
            let list = case.attention(
                &ctx,
                AttentionPlan {
                    keys_per_split: kps,
                    shared_prefix,
                    flash_prefill: false,
                },
            );
            let refs: Vec<_> = list.iter().collect();
            let step = case.step();
            g.bench_function(format!("N={n} {name}"), |b| {
                b.iter(|| ops::run_step(&ctx, &refs, &step))
            });
        }
    }
    g.finish();
}

criterion_group!(benches, kernels, attention);
criterion_main!(benches);
