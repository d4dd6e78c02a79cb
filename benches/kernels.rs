//! Kernel microbenchmarks: the int4 GEMV at M = 1..16 rows (decode with N streams reads
//! each weight once for all rows) against the plain read kernel over the same bytes.
//! Throughput is reported in bytes of weights, so criterion prints GB/s.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use edgereason::gpu::GpuContext;
use edgereason::loader::Q4Group;
use edgereason::ops::{self, matmul_int4::{MatmulIo, QuantGroups, QuantMatrix}};

fn kernels(c: &mut Criterion) {
    let ctx = GpuContext::new(None).expect("a GPU adapter");
    // Qwen2.5-0.5B's fused gate|up projection.
    let (n, k) = (2 * 4864, 896);
    let groups: Vec<Q4Group> = (0..n * k / 32).map(|i| Q4Group { scale: 0.01, min: -0.08, q: std::array::from_fn(|j| ((i + j) % 16) as u8) }).collect();
    let w = QuantMatrix::upload(&ctx, "w", n, k, QuantGroups::Int4(&groups));
    let xq = ctx.storage("xq", (16 * k) as u64);
    let xs = ctx.storage("xs", (16 * k / 32 * 16) as u64);
    let out = ctx.storage("out", (16 * n * 4) as u64);
    let partials = ctx.storage("partials", ops::matmul_int4::partial_bytes(&ctx, &w));
    let io = MatmulIo { xq: &xq, xs: &xs, out: &out, out_stride: n, out_offset: 0, bias: None, accumulate: false, partials: &partials };
    let mm = ops::matmul_int4::matmul_int4(&ctx, "gemv", &w, &io);
    let refs: Vec<_> = mm.iter().collect();
    let mut g = c.benchmark_group(format!("matmul_int4 {n}x{k} on {}", ctx.describe()));
    g.sample_size(20);
    g.throughput(Throughput::Bytes(w.bytes()));
    for m in [1u32, 2, 4, 8, 16] {
        g.bench_function(format!("M={m}"), |b| b.iter(|| ops::run_once(&ctx, &refs, m, 0)));
    }
    let src = ctx.storage("src", w.bytes());
    let dst = ctx.storage("dst", 64 * 1024 * 4);
    let rd = ops::read_bandwidth::read_bandwidth(&ctx, &src, (w.bytes() / 4) as usize, 64 * 1024, &dst);
    g.bench_function("read kernel (same bytes)", |b| b.iter(|| ops::run_once(&ctx, &[&rd], 1, 0)));
    g.finish();
}

criterion_group!(benches, kernels);
criterion_main!(benches);
