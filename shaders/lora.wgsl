// LoRA's low-rank half and the unfused reference path.
//
// `shrink`: u[m][j] = Σ_k A[j][k] · x̂[m][k] for every row m with an adapter, from the same
// int8 activation blocks the int4 matmul reads (x̂ = scale · q). A fused matrix (QKV, gate|up)
// stacks its projections' A matrices: rows j = seg · rank + i. Row m's adapter is
// lora_rows[m] = (rank, rank offset) — its A rows start at segs · offset — and rank 0 means
// no adapter (u is then not read). One invocation per (j, tile of ROWS rows) runs the whole
// dot product: no reductions and no barriers (on CPU drivers such as lavapipe a
// workgroup-wide reduction per output cost more than the arithmetic), and with A stored
// transposed neighbouring invocations read neighbouring words.
// `shrink_split`: the same u, for GPUs: one workgroup per (j, row) splits the dot product
// over its 64 lanes and reduces in workgroup memory. `shrink` runs each dot product in one
// invocation, a serial chain of k/4 loads that on a GPU leaves the machine idle (H200, Qwen2.5
// shapes: a rank-8 adapter made a decode step 6x slower).
// `expand`: out[m][n] += Σ_j B[j][n] · u[m][seg·rank + j] as a pass of its own over y —
// what the fused matmul epilogue avoids; kept for the fused-vs-unfused benchmark.
//
// A: [k/2][a_cols] u32, f16 pairs along k (column = A row).   B: [rank/2][n] u32, f16 pairs
// along the rank, pre-scaled by the adapter's scale.           u: [m][u_stride] f32.

struct Params {
    k: u32,         // input features (multiple of 32)
    m: u32,         // rows
    n: u32,         // output features (expand); A's columns, segs · total rank (shrink)
    segs: u32,      // projections stacked in this matrix (1..3)
    u_stride: u32,
    seg1: u32,      // expand: segment boundaries over the output columns
    seg2: u32,
    out_stride: u32,
    folded_norm: u32, // shrink: xs carries a folded RMSNorm's Σx² (matmul_int4's NORM)
    rms_eps: f32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> xq: array<u32>;
@group(0) @binding(2) var<storage, read> xs: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> lora_rows: array<vec2<u32>>;
@group(0) @binding(4) var<storage, read> lora_w: array<u32>;   // A (shrink) or B (expand)
@group(0) @binding(5) var<storage, read_write> u: array<f32>;
@group(0) @binding(6) var<storage, read_write> out: array<f32>;

fn i8(w: u32, byte: u32) -> f32 {
    return f32((i32(w << (24u - 8u * byte))) >> 24u);
}

// 1/rms of `row` where its blocks hold x ⊙ g of a folded norm, else 1: u must be
// A · norm(x), whatever the matmul does with its own product.
fn row_scale(row: u32) -> f32 {
    if (p.folded_norm == 0u) {
        return 1.0;
    }
    var ss = 0.0;
    for (var g = 0u; g < p.k / 32u; g = g + 1u) {
        ss = ss + xs[row * (p.k / 32u) + g].w;
    }
    return inverseSqrt(ss / f32(p.k) + p.rms_eps);
}

@compute @workgroup_size(64)
fn shrink(@builtin(global_invocation_id) gid: vec3<u32>) {
    let j = gid.x;
    let m0 = gid.y * ROWS;
    let row{r} = min(m0 + {r}u, p.m - 1u);
    let ra{r} = lora_rows[row{r}];
    // This row's A column, or none (no adapter, or j past its rank).
    let on{r} = ra{r}.x > 0u && j < p.segs * ra{r}.x;
    let col{r} = p.segs * ra{r}.y + j;
    var acc{r} = 0.0;
    for (var kw = 0u; kw < p.k / 4u; kw = kw + 1u) {
        let g = kw / 8u;
        if (on{r}) { let x = xq[row{r} * (p.k / 4u) + kw]; let sc = xs[row{r} * (p.k / 32u) + g].x; let a0 = unpack2x16float(lora_w[(2u * kw) * p.n + col{r}]); let a1 = unpack2x16float(lora_w[(2u * kw + 1u) * p.n + col{r}]); acc{r} = acc{r} + sc * (a0.x * i8(x, 0u) + a0.y * i8(x, 1u) + a1.x * i8(x, 2u) + a1.y * i8(x, 3u)); }
    }
    if (on{r} && m0 + {r}u < p.m) { u[(m0 + {r}u) * p.u_stride + j] = acc{r} * row_scale(row{r}); }
}

var<workgroup> partial: array<vec2<f32>, 64>;

@compute @workgroup_size(64)
fn shrink_split(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lane: u32) {
    let j = wg.x;
    let row = wg.y;
    let ra = lora_rows[row];
    let on = ra.x > 0u && j < p.segs * ra.x;  // the same for the whole workgroup
    let col = p.segs * ra.y + j;
    // (A·x̂ partial sum, Σx² partial sum of a folded norm: each 32-k group counted once)
    var acc = vec2<f32>(0.0);
    if (on) {
        for (var kw = lane; kw < p.k / 4u; kw = kw + 64u) {
            let g = row * (p.k / 32u) + kw / 8u;
            let x = xq[row * (p.k / 4u) + kw];
            let a0 = unpack2x16float(lora_w[(2u * kw) * p.n + col]);
            let a1 = unpack2x16float(lora_w[(2u * kw + 1u) * p.n + col]);
            let d = a0.x * i8(x, 0u) + a0.y * i8(x, 1u) + a1.x * i8(x, 2u) + a1.y * i8(x, 3u);
            acc = acc + vec2<f32>(xs[g].x * d, select(0.0, xs[g].w, kw % 8u == 0u));
        }
    }
    partial[lane] = acc;
    workgroupBarrier();
    for (var s = 32u; s > 0u; s = s >> 1u) {
        if (lane < s) {
            partial[lane] = partial[lane] + partial[lane + s];
        }
        workgroupBarrier();
    }
    if (lane == 0u && on) {
        let t = partial[0];
        let scale = select(1.0, inverseSqrt(t.y / f32(p.k) + p.rms_eps), p.folded_norm != 0u);
        u[row * p.u_stride + j] = t.x * scale;
    }
}

@compute @workgroup_size(64)
fn expand(@builtin(global_invocation_id) gid: vec3<u32>) {
    let col = gid.x;
    let row = gid.y;
    if (col >= p.n || row >= p.m) {
        return;
    }
    let ra = lora_rows[row];
    if (ra.x == 0u) {
        return;
    }
    let seg = select(select(2u, 1u, col < p.seg2), 0u, col < p.seg1);
    let ub = row * p.u_stride + seg * ra.x;
    var d = 0.0;
    for (var j = 0u; j < ra.x / 2u; j = j + 1u) {
        let b = unpack2x16float(lora_w[(ra.y / 2u + j) * p.n + col]);
        d = d + b.x * u[ub + 2u * j] + b.y * u[ub + 2u * j + 1u];
    }
    out[row * p.out_stride + col] = out[row * p.out_stride + col] + d;
}
