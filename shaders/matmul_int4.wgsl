// Quantized matrix × int8-quantized activations: out[m, n] (+)= Σ_k W[n, k] · x[m, k] (+ bias[n]).
// Entry `int4` for int4 weights (the base format), `int8` for tensors the model file
// stores at 5-8 bits (kept at int8 rather than lose precision; same layout idea).
//
// Weight layout (group 32 along k, asymmetric: w = scale · q + min, q in 0..15):
//   qweight: [k/8][n] u32   word (kw, n) holds k = 8kw .. 8kw+7 of row n;
//                           byte b: low nibble = q[8kw + b], high nibble = q[8kw + 4 + b]
//   scales:  [k/32][n] u32  pack2x16float(scale, min)
// Word-major ("interleaved") storage makes consecutive invocations (consecutive n) read
// consecutive words: coalesced on GPUs, vectorizable on lavapipe.
// int8 weights: qweight [k/4][n] u32, four i8 per word in k order; scales [k/32][n] u32 =
//   pack2x16float(scale, 0); w = scale · q.
// Activations (prelude's QuantBlock): xq [m][k/4] i8x4, xs [m][k/32] (scale_x, Σx, Σx − Σx̂)
// so that, per group, with centred weights (q − 8) multiplying the rounded activations,
//   Σ_k w·x ≈ scale_w · (scale_x · Σ q·xq + 8 · (Σx − Σx̂)) + min_w · Σx.
// Each invocation computes one column n for ROWS activation rows, so every weight word is
// read and unpacked once for all rows (decode with N streams; prefill tiles m by ROWS).
// Variant SUBGROUPS (subgroups of at least 8 lanes): the activation blocks of a group are
// loaded cooperatively and handed out by `subgroupBroadcast` — lane l loads half (four
// words) of row l/2's 8-word block, so one vec4 load brings four rows' blocks, and lane l
// loads row l's stats, so one load brings eight rows'. On lavapipe every storage load,
// even at a uniform address, is a loop over the lanes (see prefill_gemm.wgsl): a group
// of ROWS rows then costs ceil(ROWS/4) + ceil(ROWS/8) activation loads instead of 2·ROWS.
// SLICES (≥ 1): the workgroup is 64 columns × SLICES slices of k (one dimension, lane
// l taking column l % 64 of slice l / 64: subgroup builtins need a 1-D workgroup). A decode step's matmul
// has too few columns to fill a GPU, so its k is split: across workgroups (grid z, p.splits,
// summed by the `reduce` launch) and/or inside one (the slices, summed in workgroup memory
// before the epilogue: the same parallelism with no second launch).

struct Params {
    n: u32,          // output features of this matrix chunk
    k: u32,          // input features (multiple of 32)
    m: u32,          // activation rows
    flags: u32,      // bit 0: add bias, bit 1: accumulate into out (residual)
    out_stride: u32, // floats between output rows
    out_offset: u32, // first output column of this chunk
    splits: u32,     // k splits (grid z); > 1 writes partials for `reduce`
    rms_eps: f32,    // flags bit 2: eps of the RMSNorm folded into the input blocks
    // LoRA variant: output columns [0, seg1) take segment 0 of a fused matrix (Q of QKV,
    // gate of gate|up), [seg1, seg2) segment 1, the rest segment 2; u_stride = floats per
    // row of the low-rank activations.
    seg1: u32,
    seg2: u32,
    u_stride: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> qweight: array<u32>;
@group(0) @binding(2) var<storage, read> scales: array<u32>;
// Read as vec4: a row's 8-word activation block of a group is two loads (16-byte aligned:
// k is a multiple of 32), not eight.
@group(0) @binding(3) var<storage, read> xq: array<vec4<u32>>;
@group(0) @binding(4) var<storage, read> xs: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> bias: array<f32>;
@group(0) @binding(6) var<storage, read_write> out: array<f32>;
// Split-K partial sums [split][m][n] (decode on GPUs: a long k alone gives too few threads).
@group(0) @binding(7) var<storage, read_write> part: array<f32>;

//#if LORA
// Fused LoRA: y += s·B·(A·x) in the same output pass. `lora_u` holds A·x per row (the
// `shrink` entry of lora.wgsl ran before); each row names its adapter by (rank, rank
// offset) — rank 0 for none, so rows of one batch can use different adapters or none.
// B is stored pre-scaled by s, f16 pairs along the rank, word-major [rank/2][n].
@group(0) @binding(8) var<storage, read> lora_rows: array<vec2<u32>>;
@group(0) @binding(9) var<storage, read> lora_u: array<f32>;
@group(0) @binding(10) var<storage, read> lora_b: array<u32>;

fn lora_delta(row: u32, col: u32) -> f32 {
    let ra = lora_rows[row];
    let rank = ra.x;
    if (rank == 0u) {
        return 0.0;
    }
    let seg = select(select(2u, 1u, col < p.seg2), 0u, col < p.seg1);
    let ub = row * p.u_stride + seg * rank;
    let n_all = p.out_offset + p.n;
    var d = 0.0;
    for (var j = 0u; j < rank / 2u; j = j + 1u) {
        let b = unpack2x16float(lora_b[(ra.y / 2u + j) * n_all + col]);
        d = d + b.x * lora_u[ub + 2u * j] + b.y * lora_u[ub + 2u * j + 1u];
    }
    return d;
}
//#endif

//#if SWIGLU
// gate|up with SwiGLU and int8 requantization in the epilogue (decode's int8 path): the
// matrix is [gate; up] (columns 0..n/2 and n/2..n) and a workgroup takes 32 gate columns
// (lanes 0..31) and the same 32 up columns (lanes 32..63), so it holds one whole block of
// h = silu(gate) · up per row. The lanes leave their values in `gu`; then lane r writes
// row r's block as the down projection's int8 input (`hq`, `hs`, as quantize_act would).
// No f32 gate|up buffer and no SwiGLU launch. (Bindings 8..10 are LoRA's, bound or not.)
@group(0) @binding(11) var<storage, read_write> hq: array<u32>;
@group(0) @binding(12) var<storage, read_write> hs: array<vec4<f32>>;
var<workgroup> gu: array<f32, 64 * ROWS>;
var<private> lane: u32;

fn swiglu_column(x: u32) -> u32 {
    return select(p.n / 2u + x * 32u + lane - 32u, x * 32u + lane, lane < 32u);
}

// Block x of h for rows m0.. (call in uniform control flow, after every lane's `finish`).
fn swiglu_store(m0: u32, x: u32) {
    workgroupBarrier();
    let half = p.n / 2u;
    if (leader && lane < ROWS && m0 + lane < p.m) {
        var v: array<f32, 32>;
        for (var i = 0u; i < 32u; i = i + 1u) {
            v[i] = silu(gu[lane * 64u + i]) * gu[lane * 64u + 32u + i];
        }
        let blk = quantize_block(&v);
        let row = m0 + lane;
        for (var w = 0u; w < 8u; w = w + 1u) {
            hq[row * (half / 4u) + x * 8u + w] = blk.words[w];
        }
        hs[row * (half / 32u) + x] = blk.stats;
    }
}
//#endif

//#if ROPE
// QKV with RoPE and the KV-cache store in the epilogue (decode's int8 path): the matrix is
// [Q heads | K heads | V heads] of head_dim HEAD_DIM (a multiple of 64), and a workgroup
// takes dims 32j..32j+31 of one head (lanes 0..31) and their rotation partners
// HEAD_DIM/2 + 32j.. (lanes 32..63), so it holds whole rotate-half pairs. Q is rotated in
// place in `out` (attention reads it there), K rotated and V as they are go to this
// layer's f16 cache at each row's slot. No separate RoPE launch. (Bindings 8..10 are
// LoRA's, bound or not; the constants follow rope.wgsl.)
struct Rope {
    n_head: u32,
    n_kv_head: u32,
    theta: f32,
    _pad: u32,
}
@group(0) @binding(11) var<uniform> rope: Rope;
@group(0) @binding(12) var<storage, read> positions: array<u32>;
@group(0) @binding(13) var<storage, read> slots: array<u32>;
@group(0) @binding(14) var<storage, read_write> k_cache: array<u32>;
@group(0) @binding(15) var<storage, read_write> v_cache: array<u32>;
var<workgroup> gu: array<f32, 64 * ROWS>;
var<private> lane: u32;

fn rope_column(x: u32) -> u32 {
    let per_head = HEAD_DIM / 64u;
    let head = x / per_head;
    let j = x % per_head;
    return head * HEAD_DIM + select(HEAD_DIM / 2u + 32u * j + lane - 32u, 32u * j + lane, lane < 32u);
}

// Rows m0.. of workgroup x (call in uniform control flow, after every lane's `finish`).
fn rope_store(m0: u32, x: u32) {
    workgroupBarrier();
    let per_head = HEAD_DIM / 64u;
    let head = x / per_head;
    let i = 32u * (x % per_head) + lane % 32u; // this lane's dim in the first half
    let kv_dim = rope.n_kv_head * HEAD_DIM;
    for (var r = 0u; r < ROWS; r = r + 1u) {
        let row = m0 + r;
        let valid = row < p.m;
        let pos = positions[min(row, p.m - 1u)];
        // Rotate this lane's pair (lanes 32.. take the second halves of the same pairs).
        let a = gu[r * 64u + lane % 32u];
        let b = gu[r * 64u + 32u + lane % 32u];
        // As rope.wgsl's `rotate`, operation for operation.
        let inv_freq = 1.0 / pow(rope.theta, f32(2u * i) / f32(HEAD_DIM));
        let angle = f32(pos) * inv_freq;
        let c = cos(angle);
        let sn = sin(angle);
        let rot = vec2<f32>(a * c - b * sn, b * c + a * sn);
        var v = select(rot.x, rot.y, lane >= 32u);
        if (head >= rope.n_head + rope.n_kv_head) {
            v = gu[r * 64u + lane]; // V: not rotated
        }
        workgroupBarrier();
        if (leader) {
            gu[r * 64u + lane] = v;
        }
        workgroupBarrier();
        if (leader && valid && head < rope.n_head) {
            out[row * p.out_stride + rope_column(x)] = v;
        } else if (leader && valid && lane % 2u == 0u) {
            // K or V: dims (d, d + 1) of this lane and the next as one f16 pair.
            let d = rope_column(x) % HEAD_DIM;
            let word = pack2x16float(vec2<f32>(v, gu[r * 64u + lane + 1u]));
            if (head < rope.n_head + rope.n_kv_head) {
                k_cache[(slots[row] * kv_dim + (head - rope.n_head) * HEAD_DIM + d) / 2u] = word;
            } else {
                v_cache[(slots[row] * kv_dim + (head - rope.n_head - rope.n_kv_head) * HEAD_DIM + d) / 2u] = word;
            }
        }
    }
}
//#endif

//#if NORM
// A matmul into the residual stream that also writes the next RMSNorm's input (decode's
// int8 path): y = x / rms(x) · g is never formed. Its 1/rms is one number per row, so it
// commutes with the next matmul: this epilogue writes x ⊙ g as int8 blocks, with Σx² of
// each block in the stats' fourth lane, and the consumer (flags bit 2) sums those and
// scales its dot products by 1/sqrt(mean(x²) + eps). No norm launch between the two.
// A workgroup's 64 columns are two whole blocks (n is a multiple of 64); lanes 2r and
// 2r + 1 quantize row r's two. (Bindings 8..10 are LoRA's, bound or not.)
@group(0) @binding(11) var<storage, read> norm_weight: array<f32>;
@group(0) @binding(12) var<storage, read_write> nq: array<u32>;
@group(0) @binding(13) var<storage, read_write> ns: array<vec4<f32>>;
var<workgroup> gu: array<f32, 64 * ROWS>;
var<private> lane: u32;

// Rows m0.. of workgroup x (call in uniform control flow, after every lane's `finish`).
fn norm_store(m0: u32, x: u32) {
    workgroupBarrier();
    let r = lane / 2u;
    let blk = 2u * x + lane % 2u;
    let row = m0 + r;
    if (leader && r < ROWS && row < p.m) {
        var v: array<f32, 32>;
        var ss = 0.0;
        for (var i = 0u; i < 32u; i = i + 1u) {
            let xv = gu[r * 64u + (lane % 2u) * 32u + i];
            ss = ss + xv * xv;
            v[i] = xv * norm_weight[blk * 32u + i];
        }
        var b = quantize_block(&v);
        b.stats.w = ss;
        for (var w = 0u; w < 8u; w = w + 1u) {
            nq[row * (p.n / 4u) + blk * 8u + w] = b.words[w];
        }
        ns[row * (p.n / 32u) + blk] = b.stats;
    }
}
//#endif

//#if SUBGROUPS
// Group g's activations for rows m0 .. m0 + ROWS (rows past p.m repeat the last): this
// lane's share — half of one row's block per four rows, one row's stats per eight.
struct Blocks {
    words: array<vec4<u32>, (ROWS + 3u) / 4u>,
    stats: array<vec4<f32>, (ROWS + 7u) / 8u>,
}

fn load_blocks(m0: u32, g: u32, l: u32) -> Blocks {
    var b: Blocks;
    let groups = p.k / 32u;
    for (var j = 0u; j < (ROWS + 3u) / 4u; j = j + 1u) {
        let row = min(m0 + 4u * j + l / 2u, p.m - 1u);
        b.words[j] = xq[(row * (p.k / 4u) + g * 8u) / 4u + l % 2u];
    }
    for (var j = 0u; j < (ROWS + 7u) / 8u; j = j + 1u) {
        b.stats[j] = xs[min(m0 + 8u * j + l, p.m - 1u) * groups + g];
    }
    return b;
}
//#endif

// Slice 0 of a workgroup writes the results; the other slices only add their partial sums.
var<private> leader: bool = true;
var<workgroup> slice_part: array<vec2<f32>, 64 * SLICES>;

// (acc, ss) summed over the workgroup's k slices, valid in slice 0 (call in uniform
// control flow: every slice passes the barriers).
fn slice_sum(slice: u32, col_lane: u32, acc: f32, ss: f32) -> vec2<f32> {
    var t = vec2<f32>(acc, ss);
    if (SLICES > 1u) {
        workgroupBarrier();
        slice_part[slice * 64u + col_lane] = t;
        workgroupBarrier();
        if (slice == 0u) {
            for (var z = 1u; z < SLICES; z = z + 1u) {
                t = t + slice_part[z * 64u + col_lane];
            }
        }
    }
    return t;
}

// 1/rms of a row whose input blocks carry a folded norm's Σx² (see NORM), else 1.
fn rms_scale(ss: f32) -> f32 {
    return select(1.0, inverseSqrt(ss / f32(p.k) + p.rms_eps), (p.flags & 4u) != 0u);
}

// Output of (row, n): + bias, + LoRA, + old value when accumulating (the residual stream).
// `acc` is already scaled by the row's 1/rms; LoRA's u was too (lora.wgsl's shrink).
fn finish(row: u32, n: u32, acc: f32) {
    var v = acc;
//#if LORA
    v = v + lora_delta(row, p.out_offset + n);
//#endif
    if ((p.flags & 1u) != 0u) {
        v = v + bias[p.out_offset + n];
    }
//#if SWIGLU
    gu[(row % ROWS) * 64u + lane] = v;
//#else
//#if ROPE
    gu[(row % ROWS) * 64u + lane] = v;
//#else
    let o = row * p.out_stride + p.out_offset + n;
    let y = v + select(0.0, out[o], (p.flags & 2u) != 0u);
    out[o] = y;
//#if NORM
    gu[(row % ROWS) * 64u + lane] = y;
//#endif
//#endif
//#endif
}

// The epilogue variant's block stores for rows m0.. of workgroup x, once every lane's
// `finish` is done (call in uniform control flow); nothing for the plain matmul.
fn epilogue(m0: u32, x: u32) {
//#if SWIGLU
    swiglu_store(m0, x);
//#endif
//#if ROPE
    rope_store(m0, x);
//#endif
//#if NORM
    norm_store(m0, x);
//#endif
}

// A tile's result for (row, n): a partial sum when k is split, else the output. `ss`:
// the row's Σx² over the groups this invocation read (all of them when k is not split).
fn store(row: u32, n: u32, z: u32, acc: f32, ss: f32) {
    if (row >= p.m || n >= p.n || !leader) {
        return;
    }
    if (p.splits > 1u) {
        part[(z * p.m + row) * p.n + n] = acc;
    } else {
        finish(row, n, acc * rms_scale(ss));
    }
}

// Groups g0..g1 of slice `slice` of split z (p.splits × SLICES parts in all).
fn split_range(groups: u32, z: u32, slice: u32) -> vec2<u32> {
    let parts = p.splits * SLICES;
    let per = (groups + parts - 1u) / parts;
    let i = z * SLICES + slice;
    let g0 = min(i * per, groups);
    return vec2<u32>(g0, min(g0 + per, groups));
}

@compute @workgroup_size(64 * SLICES)
//#if SUBGROUPS
fn int4(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>, @builtin(subgroup_invocation_id) sg_lane: u32) {
//#else
fn int4(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
//#endif
//#if SWIGLU
    lane = lid.x % 64u;
    let n = swiglu_column(wid.x);
//#else
//#if ROPE
    lane = lid.x % 64u;
    let n = rope_column(wid.x);
//#else
//#if NORM
    lane = lid.x % 64u;
    let n = wid.x * 64u + lid.x % 64u;
//#else
    // Lanes past the end stay (the broadcasts below read every lane, the slices meet at
    // barriers), on the last column; `store` skips them.
    let n = wid.x * 64u + lid.x % 64u;
//#endif
//#endif
//#endif
    let col = min(n, p.n - 1u);
    let slice = lid.x / 64u;
    leader = slice == 0u;
    let m0 = wid.y * ROWS;
    let groups = p.k / 32u;
    let xwords = p.k / 4u;
    // Rows past the end repeat the last row: no branches in the hot loop.
    let row{r} = min(m0 + {r}u, p.m - 1u);
    var acc{r}: f32 = 0.0;
    var ss{r}: f32 = 0.0;
    let gr = split_range(groups, wid.z, slice);
    for (var g = gr.x; g < gr.y; g = g + 1u) {
        let sm = unpack2x16float(scales[g * p.n + col]);
        let wbase = g * 4u * p.n + col;
        let w0 = qweight[wbase];
        let w1 = qweight[wbase + p.n];
        let w2 = qweight[wbase + 2u * p.n];
        let w3 = qweight[wbase + 3u * p.n];
        let lo0 = w0 & 0x0F0F0F0Fu;
        let hi0 = (w0 >> 4u) & 0x0F0F0F0Fu;
        let lo1 = w1 & 0x0F0F0F0Fu;
        let hi1 = (w1 >> 4u) & 0x0F0F0F0Fu;
        let lo2 = w2 & 0x0F0F0F0Fu;
        let hi2 = (w2 >> 4u) & 0x0F0F0F0Fu;
        let lo3 = w3 & 0x0F0F0F0Fu;
        let hi3 = (w3 >> 4u) & 0x0F0F0F0Fu;
//#if SUBGROUPS
        // Rows' blocks and stats, loaded together and handed out (see the top).
        let blocks = load_blocks(m0, g, sg_lane % 8u);
        let xlo{r} = subgroupBroadcast(blocks.words[{r}u / 4u], 2u * ({r}u % 4u));
        let xhi{r} = subgroupBroadcast(blocks.words[{r}u / 4u], 2u * ({r}u % 4u) + 1u);
        let s{r} = subgroupBroadcast(blocks.stats[{r}u / 8u], {r}u % 8u);
//#else
        // Every lane loads the same addresses: one broadcast each on GPUs.
        let xlo{r} = xq[(row{r} * xwords + g * 8u) / 4u];
        let xhi{r} = xq[(row{r} * xwords + g * 8u) / 4u + 1u];
        let s{r} = xs[row{r} * groups + g];
//#endif
        let d{r} = dot4I8Packed(lo0, xlo{r}.x) + dot4I8Packed(hi0, xlo{r}.y) + dot4I8Packed(lo1, xlo{r}.z) + dot4I8Packed(hi1, xlo{r}.w) + dot4I8Packed(lo2, xhi{r}.x) + dot4I8Packed(hi2, xhi{r}.y) + dot4I8Packed(lo3, xhi{r}.z) + dot4I8Packed(hi3, xhi{r}.w);
        acc{r} = acc{r} + sm.x * (s{r}.x * f32(d{r}) + 8.0 * s{r}.z) + sm.y * s{r}.y;
        ss{r} = ss{r} + s{r}.w;
    }
    let t{r} = slice_sum(slice, lid.x % 64u, acc{r}, ss{r});
    store(m0 + {r}u, n, wid.z, t{r}.x, t{r}.y);
    if (p.splits == 1u) {
        epilogue(m0, wid.x);
    }
}

@compute @workgroup_size(64 * SLICES)
//#if SUBGROUPS
fn int8(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>, @builtin(subgroup_invocation_id) sg_lane: u32) {
//#else
fn int8(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
//#endif
//#if SWIGLU
    lane = lid.x % 64u;
    let n = swiglu_column(wid.x);
//#else
//#if ROPE
    lane = lid.x % 64u;
    let n = rope_column(wid.x);
//#else
//#if NORM
    lane = lid.x % 64u;
    let n = wid.x * 64u + lid.x % 64u;
//#else
    // Lanes past the end stay (the broadcasts below read every lane, the slices meet at
    // barriers), on the last column; `store` skips them.
    let n = wid.x * 64u + lid.x % 64u;
//#endif
//#endif
//#endif
    let col = min(n, p.n - 1u);
    let slice = lid.x / 64u;
    leader = slice == 0u;
    let m0 = wid.y * ROWS;
    let groups = p.k / 32u;
    let xwords = p.k / 4u;
    let row{r} = min(m0 + {r}u, p.m - 1u);
    var acc{r}: f32 = 0.0;
    var ss{r}: f32 = 0.0;
    let gr = split_range(groups, wid.z, slice);
    for (var g = gr.x; g < gr.y; g = g + 1u) {
        let sw = unpack2x16float(scales[g * p.n + col]).x;
        let wbase = g * 8u * p.n + col;
        let w0 = qweight[wbase];
        let w1 = qweight[wbase + p.n];
        let w2 = qweight[wbase + 2u * p.n];
        let w3 = qweight[wbase + 3u * p.n];
        let w4 = qweight[wbase + 4u * p.n];
        let w5 = qweight[wbase + 5u * p.n];
        let w6 = qweight[wbase + 6u * p.n];
        let w7 = qweight[wbase + 7u * p.n];
//#if SUBGROUPS
        // Rows' blocks and stats, loaded together and handed out (see the top).
        let blocks = load_blocks(m0, g, sg_lane % 8u);
        let xlo{r} = subgroupBroadcast(blocks.words[{r}u / 4u], 2u * ({r}u % 4u));
        let xhi{r} = subgroupBroadcast(blocks.words[{r}u / 4u], 2u * ({r}u % 4u) + 1u);
        let s{r} = subgroupBroadcast(blocks.stats[{r}u / 8u], {r}u % 8u);
//#else
        // Every lane loads the same addresses: one broadcast each on GPUs.
        let xlo{r} = xq[(row{r} * xwords + g * 8u) / 4u];
        let xhi{r} = xq[(row{r} * xwords + g * 8u) / 4u + 1u];
        let s{r} = xs[row{r} * groups + g];
//#endif
        let d{r} = dot4I8Packed(w0, xlo{r}.x) + dot4I8Packed(w1, xlo{r}.y) + dot4I8Packed(w2, xlo{r}.z) + dot4I8Packed(w3, xlo{r}.w) + dot4I8Packed(w4, xhi{r}.x) + dot4I8Packed(w5, xhi{r}.y) + dot4I8Packed(w6, xhi{r}.z) + dot4I8Packed(w7, xhi{r}.w);
        acc{r} = acc{r} + sw * s{r}.x * f32(d{r});
        ss{r} = ss{r} + s{r}.w;
    }
    let t{r} = slice_sum(slice, lid.x % 64u, acc{r}, ss{r});
    store(m0 + {r}u, n, wid.z, t{r}.x, t{r}.y);
    if (p.splits == 1u) {
        epilogue(m0, wid.x);
    }
}

// Sum the k splits of one (row, column), then bias and residual as above.
@compute @workgroup_size(64)
fn reduce(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let m = gid.y;
//#if SWIGLU
    lane = lid.x;
    let n = swiglu_column(wid.x);
//#else
//#if ROPE
    lane = lid.x;
    let n = rope_column(wid.x);
//#else
//#if NORM
    lane = lid.x;
    let n = gid.x;
//#else
    let n = gid.x;
    if (n >= p.n || m >= p.m) {
        return;
    }
//#endif
//#endif
//#endif
    var acc = 0.0;
    for (var z = 0u; z < p.splits; z = z + 1u) {
        acc = acc + part[(z * p.m + m) * p.n + n];
    }
    var ss = 0.0;
    if ((p.flags & 4u) != 0u) {
        for (var g = 0u; g < p.k / 32u; g = g + 1u) {
            ss = ss + xs[m * (p.k / 32u) + g].w;
        }
    }
    finish(m, n, acc * rms_scale(ss));
    epilogue(m, wid.x);
}
