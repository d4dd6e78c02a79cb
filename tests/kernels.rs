//! Every kernel against its plain-Rust reference on shapes that are not multiples of the
//! tile sizes, on each backend present (Vulkan = lavapipe here, and the GL backend, which
//! has neither f16 nor subgroups).

mod common;

use common::{contexts, path, rand_vec};
use edgereason::loader::{quantize_q4, HostTensor, TensorData};
use edgereason::ops::{
    self,
    matmul_int4::{MatmulIo, QuantGroups, QuantMatrix},
};
use std::sync::Arc;

/// k splits the matmul tests force: uneven (k/32 groups not a multiple of 3) and more
/// than one, so the split-K path and its reduce pass run on every backend.
fn k_splits_for_test(k: usize) -> usize {
    3.min(k / 32)
}

/// (k splits across workgroups, k slices inside one) as GPUs take them — across with a
/// reduce launch, inside alone, both — for a k-deep matmul (lavapipe alone takes (1, 1)).
fn split_configs(k: usize) -> [(u32, u32); 3] {
    let s = k_splits_for_test(k) as u32;
    [(s, 1), (1, s), (2.min(s), s)]
}

/// No splits, then [`split_configs`] (an epilogue runs in the matmul or in the reduce).
fn epilogue_configs(k: usize) -> impl Iterator<Item = (u32, u32)> {
    std::iter::once((1, 1)).chain(split_configs(k))
}

fn assert_close(what: &str, got: &[f32], want: &[f32], atol: f32, rtol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= atol + rtol * w.abs(),
            "{what}: index {i}: got {g}, expected {w} (atol {atol}, rtol {rtol})"
        );
    }
}

fn quantized(n: usize, k: usize, seed: u64) -> (Vec<edgereason::loader::Q4Group>, Vec<f32>) {
    let w = rand_vec(n * k, seed);
    let groups: Vec<_> = w.chunks(k).flat_map(quantize_q4).collect();
    let deq = HostTensor {
        shape: vec![n, k],
        data: TensorData::Q4(groups.clone()),
    }
    .to_f32();
    (groups, deq)
}

#[test]
fn matmul_int4_matches_reference() {
    for ctx in contexts() {
        // n not a multiple of 64, k not of 64/128; m covers 1, odd, > 16 (tiled), and
        // the matrix is forced into several binding chunks.
        for &(n, k, m, limit) in &[
            (77usize, 96usize, 1usize, u64::MAX),
            (130, 160, 3, 2048),
            (67, 224, 17, u64::MAX),
            (45, 32, 40, 512),
        ] {
            let (groups, w) = quantized(n, k, 7 + n as u64);
            let x = rand_vec(m * k, 3 + m as u64);
            let bias = rand_vec(n, 11);
            let mat = QuantMatrix::upload_with_limit(
                &ctx,
                "w",
                n,
                k,
                QuantGroups::Int4(&groups),
                limit.min(ctx.max_binding()),
            )
            .unwrap();
            if limit < u64::MAX {
                assert!(mat.chunks.len() > 1, "limit {limit} should split {n}x{k}");
            }
            let xb = ctx.storage_from("x", &x);
            let xq = ctx.storage("xq", (m * k) as u64);
            let xs = ctx.storage("xs", (m * k / 32 * 16) as u64);
            let bb = ctx.storage_from("bias", &bias);
            let prev = rand_vec(m * n, 5);
            let quant = ops::quantize_act::quantize_act(&ctx, "q", &xb, k, k, &xq, &xs);
            // k splits as a GPU would take them (lavapipe alone would never split).
            for (splits, slices) in split_configs(k) {
                let out = ctx.storage_from("out", &prev);
                let partials =
                    ctx.storage("partials", (splits as usize * m.max(16) * n * 4) as u64);
                let io = MatmulIo {
                    bias: Some(&bb),
                    accumulate: true,
                    ..MatmulIo::new(&xq, &xs, &out, n, &partials)
                };
                let mm = ops::matmul_int4::matmul_int4_with_splits(
                    &ctx, "mm", &mat, &io, splits, slices,
                )
                .unwrap();
                let mut list = vec![&quant];
                list.extend(mm.iter());
                ops::run_once(&ctx, &list, m as u32, 0);
                let got: Vec<f32> = ctx.read(&out, 0, m * n).unwrap();
                // The kernel multiplies int8-quantized activations: compare against that exactly
                // (tight), and against plain f32 x (loose: the quantization error itself).
                // Per group the kernel computes scale·(Σ q·x̂ + 8·(Σx − Σx̂)) + min·Σx, with x̂
                // the int8-rounded activations and Σx exact (centred weights times x̂).
                let xqf = ops::quantize_act::reference(&x);
                let mut want = prev.clone();
                for r in 0..m {
                    for c in 0..n {
                        let mut acc = bias[c];
                        for g in 0..k / 32 {
                            let grp = &groups[c * k / 32 + g];
                            let xi = r * k + g * 32;
                            let sq: f32 = (0..32).map(|i| grp.q[i] as f32 * xqf[xi + i]).sum();
                            let sx: f32 = x[xi..xi + 32].iter().sum();
                            let sxq: f32 = xqf[xi..xi + 32].iter().sum();
                            acc += grp.scale * (sq + 8.0 * (sx - sxq)) + grp.min * sx;
                        }
                        want[r * n + c] += acc;
                    }
                }
                assert_close(
                    &format!(
                        "{} matmul n={n} k={k} m={m} splits {splits}x{slices}",
                        path(&ctx)
                    ),
                    &got,
                    &want,
                    2e-3,
                    2e-3,
                );
                let want_f32: Vec<f32> = ops::matmul_int4::reference(&w, n, k, &x, m, Some(&bias))
                    .iter()
                    .zip(&prev)
                    .map(|(a, b)| a + b)
                    .collect();
                let err: f32 = got
                    .iter()
                    .zip(&want_f32)
                    .map(|(a, b)| (a - b) * (a - b))
                    .sum::<f32>()
                    .sqrt();
                let norm: f32 = want_f32.iter().map(|a| a * a).sum::<f32>().sqrt();
                assert!(err / norm < 0.01, "matmul vs f32 activations: relative error {} (int8 activations should stay under 1%)", err / norm);
            }
        }
    }
}

/// One prefill-GEMM case: an int4 (`int8` false) or int8 matrix `n`×`k` uploaded in chunks
/// of at most `limit` bytes, `m` activation rows, a bias and old output values (the
/// residual the kernel accumulates into).
struct GemmCase {
    mat: QuantMatrix,
    w: Vec<f32>,
    x: Vec<f32>,
    bias: Vec<f32>,
    prev: Vec<f32>,
}

impl GemmCase {
    fn new(
        ctx: &edgereason::gpu::GpuContext,
        (n, k, m): (usize, usize, usize),
        limit: u64,
        int8: bool,
    ) -> Self {
        let (groups4, groups8);
        let (groups, w) = if int8 {
            groups8 = rand_vec(n * k, 17 + n as u64)
                .chunks(k)
                .flat_map(edgereason::loader::quantize_q8)
                .collect::<Vec<_>>();
            let w = HostTensor {
                shape: vec![n, k],
                data: TensorData::Q8(groups8.clone()),
            }
            .to_f32();
            (QuantGroups::Int8(&groups8), w)
        } else {
            let w;
            (groups4, w) = quantized(n, k, 7 + n as u64);
            (QuantGroups::Int4(&groups4), w)
        };
        let mat =
            QuantMatrix::upload_with_limit(ctx, "w", n, k, groups, limit.min(ctx.max_binding()))
                .unwrap();
        if limit < u64::MAX {
            assert!(mat.chunks.len() > 1, "limit {limit} should split {n}x{k}");
        }
        let (x, bias, prev) = (
            rand_vec(m * k, 3 + m as u64),
            rand_vec(n, 11),
            rand_vec(m * n, 5),
        );
        GemmCase {
            mat,
            w,
            x,
            bias,
            prev,
        }
    }

    /// Run `launch` (the GEMM's dispatches over f32 rows, bias and residual on) for `m` rows
    /// and return the output.
    fn run(
        &self,
        ctx: &edgereason::gpu::GpuContext,
        m: usize,
        launch: impl Fn(&wgpu::Buffer, &MatmulIo) -> Vec<ops::Dispatch>,
    ) -> Vec<f32> {
        let n = self.mat.n;
        let xb = ctx.storage_from("x", &self.x);
        let (unused, scratch) = (ctx.storage("unused", 16), ctx.storage("scratch", 16));
        let bb = ctx.storage_from("bias", &self.bias);
        let out = ctx.storage_from("out", &self.prev);
        let io = MatmulIo {
            bias: Some(&bb),
            accumulate: true,
            ..MatmulIo::new(&unused, &unused, &out, n, &scratch)
        };
        let mm = launch(&xb, &io);
        let step = ops::Step {
            rows: m as u32,
            ..Default::default()
        };
        ops::run_forced(ctx, &mm.iter().collect::<Vec<_>>(), &step);
        ctx.read(&out, 0, m * n).unwrap()
    }

    /// The reference: bias + old value + Σ_k w·x, with `round` applied to every weight and
    /// activation first (identity for f32 kernels, f16 rounding for the tensor-core one).
    fn want(&self, m: usize, round: impl Fn(f32) -> f32) -> Vec<f32> {
        let (n, k) = (self.mat.n, self.mat.k);
        let w: Vec<f32> = self.w.iter().map(|&v| round(v)).collect();
        let x: Vec<f32> = self.x.iter().map(|&v| round(v)).collect();
        ops::matmul_int4::reference(&w, n, k, &x, m, Some(&self.bias))
            .iter()
            .zip(&self.prev)
            .map(|(a, b)| a + b)
            .collect()
    }
}

#[test]
fn prefill_gemm_matches_reference() {
    for ctx in contexts() {
        // Awkward n (a multiple of 4, the GEMM's quad, but not of any tile), k, m and
        // register tiles (ROWS x COLS quads), int4 and int8, several binding chunks; bias
        // and residual accumulation in the epilogue.
        let cases = [
            (76usize, 96usize, 17usize, u64::MAX, (16u32, 4u32)),
            (132, 160, 40, 2048, (3, 5)),
            (68, 224, 5, u64::MAX, (4, 1)),
            (44, 32, 33, 512, (8, 2)),
        ];
        for (i, &(n, k, m, limit, tile)) in cases.iter().enumerate() {
            // GPUs take tiles of at most max_tile_area accumulators (16 rows x 4 lost an
            // H200): the largest case runs 4x4 there.
            let tile = if tile.0 * tile.1 > ops::prefill_gemm::max_tile_area(&ctx) {
                (4, 4)
            } else {
                tile
            };
            let case = GemmCase::new(&ctx, (n, k, m), limit, i % 2 == 1);
            assert!(ops::prefill_gemm::fits(&case.mat));
            let got = case.run(&ctx, m, |x, io| {
                ops::prefill_gemm::gemm(&ctx, "gemm", &case.mat, x, io, tile).unwrap()
            });
            // f32 activations times the dequantized weights: only the summation order differs.
            let what = format!(
                "{} gemm {} n={n} k={k} m={m} tile {tile:?}",
                path(&ctx),
                if i % 2 == 0 { "int4" } else { "int8" }
            );
            assert_close(&what, &got, &case.want(m, |v| v), 1e-4, 1e-4);
        }
    }
}

/// The tensor-core prefill GEMM, on every context that offers cooperative matrices (none
/// with Mesa 22's lavapipe: tools/coop_check.sh runs this on a lavapipe that has them, and
/// tools/gpu_check.sh on the GPU, both with EDGEREASON_REQUIRE_COOP=1, which makes a
/// missing device a failure rather than a skip).
#[test]
fn prefill_coop_matches_reference() {
    let mut ran = 0;
    for ctx in contexts() {
        let Some(shape) = ops::prefill_coop::shape_for_device(&ctx) else {
            continue;
        };
        // n, m not multiples of any block; subgroup tiles 1x1, 2x2, 1x3, 3x1; int4 and int8;
        // several binding chunks; bias and residual in the epilogue.
        let cases = [
            (76usize, 96usize, 17usize, u64::MAX, (2u32, 2u32)),
            (132, 160, 40, 2048, (1, 3)),
            (68, 224, 5, u64::MAX, (1, 1)),
            (44, 32, 70, 512, (3, 1)),
            (200, 64, 33, u64::MAX, (2, 2)),
            (36, 128, 129, u64::MAX, (2, 1)),
        ];
        for (i, &(n, k, m, limit, (rows, cols))) in cases.iter().enumerate() {
            let case = GemmCase::new(&ctx, (n, k, m), limit, i % 2 == 1);
            let shape = ops::prefill_coop::CoopShape {
                rows,
                cols,
                ..shape
            };
            let got = case.run(&ctx, m, |x, io| {
                ops::prefill_coop::gemm(&ctx, "coop", &case.mat, x, io, shape)
            });
            // Weights and activations enter the matrix units as f16, sums stay f32.
            let f16 = |v: f32| half::f16::from_f32(v).to_f32();
            let what = format!(
                "{} coop {} n={n} k={k} m={m} {shape:?}",
                path(&ctx),
                if i % 2 == 0 { "int4" } else { "int8" }
            );
            assert_close(&what, &got, &case.want(m, f16), 2e-3, 2e-3);
            ran += 1;
        }
    }
    if std::env::var("EDGEREASON_REQUIRE_COOP").is_ok_and(|v| v == "1") {
        assert!(
            ran > 0,
            "EDGEREASON_REQUIRE_COOP=1 but no device offers f16 cooperative matrices"
        );
    }
}

#[test]
fn matmul_int8_matches_reference() {
    for ctx in contexts() {
        for &(n, k, m, limit) in &[
            (77usize, 96usize, 1usize, u64::MAX),
            (130, 160, 5, 4096),
            (33, 64, 19, u64::MAX),
        ] {
            let w = rand_vec(n * k, 17 + n as u64);
            let groups: Vec<_> = w
                .chunks(k)
                .flat_map(edgereason::loader::quantize_q8)
                .collect();
            let x = rand_vec(m * k, 5 + m as u64);
            let mat = QuantMatrix::upload_with_limit(
                &ctx,
                "w8",
                n,
                k,
                QuantGroups::Int8(&groups),
                limit.min(ctx.max_binding()),
            )
            .unwrap();
            if limit < u64::MAX {
                assert!(mat.chunks.len() > 1);
            }
            let xb = ctx.storage_from("x", &x);
            let xq = ctx.storage("xq", (m * k) as u64);
            let xs = ctx.storage("xs", (m * k / 32 * 16) as u64);
            let quant = ops::quantize_act::quantize_act(&ctx, "q", &xb, k, k, &xq, &xs);
            for (splits, slices) in split_configs(k) {
                let out = ctx.storage("out", (m * n * 4) as u64);
                let partials =
                    ctx.storage("partials", (splits as usize * m.max(16) * n * 4) as u64);
                let io = MatmulIo::new(&xq, &xs, &out, n, &partials);
                let mm = ops::matmul_int4::matmul_int4_with_splits(
                    &ctx, "mm8", &mat, &io, splits, slices,
                )
                .unwrap();
                let mut list = vec![&quant];
                list.extend(mm.iter());
                ops::run_once(&ctx, &list, m as u32, 0);
                let got: Vec<f32> = ctx.read(&out, 0, m * n).unwrap();
                // int8 · int8 is exact integer arithmetic: the reference is the dequantized
                // weights times the int8-rounded activations.
                let wd = HostTensor {
                    shape: vec![n, k],
                    data: TensorData::Q8(groups.clone()),
                }
                .to_f32();
                let want = ops::matmul_int4::reference(
                    &wd,
                    n,
                    k,
                    &ops::quantize_act::reference(&x),
                    m,
                    None,
                );
                assert_close(
                    &format!(
                        "{} int8 matmul n={n} k={k} m={m} splits {splits}x{slices}",
                        path(&ctx)
                    ),
                    &got,
                    &want,
                    1e-4,
                    1e-4,
                );
            }
        }
        // int8 embedding rows
        let (n_vocab, k) = (99usize, 64usize);
        let w = rand_vec(n_vocab * k, 3);
        let groups: Vec<_> = w
            .chunks(k)
            .flat_map(edgereason::loader::quantize_q8)
            .collect();
        let table = QuantMatrix::upload_with_limit(
            &ctx,
            "emb8",
            n_vocab,
            k,
            QuantGroups::Int8(&groups),
            2048,
        )
        .unwrap();
        let tokens: Vec<u32> = vec![98, 0, 41];
        let tb = ctx.storage_from("tok", &tokens);
        let out = ctx.storage("out", (tokens.len() * k * 4) as u64);
        let ds = ops::embedding::embedding(&ctx, "emb8", &table, &tb, &out);
        ops::run_once(&ctx, &ds.iter().collect::<Vec<_>>(), tokens.len() as u32, 0);
        let got: Vec<f32> = ctx.read(&out, 0, tokens.len() * k).unwrap();
        let wd = HostTensor {
            shape: vec![n_vocab, k],
            data: TensorData::Q8(groups),
        }
        .to_f32();
        let want: Vec<f32> = tokens
            .iter()
            .flat_map(|&t| wd[t as usize * k..(t as usize + 1) * k].to_vec())
            .collect();
        assert_close(
            &format!("{} int8 embedding", path(&ctx)),
            &got,
            &want,
            1e-6,
            1e-6,
        );
    }
}

/// The first `n` values of int8 blocks, dequantized on the CPU, and each block's Σx.
fn dequantize(
    ctx: &edgereason::gpu::GpuContext,
    xq: &wgpu::Buffer,
    xs: &wgpu::Buffer,
    n: usize,
) -> (Vec<f32>, Vec<f32>) {
    let q: Vec<u32> = ctx.read(xq, 0, n / 4).unwrap();
    let s: Vec<[f32; 4]> = ctx.read(xs, 0, n / 32).unwrap();
    let values = (0..n)
        .map(|i| (q[i / 4].to_le_bytes()[i % 4] as i8) as f32 * s[i / 32][0])
        .collect();
    (values, s.iter().map(|v| v[1]).collect())
}

#[test]
fn rmsnorm_and_swiglu_match_reference() {
    for ctx in contexts() {
        let (k, m) = (96usize, 5usize);
        let x = rand_vec(m * k, 1);
        let wt = rand_vec(k, 2);
        let xb = ctx.storage_from("x", &x);
        let wb = ctx.storage_from("w", &wt);
        let y = ctx.storage("y", (m * k * 4) as u64);
        let xq = ctx.storage("xq", (m * k) as u64);
        let xs = ctx.storage("xs", (m * k / 32 * 16) as u64);
        // rows 1..4 of x, as the LM head asks for a row range
        let d = ops::rmsnorm::rmsnorm(&ctx, "n", &xb, &wb, k, 1e-6, &y, &xq, &xs, false);
        ops::run_once(&ctx, &[&d], 3, 1);
        let got: Vec<f32> = ctx.read(&y, 0, 3 * k).unwrap();
        let want = ops::rmsnorm::reference(&x[k..4 * k], &wt, 1e-6);
        assert_close(&format!("{} rmsnorm", path(&ctx)), &got, &want, 1e-5, 1e-4);

        // rmsnorm_quant: the same rows straight into int8 blocks == quantize(norm(x)),
        // block sums included (the int4 kernel's min term reads them).
        let dq = ops::rmsnorm::rmsnorm(&ctx, "nq", &xb, &wb, k, 1e-6, &y, &xq, &xs, true);
        ops::run_once(&ctx, &[&dq], 3, 1);
        let (got, sums) = dequantize(&ctx, &xq, &xs, 3 * k);
        let what = format!("{} rmsnorm_quant", path(&ctx));
        assert_close(
            &what,
            &got,
            &ops::quantize_act::reference(&want),
            1e-5,
            1e-4,
        );
        let want_sums: Vec<f32> = want.chunks(32).map(|c| c.iter().sum()).collect();
        assert_close(&what, &sums, &want_sums, 1e-4, 1e-4);

        // SwiGLU into int8 blocks == quantize(silu(gate) · up)
        let n_ff = 160;
        let gu = rand_vec(m * 2 * n_ff, 9);
        let gub = ctx.storage_from("gu", &gu);
        let xq2 = ctx.storage("xq2", (m * n_ff) as u64);
        let xs2 = ctx.storage("xs2", (m * n_ff / 32 * 16) as u64);
        let sw = ops::swiglu::swiglu(&ctx, "sw", &gub, n_ff, &xq2, &xs2);
        ops::run_once(&ctx, &[&sw], m as u32, 0);
        let h = ops::swiglu::reference(&gu, n_ff);
        let (got, sums) = dequantize(&ctx, &xq2, &xs2, m * n_ff);
        assert_close(
            &format!("{} swiglu", path(&ctx)),
            &got,
            &ops::quantize_act::reference(&h),
            1e-5,
            1e-4,
        );
        let want_sums: Vec<f32> = h.chunks(32).map(|c| c.iter().sum()).collect();
        assert_close("swiglu group sums", &sums, &want_sums, 1e-4, 1e-4);
    }
}

#[test]
fn rope_and_attention_match_reference() {
    for ctx in contexts() {
        // GQA 6 query heads over 2 KV heads, head_dim 20 (not a power of two; the cache
        // read a word per load), and 4 over 2 of head_dim 40 (five vec4 loads a head);
        // 70 keys (more than one 64-key chunk), rows at scattered positions.
        for (n_head, n_kv, hd, n_ctx) in [(6usize, 2usize, 20usize, 80usize), (4, 2, 40, 80)] {
            let stride = (n_head + 2 * n_kv) * hd;
            let theta = 10000.0;
            // Fill the cache with `n_ctx` earlier tokens by running rope_store_kv on them.
            let hist = rand_vec(n_ctx * stride, 4);
            let positions: Vec<u32> = (0..n_ctx as u32).collect();
            let pos_b = ctx.storage_from("pos", &positions);
            // A paged cache with scrambled blocks of 8: position t lives in slot
            // perm[t / 8] * 8 + t % 8, and every row's table lists the blocks.
            let (bs, perm) = (8u32, [3u32, 7, 0, 9, 1, 5, 2, 8, 4, 6]);
            let slots: Vec<u32> = positions
                .iter()
                .map(|&t| perm[(t / bs) as usize] * bs + t % bs)
                .collect();
            let slots_b = ctx.storage_from("slots", &slots);
            let table_rows = |rows: usize| ctx.storage_from("tables", &perm.repeat(rows));
            let kc = ctx.storage("k", (n_ctx * n_kv * hd * 2) as u64); // 80 slots = 10 blocks of 8
            let vc = ctx.storage("v", (n_ctx * n_kv * hd * 2) as u64);
            let qkv = ctx.storage_from("qkv", &hist);
            let out = ctx.storage("out", (n_ctx * n_head * hd * 4) as u64);
            let rope = ops::rope::rope_store_kv(
                &ctx, "rope", &qkv, &pos_b, &slots_b, &kc, &vc, n_head, n_kv, hd, theta,
            );
            let (po, pml) = ops::attention::partial_bytes(n_head, hd);
            let parts = (ctx.storage("part_o", po), ctx.storage("part_ml", pml));
            let tables = table_rows(n_ctx);
            // 16-key splits forced, and the shared-prefix pass on.
            let plan = ops::attention::AttentionPlan {
                keys_per_split: 16,
                shared_prefix: true,
                flash_prefill: false,
                split_one_stream: true,
                one_stream_slices: 1,
            };
            macro_rules! io {
                ($qkv:expr, $positions:expr, $tables:expr, $out:expr) => {
                    ops::attention::AttentionIo {
                        qkv: $qkv,
                        qkv_stride: stride,
                        positions: $positions,
                        k_cache: &kc,
                        v_cache: &vc,
                        tables: ops::attention::BlockTables {
                            tables: $tables,
                            block_size: bs,
                            max_blocks: perm.len() as u32,
                        },
                        out: $out,
                        partials: (&parts.0, &parts.1),
                        quantized: None,
                    }
                };
            }
            let att = ops::attention::attention(
                &ctx,
                "att",
                &io!(&qkv, &pos_b, &tables, &out),
                n_head,
                n_kv,
                hd,
                plan,
            )
            .unwrap();
            let mut list = vec![&rope];
            list.extend(att.iter());
            // 80 rows: prefill-sized, so no key splits.
            ops::run_step(
                &ctx,
                &list,
                &ops::Step {
                    rows: n_ctx as u32,
                    row0: 0,
                    kv_len: n_ctx as u32,
                    ..Default::default()
                },
            );
            let got: Vec<f32> = ctx.read(&out, 0, n_ctx * n_head * hd).unwrap();

            // Reference: rotate every Q and K head, f16-round K and V (the cache's precision).
            let mut rot = hist.clone();
            for t in 0..n_ctx {
                for h in 0..n_head + n_kv {
                    ops::rope::reference(
                        &mut rot[t * stride + h * hd..t * stride + (h + 1) * hd],
                        t,
                        theta,
                    );
                }
            }
            let f16r = |v: f32| half::f16::from_f32(v).to_f32();
            let mut wanted = std::collections::HashMap::new();
            for t in [0usize, 1, 5, 63, 64, 69, 70, 75, 79] {
                for h in 0..n_head {
                    let kvh = h / (n_head / n_kv);
                    let q = &rot[t * stride + h * hd..t * stride + (h + 1) * hd];
                    let mut k = Vec::new();
                    let mut v = Vec::new();
                    for s in 0..=t {
                        let kb = s * stride + (n_head + kvh) * hd;
                        let vb = s * stride + (n_head + n_kv + kvh) * hd;
                        k.extend(rot[kb..kb + hd].iter().map(|&x| f16r(x)));
                        v.extend(hist[vb..vb + hd].iter().map(|&x| f16r(x)));
                    }
                    let want = ops::attention::reference(q, &k, &v, hd);
                    let o = t * n_head * hd + h * hd;
                    assert_close(
                        &format!("{} attention row {t} head {h}", path(&ctx)),
                        &got[o..o + hd],
                        &want,
                        2e-4,
                        2e-3,
                    );
                    wanted.insert((t, h), want);
                }
            }

            let rotated: Vec<f32> = ctx.read(&qkv, 0, n_ctx * stride).unwrap();
            // Attention for query rows at cached positions `rows` under `plan`, as `step` says,
            // checked against the reference above.
            let check_rows = |rows: &[usize], plan, step: &ops::Step, what: &str| {
                let q: Vec<f32> = rows
                    .iter()
                    .flat_map(|&t| rotated[t * stride..(t + 1) * stride].to_vec())
                    .collect();
                let (qb, pos) = (
                    ctx.storage_from("q", &q),
                    ctx.storage_from("pos", &rows.iter().map(|&t| t as u32).collect::<Vec<_>>()),
                );
                let out = ctx.storage("out", (rows.len() * n_head * hd * 4) as u64);
                let tables = table_rows(rows.len());
                let att = ops::attention::attention(
                    &ctx,
                    "att",
                    &io!(&qb, &pos, &tables, &out),
                    n_head,
                    n_kv,
                    hd,
                    plan,
                )
                .unwrap();
                ops::run_step(&ctx, &att.iter().collect::<Vec<_>>(), step);
                let got: Vec<f32> = ctx.read(&out, 0, rows.len() * n_head * hd).unwrap();
                // The reference covers a sample of positions.
                for (i, &t) in rows
                    .iter()
                    .enumerate()
                    .filter(|(_, t)| wanted.contains_key(&(**t, 0)))
                {
                    for h in 0..n_head {
                        let o = i * n_head * hd + h * hd;
                        let msg = format!("{} {what} row {t} head {h}", path(&ctx));
                        assert_close(&msg, &got[o..o + hd], &wanted[&(t, h)], 2e-4, 2e-3);
                    }
                }
            };
            // The flash prefill kernel on the same cache: all 80 rows as one stream's chunk (two
            // workgroups of rows, the second partial), then the last 37 rows alone as a chunk
            // continuing the stream (its keys include the earlier chunk's).
            let flash_plan = ops::attention::AttentionPlan {
                flash_prefill: true,
                ..plan
            };
            for first in [0usize, 43] {
                let rows: Vec<usize> = (first..n_ctx).collect();
                let step = ops::Step {
                    rows: rows.len() as u32,
                    kv_len: n_ctx as u32,
                    one_stream: true,
                    ..Default::default()
                };
                assert!(
                    step.flash(),
                    "{} rows of one stream take the flash prefill kernel",
                    rows.len()
                );
                check_rows(
                    &rows,
                    flash_plan,
                    &step,
                    &format!("flash prefill (chunk from {first})"),
                );
            }

            // Decode-sized steps with 16-key splits: 5 rows at scattered positions (splits, empty
            // splits for short rows, merged by log-sum-exp), then 3 rows sharing their first 70
            // keys (the shared-prefix pass takes 4 whole splits once for all rows).
            for (rows, shared_len, want_prefix) in [
                (vec![79usize, 64, 63, 5, 0], 1u32, 0u32),
                (vec![79, 75, 70], 71, 4),
            ] {
                let step = ops::Step {
                    rows: rows.len() as u32,
                    kv_len: n_ctx as u32,
                    shared_len,
                    ..Default::default()
                };
                assert_eq!(ops::attention_splits(&step, 16), 5);
                assert_eq!(ops::prefix_splits(&step, 16, true), want_prefix);
                for one_stream_slices in [1, 3] {
                    check_rows(
                        &rows,
                        ops::attention::AttentionPlan {
                            one_stream_slices,
                            ..plan
                        },
                        &step,
                        &format!("split attention (prefix splits {want_prefix})"),
                    );
                }
            }

            // One stream's decode steps with its keys in slices of the workgroup (no splits,
            // no merge): 80 keys over 2, 3 and 4 slices of 64 lanes leave slices partly
            // filled and empty; rows near the start leave all but slice 0 empty.
            for slices in [2u32, 3, 4] {
                let sliced = ops::attention::AttentionPlan {
                    one_stream_slices: slices,
                    ..plan
                };
                for rows in [
                    vec![79usize],
                    vec![75, 76, 77, 78, 79],
                    vec![5],
                    vec![63, 64],
                ] {
                    let step = ops::Step {
                        rows: rows.len() as u32,
                        kv_len: *rows.last().unwrap() as u32 + 1,
                        one_stream: true,
                        ..Default::default()
                    };
                    check_rows(
                        &rows,
                        sliced,
                        &step,
                        &format!("one stream in {slices} slices"),
                    );
                }
            }
        }
    }
}

#[test]
fn shared_prefix_attention_matches_reference() {
    use ops::attention::{shared_prefix_supported, AttentionPlan, StreamsOverPrompt};
    for ctx in contexts() {
        // GQA shapes (Qwen2.5-0.5B's 14/2 heads of 64; 6/2 heads of 20, read a word per
        // load; 4/2 heads of 40, five vec4 loads a head), prompts ending mid-block (their
        // last block copied per stream, as fork does), N = 1..16 streams with suffixes of
        // different lengths, split sizes 16 and 64.
        for (shape, prompt_len, keys_per_split) in [
            ((14usize, 2usize, 64usize), 150usize, 64u32),
            ((6, 2, 20), 45, 16),
            ((4, 2, 40), 70, 16),
        ] {
            for n in [1usize, 2, 5, 16] {
                let suffix_lens: Vec<usize> = (0..n).map(|i| 1 + (i * 7) % 19).collect();
                let case = StreamsOverPrompt::new(
                    &ctx,
                    shape,
                    prompt_len,
                    &suffix_lens,
                    16,
                    true,
                    n as u64,
                );
                let step = case.step();
                let splits = ops::attention_splits(&step, keys_per_split);
                let shared_splits = ops::prefix_splits(&step, keys_per_split, true);
                if n > 1 {
                    assert!(
                        shared_splits >= 2,
                        "{}: the shared-prefix pass must run ({shared_splits} splits)",
                        path(&ctx)
                    );
                    assert!(
                        shared_prefix_supported(&ctx, shape.2, keys_per_split),
                        "{}: shared-prefix pass unsupported",
                        path(&ctx)
                    );
                }
                for shared_prefix in [true, false] {
                    let att = case
                        .attention(
                            &ctx,
                            AttentionPlan {
                                keys_per_split,
                                shared_prefix,
                                flash_prefill: false,
                                split_one_stream: true,
                                one_stream_slices: 1,
                            },
                        )
                        .unwrap();
                    ops::run_step(&ctx, &att.iter().collect::<Vec<_>>(), &step);
                    let got: Vec<f32> = ctx.read(&case.out, 0, n * shape.0 * shape.2).unwrap();
                    for i in 0..n {
                        for h in 0..shape.0 {
                            let o = (i * shape.0 + h) * shape.2;
                            let what = format!("{} {shape:?} N={n} stream {i} head {h} ({splits} splits, {} shared)", path(&ctx), if shared_prefix { shared_splits } else { 0 });
                            assert_close(
                                &what,
                                &got[o..o + shape.2],
                                &case.reference(i, h),
                                2e-4,
                                2e-3,
                            );
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn lora_matches_reference() {
    use edgereason::adapters::{LoraAdapter, LoraApply, LoraSet};
    use edgereason::loader::{Arch, ModelConfig};
    use edgereason::ops::{lora::LoraRows, matmul_int4::MatmulLora};
    // One layer: 3 query heads of 32 over 1 KV head (fused QKV 96 | 32 | 32 = 160 rows,
    // segments at 96 and 128), n_ff 160 (down: k = 160). Two adapters: rank 4 on every
    // projection, rank 3 (odd: padded to 4) on q, v and down only.
    let config = ModelConfig {
        arch: Arch::Llama,
        n_vocab: 64,
        n_embd: 96,
        n_layer: 1,
        n_head: 3,
        n_kv_head: 1,
        head_dim: 32,
        n_ff: 160,
        rope_theta: 1e4,
        rms_eps: 1e-6,
        n_ctx: 64,
        tied_embeddings: true,
    };
    let a0 = LoraAdapter::random(&config, "a0", 4, &[0, 1, 2, 3, 4, 5, 6], 2.0, 0.3, 1);
    let a1 = LoraAdapter::random(&config, "a1", 3, &[0, 2, 6], 0.7, 0.3, 2);
    let f16r = |v: f32| half::f16::from_f32(v).to_f32();
    for ctx in contexts() {
        let set = LoraSet::upload(
            &ctx,
            &config,
            vec![Arc::new(a0.clone()), Arc::new(a1.clone())],
        );
        assert_eq!(set.slots, vec![(4, 0), (4, 4)]);
        // (fused matrix, its projections, input width): QKV and down.
        for (f, projs, k) in [(0usize, vec![0usize, 1, 2], 96usize), (3, vec![6], 160)] {
            let n: usize = projs
                .iter()
                .map(|&p| edgereason::adapters::peft::projection_shape(&config, p).1)
                .sum();
            for m in [5usize, 19] {
                // Rows: adapter 0, none, adapter 1, ... (rows without an adapter must be exact base).
                let choice: Vec<Option<usize>> =
                    (0..m).map(|i| [Some(0), None, Some(1)][i % 3]).collect();
                let rows: Vec<[u32; 2]> = choice
                    .iter()
                    .map(|c| c.map_or([0, 0], |a| [set.slots[a].0, set.slots[a].1]))
                    .collect();
                let (groups, _) = quantized(n, k, 40 + n as u64);
                let w = QuantMatrix::upload(&ctx, "w", n, k, QuantGroups::Int4(&groups)).unwrap();
                let x = rand_vec(m * k, 9 + m as u64);
                let xb = ctx.storage_from("x", &x);
                let (xq, xs) = (
                    ctx.storage("xq", (m * k) as u64),
                    ctx.storage("xs", (m * k / 32 * 16) as u64),
                );
                let rows_b = ctx.storage_from("lora rows", &rows);
                let u = ctx.storage("u", (m * set.u_stride() * 4) as u64);
                let lr = LoraRows {
                    rows: &rows_b,
                    u: &u,
                    u_stride: set.u_stride(),
                };
                let lm = &set.layers[0][f];
                let partials = ctx.storage("partials", 16);
                // u = A·x̂ (with a folded norm's 1/rms where `eps` is given), either kernel.
                let shrink = |lr: &LoraRows, eps: Option<f32>, split: bool| {
                    let (a, cols) = (&lm.a, lm.a_cols);
                    ops::lora::shrink(
                        &ctx,
                        "shrink",
                        a,
                        k,
                        lm.segs,
                        cols,
                        set.max_rank,
                        lr,
                        &xq,
                        &xs,
                        eps,
                        split,
                    )
                };
                let run = |apply: Option<LoraApply>, split: bool| -> Vec<f32> {
                    let out = ctx.storage("out", (m * n * 4) as u64);
                    let io = MatmulIo::new(&xq, &xs, &out, n, &partials);
                    let mut list = vec![ops::quantize_act::quantize_act(
                        &ctx, "q", &xb, k, k, &xq, &xs,
                    )];
                    match apply {
                        None => {
                            list.extend(ops::matmul_int4::matmul_int4(&ctx, "mm", &w, &io).unwrap())
                        }
                        Some(apply) => {
                            list.push(shrink(&lr, None, split));
                            if apply == LoraApply::Fused {
                                let lora = Some(MatmulLora {
                                    rows: lr,
                                    b: &lm.b,
                                    segments: lm.segments,
                                });
                                list.extend(
                                    ops::matmul_int4::matmul_int4(
                                        &ctx,
                                        "mm",
                                        &w,
                                        &MatmulIo { lora, ..io },
                                    )
                                    .unwrap(),
                                );
                            } else {
                                list.extend(
                                    ops::matmul_int4::matmul_int4(&ctx, "mm", &w, &io).unwrap(),
                                );
                                list.push(ops::lora::expand(
                                    &ctx,
                                    "expand",
                                    &lm.b,
                                    n,
                                    lm.segments,
                                    &lr,
                                    &out,
                                    n,
                                    &xq,
                                    &xs,
                                ));
                            }
                        }
                    }
                    let step = ops::Step {
                        rows: m as u32,
                        adapters: true,
                        ..Default::default()
                    };
                    ops::run_step(&ctx, &list.iter().collect::<Vec<_>>(), &step);
                    ctx.read(&out, 0, m * n).unwrap()
                };
                let base = run(None, false);
                // Reference delta: s·B·(A·x̂) per projection on the int8-rounded activations,
                // with A and s·B rounded to f16 as stored.
                let xhat = ops::quantize_act::reference(&x);
                let mut want = vec![0f32; m * n];
                // A folded RMSNorm's scale (u = A·x̂ / rms(x)): both shrink kernels agree.
                let folded_u = |split: bool| -> Vec<f32> {
                    let u = ctx.storage("u", (m * set.u_stride() * 4) as u64);
                    let lr = LoraRows { u: &u, ..lr };
                    let list = [
                        ops::quantize_act::quantize_act(&ctx, "q", &xb, k, k, &xq, &xs),
                        shrink(&lr, Some(1e-5), split),
                    ];
                    let step = ops::Step {
                        rows: m as u32,
                        adapters: true,
                        ..Default::default()
                    };
                    ops::run_step(&ctx, &list.iter().collect::<Vec<_>>(), &step);
                    ctx.read(&u, 0, m * set.u_stride()).unwrap()
                };
                let what = format!("{} LoRA shrink, folded norm, matrix {f} m={m}", path(&ctx));
                assert_close(&what, &folded_u(true), &folded_u(false), 1e-4, 1e-4);
                for (r, c) in choice.iter().enumerate() {
                    let Some(a) = c else { continue };
                    let ad = [&a0, &a1][*a];
                    let mut col0 = 0;
                    for &p in &projs {
                        let (inp, out) = edgereason::adapters::peft::projection_shape(&config, p);
                        if let Some(pair) = &ad.layers[0][p] {
                            let xr = &xhat[r * k..(r + 1) * k];
                            let uu: Vec<f32> = pair
                                .a
                                .chunks(inp)
                                .map(|row| row.iter().zip(xr).map(|(a, b)| f16r(*a) * b).sum())
                                .collect();
                            for o in 0..out {
                                want[r * n + col0 + o] = (0..ad.rank)
                                    .map(|j| f16r(ad.scale * pair.b[o * ad.rank + j]) * uu[j])
                                    .sum();
                            }
                        }
                        col0 += out;
                    }
                }
                let applies = [LoraApply::Fused, LoraApply::Separate];
                for (apply, split) in applies.into_iter().flat_map(|a| [(a, false), (a, true)]) {
                    let got = run(Some(apply), split);
                    let delta: Vec<f32> = got.iter().zip(&base).map(|(g, b)| g - b).collect();
                    assert_close(
                        &format!(
                            "{} LoRA {apply:?} split={split} matrix {f} m={m}",
                            path(&ctx)
                        ),
                        &delta,
                        &want,
                        2e-3,
                        5e-3,
                    );
                    for (r, c) in choice.iter().enumerate() {
                        if c.is_none() {
                            assert_eq!(
                                &got[r * n..(r + 1) * n],
                                &base[r * n..(r + 1) * n],
                                "{} row {r} without adapter must equal the base exactly",
                                path(&ctx)
                            );
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn embedding_gathers_quantized_rows() {
    for ctx in contexts() {
        let (n_vocab, k) = (301usize, 96usize);
        let (groups, w) = quantized(n_vocab, k, 21);
        let table = QuantMatrix::upload_with_limit(
            &ctx,
            "emb",
            n_vocab,
            k,
            QuantGroups::Int4(&groups),
            4096,
        )
        .unwrap();
        assert!(table.chunks.len() > 1);
        let tokens: Vec<u32> = vec![0, 300, 17, 150, 17];
        let tb = ctx.storage_from("tok", &tokens);
        let out = ctx.storage("out", (tokens.len() * k * 4) as u64);
        let ds = ops::embedding::embedding(&ctx, "emb", &table, &tb, &out);
        ops::run_once(&ctx, &ds.iter().collect::<Vec<_>>(), tokens.len() as u32, 0);
        let got: Vec<f32> = ctx.read(&out, 0, tokens.len() * k).unwrap();
        let want: Vec<f32> = tokens
            .iter()
            .flat_map(|&t| w[t as usize * k..(t as usize + 1) * k].to_vec())
            .collect();
        // Scales and mins are stored as f16 on the GPU; quantize_q4 already rounds them.
        assert_close(
            &format!("{} embedding", path(&ctx)),
            &got,
            &want,
            1e-5,
            1e-5,
        );
    }
}

#[test]
fn read_bandwidth_reads_everything() {
    for ctx in contexts() {
        let src: Vec<u32> = (0..10_007u32).map(|i| i.wrapping_mul(2654435761)).collect();
        let sb = ctx.storage_from("src", &src);
        let dst = ctx.storage("dst", 100 * 4);
        let d = ops::read_bandwidth::read_bandwidth(&ctx, &sb, src.len(), 100, &dst);
        ops::run_once(&ctx, &[&d], 1, 0);
        let got: Vec<u32> = ctx.read(&dst, 0, 100).unwrap();
        assert_eq!(got, ops::read_bandwidth::reference(&src, 100));
    }
}

#[test]
fn attention_writes_the_int8_blocks_quantize_act_would() {
    for ctx in contexts() {
        // head_dim 64 (two blocks per head), GQA 4/2, 90 cached tokens in scrambled blocks.
        let (n_head, n_kv, hd, n_ctx) = (4usize, 2usize, 64usize, 90usize);
        let (stride, q_dim) = ((n_head + 2 * n_kv) * hd, n_head * hd);
        let hist = rand_vec(n_ctx * stride, 21);
        let positions: Vec<u32> = (0..n_ctx as u32).collect();
        let (bs, perm) = (16u32, [4u32, 1, 5, 0, 3, 2]);
        let slots: Vec<u32> = positions
            .iter()
            .map(|&t| perm[(t / bs) as usize] * bs + t % bs)
            .collect();
        let (kc, vc) = (
            ctx.storage("k", (96 * n_kv * hd * 2) as u64),
            ctx.storage("v", (96 * n_kv * hd * 2) as u64),
        );
        let qkv = ctx.storage_from("qkv", &hist);
        let rope = ops::rope::rope_store_kv(
            &ctx,
            "rope",
            &qkv,
            &ctx.storage_from("pos", &positions),
            &ctx.storage_from("slots", &slots),
            &kc,
            &vc,
            n_head,
            n_kv,
            hd,
            10000.0,
        );
        ops::run_once(&ctx, &[&rope], n_ctx as u32, 0);
        let rotated: Vec<f32> = ctx.read(&qkv, 0, n_ctx * stride).unwrap();
        let (po, pml) = ops::attention::partial_bytes(n_head, hd);
        let parts = (ctx.storage("part_o", po), ctx.storage("part_ml", pml));
        // (rows' positions, one stream, flash kernel): the per-row kernel writing directly,
        // the flash prefill kernel, and a decode step whose 16-key splits the merge combines.
        let cases = [
            ((0..n_ctx).collect::<Vec<_>>(), false, false),
            ((0..n_ctx).collect(), true, true),
            (vec![89, 70, 10], false, false),
        ];
        for (rows, one_stream, flash) in cases {
            let m = rows.len();
            let q: Vec<f32> = rows
                .iter()
                .flat_map(|&t| rotated[t * stride..(t + 1) * stride].to_vec())
                .collect();
            let (qb, posb) = (
                ctx.storage_from("q", &q),
                ctx.storage_from("pos", &rows.iter().map(|&t| t as u32).collect::<Vec<_>>()),
            );
            let tables = ctx.storage_from("tables", &perm.repeat(m));
            let out = ctx.storage("out", (m * q_dim * 4) as u64);
            let (xq, xs) = (
                ctx.storage("xq", (m * q_dim) as u64),
                ctx.storage("xs", (m * q_dim / 32 * 16) as u64),
            );
            let io = ops::attention::AttentionIo {
                qkv: &qb,
                qkv_stride: stride,
                positions: &posb,
                k_cache: &kc,
                v_cache: &vc,
                tables: ops::attention::BlockTables {
                    tables: &tables,
                    block_size: bs,
                    max_blocks: perm.len() as u32,
                },
                out: &out,
                partials: (&parts.0, &parts.1),
                quantized: Some((&xq, &xs)),
            };
            let plan = ops::attention::AttentionPlan {
                keys_per_split: 16,
                shared_prefix: false,
                flash_prefill: flash,
                split_one_stream: true,
                one_stream_slices: 1,
            };
            let att = ops::attention::attention(&ctx, "att", &io, n_head, n_kv, hd, plan).unwrap();
            let step = ops::Step {
                rows: m as u32,
                kv_len: n_ctx as u32,
                one_stream,
                ..Default::default()
            };
            ops::run_step(&ctx, &att.iter().collect::<Vec<_>>(), &step);
            let (xq2, xs2) = (
                ctx.storage("xq2", (m * q_dim) as u64),
                ctx.storage("xs2", (m * q_dim / 32 * 16) as u64),
            );
            ops::run_once(
                &ctx,
                &[&ops::quantize_act::quantize_act(
                    &ctx, "q", &out, q_dim, q_dim, &xq2, &xs2,
                )],
                m as u32,
                0,
            );
            let what = format!(
                "{} {m} rows (flash {flash}, splits {})",
                path(&ctx),
                ops::attention_splits(&step, 16)
            );
            assert_eq!(
                ctx.read::<u32>(&xq, 0, m * q_dim / 4).unwrap(),
                ctx.read::<u32>(&xq2, 0, m * q_dim / 4).unwrap(),
                "{what}: int8 words"
            );
            assert_eq!(
                ctx.read::<f32>(&xs, 0, m * q_dim / 8).unwrap(),
                ctx.read::<f32>(&xs2, 0, m * q_dim / 8).unwrap(),
                "{what}: block stats"
            );
            let got: Vec<f32> = ctx.read(&out, 0, m * q_dim).unwrap();
            assert!(
                got.iter().any(|&v| v != 0.0),
                "{what}: attention wrote its output"
            );
        }
    }
}

#[test]
fn swiglu_epilogue_equals_matmul_then_swiglu() {
    for ctx in contexts() {
        // [gate; up] of 2·96 rows (three 32-column blocks per half), k = 160; m = 1 and 13
        // rows (register tiles), with and without k splits (the reduce pass's epilogue).
        let (n_ff, k) = (96usize, 160usize);
        let (groups, _) = quantized(2 * n_ff, k, 29);
        let mat =
            QuantMatrix::upload(&ctx, "gate_up", 2 * n_ff, k, QuantGroups::Int4(&groups)).unwrap();
        assert!(ops::matmul_int4::swiglu_fusable(&mat));
        for m in [1usize, 13] {
            for (splits, slices) in epilogue_configs(k) {
                let x = rand_vec(m * k, 31 + m as u64);
                let xb = ctx.storage_from("x", &x);
                let (xq, xs) = (
                    ctx.storage("xq", (m * k) as u64),
                    ctx.storage("xs", (m * k / 32 * 16) as u64),
                );
                let quant = ops::quantize_act::quantize_act(&ctx, "q", &xb, k, k, &xq, &xs);
                let gate_up = ctx.storage("gate_up", (m * 2 * n_ff * 4) as u64);
                let partials =
                    ctx.storage("partials", (splits as usize * 16 * 2 * n_ff * 4) as u64);
                let hblocks = |name: &str| {
                    (
                        ctx.storage(&format!("{name}.q"), (m * n_ff) as u64),
                        ctx.storage(&format!("{name}.s"), (m * n_ff / 32 * 16) as u64),
                    )
                };
                let (fused, separate) = (hblocks("fused"), hblocks("separate"));
                let io = MatmulIo::new(&xq, &xs, &gate_up, 2 * n_ff, &partials);
                let plain = ops::matmul_int4::matmul_int4_with_splits(
                    &ctx, "mm", &mat, &io, splits, slices,
                )
                .unwrap();
                let swiglu =
                    ops::swiglu::swiglu(&ctx, "sw", &gate_up, n_ff, &separate.0, &separate.1);
                let with_epilogue = ops::matmul_int4::matmul_int4_with_splits(
                    &ctx,
                    "mm+sw",
                    &mat,
                    &MatmulIo {
                        swiglu: Some((&fused.0, &fused.1)),
                        ..io
                    },
                    splits,
                    slices,
                )
                .unwrap();
                let mut list = vec![&quant];
                list.extend(plain.iter().chain([&swiglu]).chain(with_epilogue.iter()));
                ops::run_once(&ctx, &list, m as u32, 0);
                let what = format!("{} swiglu epilogue m={m} splits={splits}", path(&ctx));
                assert_eq!(
                    ctx.read::<u32>(&fused.0, 0, m * n_ff / 4).unwrap(),
                    ctx.read::<u32>(&separate.0, 0, m * n_ff / 4).unwrap(),
                    "{what}: int8 words"
                );
                let (got, want) = (
                    ctx.read::<f32>(&fused.1, 0, m * n_ff / 8).unwrap(),
                    ctx.read::<f32>(&separate.1, 0, m * n_ff / 8).unwrap(),
                );
                assert_close(&what, &got, &want, 1e-6, 1e-6);
                assert!(want.iter().any(|&v| v != 0.0), "{what}: h is not all zero");
            }
        }
    }
}

#[test]
fn rope_epilogue_equals_matmul_then_rope() {
    for ctx in contexts() {
        // [Q | K | V] with GQA 4/2 at head_dim 64 and 2/1 at 128 (two workgroups per head),
        // k = 96 with a bias; m = 1 and 13 rows at scattered positions and slots, with and
        // without k splits (the reduce pass's epilogue).
        for (n_head, n_kv, hd) in [(4usize, 2usize, 64usize), (2, 1, 128)] {
            let (k, slots_total) = (96usize, 40usize);
            let n = (n_head + 2 * n_kv) * hd;
            let (groups, _) = quantized(n, k, 41 + hd as u64);
            let mat = QuantMatrix::upload(&ctx, "qkv", n, k, QuantGroups::Int4(&groups)).unwrap();
            assert!(ops::matmul_int4::rope_fusable(&mat, hd));
            let bias = ctx.storage_from("bias", &rand_vec(n, 43));
            let params = ops::matmul_int4::rope_params(&ctx, n_head, n_kv, 10000.0);
            for m in [1usize, 13] {
                for (splits, slices) in epilogue_configs(k) {
                    let x = rand_vec(m * k, 47 + m as u64);
                    let xb = ctx.storage_from("x", &x);
                    let (xq, xs) = (
                        ctx.storage("xq", (m * k) as u64),
                        ctx.storage("xs", (m * k / 32 * 16) as u64),
                    );
                    let quant = ops::quantize_act::quantize_act(&ctx, "q", &xb, k, k, &xq, &xs);
                    let positions: Vec<u32> = (0..m as u32).map(|i| 3 + 7 * i).collect();
                    let slots: Vec<u32> = (0..m as u32)
                        .map(|i| (11 * i + 5) % slots_total as u32)
                        .collect();
                    let (pos_b, slots_b) = (
                        ctx.storage_from("pos", &positions),
                        ctx.storage_from("slots", &slots),
                    );
                    let partials = ctx.storage("partials", (splits as usize * 16 * n * 4) as u64);
                    let cache =
                        |name: &str| ctx.storage(name, (slots_total * n_kv * hd * 2) as u64);
                    let (k_sep, v_sep, k_fused, v_fused) = (
                        cache("k_sep"),
                        cache("v_sep"),
                        cache("k_fused"),
                        cache("v_fused"),
                    );
                    let (out_sep, out_fused) = (
                        ctx.storage("out_sep", (m * n * 4) as u64),
                        ctx.storage("out_fused", (m * n * 4) as u64),
                    );
                    let io = |out| MatmulIo {
                        bias: Some(&bias),
                        accumulate: false,
                        ..MatmulIo::new(&xq, &xs, out, n, &partials)
                    };
                    let plain = ops::matmul_int4::matmul_int4_with_splits(
                        &ctx,
                        "mm",
                        &mat,
                        &io(&out_sep),
                        splits,
                        slices,
                    )
                    .unwrap();
                    let rope = ops::rope::rope_store_kv(
                        &ctx, "rope", &out_sep, &pos_b, &slots_b, &k_sep, &v_sep, n_head, n_kv, hd,
                        10000.0,
                    );
                    let fused_rope = ops::matmul_int4::MatmulRope {
                        params: &params,
                        head_dim: hd,
                        positions: &pos_b,
                        slots: &slots_b,
                        k_cache: &k_fused,
                        v_cache: &v_fused,
                    };
                    let fused = ops::matmul_int4::matmul_int4_with_splits(
                        &ctx,
                        "mm+rope",
                        &mat,
                        &MatmulIo {
                            rope: Some(fused_rope),
                            ..io(&out_fused)
                        },
                        splits,
                        slices,
                    )
                    .unwrap();
                    let mut list = vec![&quant];
                    list.extend(plain.iter().chain([&rope]).chain(fused.iter()));
                    ops::run_once(&ctx, &list, m as u32, 0);
                    let what = format!(
                        "{} rope epilogue {n_head}/{n_kv}x{hd} m={m} splits={splits}",
                        path(&ctx)
                    );
                    let q_len = n_head * hd;
                    let (got_q, want_q): (Vec<f32>, Vec<f32>) = (
                        ctx.read(&out_fused, 0, m * n).unwrap(),
                        ctx.read(&out_sep, 0, m * n).unwrap(),
                    );
                    for r in 0..m {
                        assert_close(
                            &format!("{what}: rotated Q row {r}"),
                            &got_q[r * n..r * n + q_len],
                            &want_q[r * n..r * n + q_len],
                            1e-6,
                            1e-6,
                        );
                    }
                    let words = slots_total * n_kv * hd / 2;
                    for (name, got, want) in
                        [("K cache", &k_fused, &k_sep), ("V cache", &v_fused, &v_sep)]
                    {
                        let (got, want) = (
                            ctx.read::<u32>(got, 0, words).unwrap(),
                            ctx.read::<u32>(want, 0, words).unwrap(),
                        );
                        assert!(want.iter().any(|&w| w != 0), "{what}: {name} written");
                        let halves = |v: &[u32]| {
                            v.iter()
                                .flat_map(|&w| {
                                    [
                                        half::f16::from_bits(w as u16).to_f32(),
                                        half::f16::from_bits((w >> 16) as u16).to_f32(),
                                    ]
                                })
                                .collect::<Vec<f32>>()
                        };
                        assert_close(
                            &format!("{what}: {name}"),
                            &halves(&got),
                            &halves(&want),
                            1e-3,
                            1e-3,
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn norm_epilogue_equals_matmul_then_rmsnorm() {
    // Wo-like residual matmul [192, 160] then a consumer [100, 192] with a bias: unfused
    // (matmul, rmsnorm_quant, matmul) against fused (the residual matmul writes x ⊙ g
    // blocks with Σx², the consumer scales by 1/rms). Int4 and int8 weights; m = 1, 13 and
    // 40 rows (register tiles, a partial last tile); with and without k splits on both
    // (the reduce pass's epilogue); an eps large enough to matter against mean(x²).
    let (n_embd, k, n2, eps) = (192usize, 160usize, 100usize, 0.25f32);
    for ctx in contexts() {
        for int8 in [false, true] {
            let upload = |label: &str, n: usize, k: usize, seed: u64| {
                let w = rand_vec(n * k, seed);
                if int8 {
                    let g: Vec<_> = w
                        .chunks(k)
                        .flat_map(edgereason::loader::quantize_q8)
                        .collect();
                    QuantMatrix::upload(&ctx, label, n, k, QuantGroups::Int8(&g)).unwrap()
                } else {
                    let g: Vec<_> = w.chunks(k).flat_map(quantize_q4).collect();
                    QuantMatrix::upload(&ctx, label, n, k, QuantGroups::Int4(&g)).unwrap()
                }
            };
            let (w1, w2) = (upload("w1", n_embd, k, 41), upload("w2", n2, n_embd, 43));
            assert!(ops::matmul_int4::norm_foldable(&w1));
            let g = ctx.storage_from("g", &rand_vec(n_embd, 47));
            let bias = ctx.storage_from("bias", &rand_vec(n2, 53));
            for m in [1usize, 13, 40] {
                for (splits, slices) in epilogue_configs(k) {
                    let what = format!(
                        "{} norm epilogue int8={int8} m={m} splits={splits}x{slices}",
                        path(&ctx)
                    );
                    let a = ctx.storage_from("a", &rand_vec(m * k, 59 + m as u64));
                    let blocks = |name: &str, k: usize| {
                        (
                            ctx.storage(&format!("{name}.q"), (m * k) as u64),
                            ctx.storage(&format!("{name}.s"), (m * k / 32 * 16) as u64),
                        )
                    };
                    let (aq, (nq, ns), (fq, fs)) = (
                        blocks("a", k),
                        blocks("norm", n_embd),
                        blocks("fused", n_embd),
                    );
                    let quant = ops::quantize_act::quantize_act(&ctx, "q", &a, k, k, &aq.0, &aq.1);
                    let x0 = rand_vec(m * n_embd, 61);
                    let (x_sep, x_fused) = (ctx.storage_from("x", &x0), ctx.storage_from("x", &x0));
                    let (y_sep, y_fused) = (
                        ctx.storage("y", (m * n2 * 4) as u64),
                        ctx.storage("y", (m * n2 * 4) as u64),
                    );
                    let partials =
                        ctx.storage("partials", (splits as usize * 16 * n_embd * 4) as u64);
                    let mm = |label: &str, w: &QuantMatrix, io: MatmulIo| {
                        ops::matmul_int4::matmul_int4_with_splits(
                            &ctx, label, w, &io, splits, slices,
                        )
                        .unwrap()
                    };
                    let residual = |x| MatmulIo {
                        accumulate: true,
                        ..MatmulIo::new(&aq.0, &aq.1, x, n_embd, &partials)
                    };
                    let consumer = |xq, xs, y| MatmulIo {
                        bias: Some(&bias),
                        ..MatmulIo::new(xq, xs, y, n2, &partials)
                    };
                    let unused = ctx.storage("unused", 16);
                    let mut list = vec![];
                    list.extend(mm("wo", &w1, residual(&x_sep)));
                    list.push(ops::rmsnorm::rmsnorm(
                        &ctx, "norm", &x_sep, &g, n_embd, eps, &unused, &nq, &ns, true,
                    ));
                    list.extend(mm("next", &w2, consumer(&nq, &ns, &y_sep)));
                    let norm_out = ops::matmul_int4::NormOut {
                        weight: &g,
                        xq: &fq,
                        xs: &fs,
                    };
                    list.extend(mm(
                        "wo+norm",
                        &w1,
                        MatmulIo {
                            norm_out: Some(norm_out),
                            ..residual(&x_fused)
                        },
                    ));
                    list.extend(mm(
                        "next/rms",
                        &w2,
                        MatmulIo {
                            folded_norm: Some(eps),
                            ..consumer(&fq, &fs, &y_fused)
                        },
                    ));
                    let mut all = vec![&quant];
                    all.extend(list.iter());
                    ops::run_once(&ctx, &all, m as u32, 0);
                    let read = |b| ctx.read::<f32>(b, 0, m * n_embd).unwrap();
                    assert_eq!(read(&x_fused), read(&x_sep), "{what}: residual stream");
                    // The blocks stand for x ⊙ g instead of x ⊙ g / rms: the same int8
                    // values (rounding is scale-invariant up to the last bit of a tie).
                    let (qa, qb) = (
                        ctx.read::<u32>(&nq, 0, m * n_embd / 4).unwrap(),
                        ctx.read::<u32>(&fq, 0, m * n_embd / 4).unwrap(),
                    );
                    let differ = qa.iter().zip(&qb).filter(|(a, b)| a != b).count();
                    assert!(
                        differ * 50 <= qa.len(),
                        "{what}: {differ}/{} int8 words differ",
                        qa.len()
                    );
                    let (got, want) = (
                        ctx.read::<f32>(&y_fused, 0, m * n2).unwrap(),
                        ctx.read::<f32>(&y_sep, 0, m * n2).unwrap(),
                    );
                    let scale = want.iter().fold(0f32, |a, v| a.max(v.abs()));
                    assert_close(&what, &got, &want, 2e-3 * scale, 1e-3);
                }
            }
        }
    }
}
