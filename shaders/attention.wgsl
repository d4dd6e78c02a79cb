// Causal attention with GQA over the f16 KV cache, one workgroup per (head, row, split).
// With n_splits > 1 (decode on GPUs: flash-decoding) each workgroup takes one run of
// keys_per_split keys and writes an unnormalized partial with its (max, sum); `merge`
// combines the splits by their log-sum-exp. With one split the result is written directly.
// Variant SUBGROUPS=1 reduces with subgroup operations where the device has them.
// SLICES (≥ 1): `main`'s workgroup is SLICES slices of 64 lanes, each taking its own run of
// the workgroup's keys; the slices' (max, sum, output) are combined in workgroup memory as
// `merge` combines splits, so one stream's decode can cover its keys with as many lanes
// as a split launch gives and no merge launch.
// The cache is paged: key t of row m sits in slot tables[m][t / block_size] · block_size
// + t % block_size, so streams forked from one prompt share its blocks.
// Row m attends to its keys 0..=positions[m] (so prefill is causal and decode sees
// the whole history). Keys are processed in chunks of 64 with an online softmax
// (running max and sum), so any context length fits in a fixed 64-float scratch.
//
// qkv: [m][qkv_stride] f32 (Q heads first)   out: [m][n_head·head_dim] f32
// k_cache, v_cache: [slot][n_kv_head·head_dim / 2] u32 (f16 pairs)

struct Params {
    n_head: u32,
    n_kv_head: u32,
    head_dim: u32,
    m: u32,
    qkv_stride: u32,
    scale: f32,          // 1 / sqrt(head_dim)
    n_splits: u32,       // workgroups per (head, row) along the keys (grid z)
    keys_per_split: u32,
    block_size: u32,     // cache slots per block
    max_blocks: u32,     // block-table entries per row
    shared_splits: u32,  // leading splits whose keys every row shares (done by `prefix`)
    quantize: u32,       // 1: also write the output as int8 blocks for the Wo matmul

}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> qkv: array<f32>;
@group(0) @binding(2) var<storage, read> positions: array<u32>;
//#if QUADS
// head_dim a multiple of 8: a head's words are whole vec4s, so one load brings 8 dims (on
// lavapipe a load is a loop over the lanes whatever its width: 4x fewer loops).
@group(0) @binding(3) var<storage, read> k_cache: array<vec4<u32>>;
@group(0) @binding(4) var<storage, read> v_cache: array<vec4<u32>>;
const UNIT: u32 = 4u; // cache words per load
fn k_word(i: u32) -> u32 { return k_cache[i / 4u][i % 4u]; }
fn v_word(i: u32) -> u32 { return v_cache[i / 4u][i % 4u]; }
fn k_unit(i: u32) -> vec4<u32> { return k_cache[i / 4u]; }
fn v_unit(i: u32) -> vec4<u32> { return v_cache[i / 4u]; }
//#else
@group(0) @binding(3) var<storage, read> k_cache: array<u32>;
@group(0) @binding(4) var<storage, read> v_cache: array<u32>;
const UNIT: u32 = 1u;
fn k_word(i: u32) -> u32 { return k_cache[i]; }
fn v_word(i: u32) -> u32 { return v_cache[i]; }
fn k_unit(i: u32) -> vec4<u32> { return vec4<u32>(k_cache[i], 0u, 0u, 0u); }
fn v_unit(i: u32) -> vec4<u32> { return vec4<u32>(v_cache[i], 0u, 0u, 0u); }
//#endif
@group(0) @binding(5) var<storage, read_write> out: array<f32>;
// Split-K partials [m][n_head][n_splits]: unnormalized outputs [head_dim] and (max, sum).
@group(0) @binding(6) var<storage, read_write> part_o: array<f32>;
@group(0) @binding(7) var<storage, read_write> part_ml: array<vec2<f32>>;
// Block table per row: [m][max_blocks] block ids.
@group(0) @binding(8) var<storage, read> tables: array<u32>;
// With p.quantize: the output again as matmul_int4's int8 blocks [m][n_head·head_dim / 4]
// and stats [m][n_head·head_dim / 32] (head_dim a multiple of 32, so blocks never straddle
// heads): the Wo matmul needs no quantization launch of its own.
@group(0) @binding(9) var<storage, read_write> xq: array<u32>;
@group(0) @binding(10) var<storage, read_write> xs: array<vec4<f32>>;

// Quantize block g of head h of row m from `out`, which this workgroup has written.
fn quantize_out(m: u32, h: u32, g: u32) {
    let q_dim = p.n_head * p.head_dim;
    let first = m * q_dim + h * p.head_dim + g * 32u;
    var v: array<f32, 32>;
    for (var i = 0u; i < 32u; i = i + 1u) {
        v[i] = out[first + i];
    }
    store_block(m, h, g, &v);
}

fn store_block(m: u32, h: u32, g: u32, v: ptr<function, array<f32, 32>>) {
    let q_dim = p.n_head * p.head_dim;
    let blk = quantize_block(v);
    let word = m * (q_dim / 4u) + (h * p.head_dim + g * 32u) / 4u;
    for (var w = 0u; w < 8u; w = w + 1u) {
        xq[word + w] = blk.words[w];
    }
    xs[m * (q_dim / 32u) + (h * p.head_dim) / 32u + g] = blk.stats;
}

fn key_slot(m: u32, t: u32) -> u32 {
    return tables[m * p.max_blocks + t / p.block_size] * p.block_size + t % p.block_size;
}

const WG: u32 = 64u;
const MAX_HEAD_DIM: u32 = 256u;
var<workgroup> q: array<vec4<f32>, MAX_HEAD_DIM / 4u>;
// Each slice's own 64 (see SLICES): `sbase` is this lane's slice times 64.
var<workgroup> prob: array<f32, 64 * SLICES>;
var<workgroup> red: array<f32, 64 * SLICES>;
// Cache slot of each key of the chunk: the block-table lookup (a load and, on CPUs, eight
// scalar divisions per lane vector) is done once per key, not once per key and lane.
var<workgroup> slot: array<u32, 64 * SLICES>;
// Per-lane partial outputs (8 dims) of the key groups, summed at the end (see `main`).
var<workgroup> pacc: array<vec4<f32>, 128 * SLICES>;
// Each slice's (max, sum), for combining the slices.
var<workgroup> slice_ml: array<vec2<f32>, SLICES>;
var<private> sbase: u32;

// q · k over the dims of the UNIT cache words at word w (unpacked from `kk`).
fn dot_unit(w: u32, kk: vec4<u32>) -> f32 {
//#if QUADS
    let a = vec4<f32>(unpack2x16float(kk.x), unpack2x16float(kk.y));
    let b = vec4<f32>(unpack2x16float(kk.z), unpack2x16float(kk.w));
    return dot(q[w / 2u], a) + dot(q[w / 2u + 1u], b);
//#else
    let qq = q[w / 2u];
    return dot(select(qq.xy, qq.zw, (w & 1u) == 1u), unpack2x16float(kk.x));
//#endif
}

// The 2·UNIT output dims a lane owns (dims 2w.. of its head), in order: lo, then hi.
fn unit_dims(lo: vec4<f32>, hi: vec4<f32>) -> array<f32, 8> {
    return array<f32, 8>(lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w);
}
// One split of shared-prefix keys, loaded once for all rows (`prefix`, head_dim ≤ 64).
var<workgroup> pk: array<u32, 2048>;
var<workgroup> pv: array<u32, 2048>;

//#if SUBGROUPS
// Subgroup reductions: one subgroup op, then one slot per subgroup through workgroup
// memory (two barriers instead of log2(64) + 1). Subgroup size comes from the device.
var<private> sg_lane: u32;
var<private> sg_size: u32;

fn reduce_max(tid: u32, v: f32) -> f32 {
    let s = subgroupMax(v);
    if (sg_lane == 0u) {
        red[sbase + tid / sg_size] = s;
    }
    workgroupBarrier();
    var r = red[sbase];
    for (var i = 1u; i < (WG + sg_size - 1u) / sg_size; i = i + 1u) {
        r = max(r, red[sbase + i]);
    }
    workgroupBarrier();
    return r;
}

fn reduce_sum(tid: u32, v: f32) -> f32 {
    let s = subgroupAdd(v);
    if (sg_lane == 0u) {
        red[sbase + tid / sg_size] = s;
    }
    workgroupBarrier();
    var r = red[sbase];
    for (var i = 1u; i < (WG + sg_size - 1u) / sg_size; i = i + 1u) {
        r = r + red[sbase + i];
    }
    workgroupBarrier();
    return r;
}
//#else
fn reduce_max(tid: u32, v: f32) -> f32 {
    red[sbase + tid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s >> 1u) {
        if (tid < s) {
            red[sbase + tid] = max(red[sbase + tid], red[sbase + tid + s]);
        }
        workgroupBarrier();
    }
    let r = red[sbase];
    workgroupBarrier();
    return r;
}

fn reduce_sum(tid: u32, v: f32) -> f32 {
    red[sbase + tid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s >> 1u) {
        if (tid < s) {
            red[sbase + tid] = red[sbase + tid] + red[sbase + tid + s];
        }
        workgroupBarrier();
    }
    let r = red[sbase];
    workgroupBarrier();
    return r;
}
//#endif

@compute @workgroup_size(64 * SLICES)
//#if SUBGROUPS
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32, @builtin(subgroup_size) size: u32) {
    sg_lane = lane;
    sg_size = size;
//#else
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
//#endif
    // The grid skips the leading shared-prefix splits: the `prefix` pass did them.
    let z = wid.z + p.shared_splits;
    let h = wid.x;
    let m = wid.y;
    let tid = lid.x % WG;
    let slice = lid.x / WG;
    sbase = slice * WG;
    let hd = p.head_dim;
    let words = hd / 2u;                 // packed words per head
    let kv_words = p.n_kv_head * words;  // packed words per cache slot
    let kvh = h / (p.n_head / p.n_kv_head);
    for (var d4 = lid.x; d4 < hd / 4u; d4 = d4 + WG * SLICES) {
        let qb = m * p.qkv_stride + h * hd + 4u * d4;
        q[d4] = vec4<f32>(qkv[qb], qkv[qb + 1u], qkv[qb + 2u], qkv[qb + 3u]) * p.scale;
    }
    workgroupBarrier();

    let n_keys = positions[m] + 1u;
    var k_begin = 0u;
    var k_end = n_keys;
    if (p.n_splits > 1u) {
        k_begin = min(z * p.keys_per_split, n_keys);
        k_end = min(k_begin + p.keys_per_split, n_keys);
    }
    // This slice's keys: whole chunks of WG, the same count for every slice (they meet at
    // the reductions' barriers), keys past the slice's end masked.
    let chunks = (k_end - k_begin + WG * SLICES - 1u) / (WG * SLICES);
    let s_begin = min(k_begin + slice * chunks * WG, k_end);
    let s_end = min(s_begin + chunks * WG, k_end);
    var run_max = -3.0e38;
    var run_sum = 0.0;
    // Scores: lane t takes key t of the chunk. P·V: a head is `units` loads of UNIT words;
    // lane tid owns unit tid % units (2·UNIT output dims) and, as one of `groups` key
    // groups, keys j ≡ tid / units (mod groups) of each chunk; the groups' partials are
    // summed after the loop. (units ≤ 64: ModelConfig refuses head_dim > 128 that is not
    // a multiple of 8.)
    let units = words / UNIT;
    let groups = WG / units;
    let w_own = (tid % units) * UNIT;
    let g_own = tid / units;
    var lo = vec4<f32>(0.0);
    var hi = vec4<f32>(0.0);
    for (var ci = 0u; ci < chunks; ci = ci + 1u) {
        let c = s_begin + ci * WG;
        let t = c + tid;
        var s = -3.0e38;
        if (t < s_end) {
            let st = key_slot(m, t);
            slot[sbase + tid] = st;
            let kb = st * kv_words + kvh * words;
            var dot = 0.0;
            for (var w = 0u; w < words; w = w + UNIT) {
                dot = dot + dot_unit(w, k_unit(kb + w));
            }
            s = dot;
        }
        let new_max = max(run_max, reduce_max(tid, s));
        let e = select(0.0, exp(s - new_max), t < s_end);
        prob[sbase + tid] = e;
        let correction = exp(run_max - new_max);
        run_sum = run_sum * correction + reduce_sum(tid, e);
        run_max = new_max;
        lo = lo * correction;
        hi = hi * correction;
        let n_chunk = select(0u, min(WG, s_end - c), c < s_end);
        if (g_own < groups) {
            for (var j = g_own; j < n_chunk; j = j + groups) {
                let vv = v_unit(slot[sbase + j] * kv_words + kvh * words + w_own);
                let pj = prob[sbase + j];
                lo = lo + pj * vec4<f32>(unpack2x16float(vv.x), unpack2x16float(vv.y));
                hi = hi + pj * vec4<f32>(unpack2x16float(vv.z), unpack2x16float(vv.w));
            }
        }
        workgroupBarrier();
    }
    // Sum the key groups' partials into the lanes of group 0 (tid < units).
    if (groups > 1u) {
        pacc[2u * (sbase + tid)] = lo;
        pacc[2u * (sbase + tid) + 1u] = hi;
        workgroupBarrier();
        if (tid < units) {
            for (var g = 1u; g < groups; g = g + 1u) {
                lo = lo + pacc[2u * (sbase + g * units + tid)];
                hi = hi + pacc[2u * (sbase + g * units + tid) + 1u];
            }
        }
    }
    // Combine the slices into slice 0 by their log-sum-exp (as `merge` does the splits).
    if (SLICES > 1u) {
        workgroupBarrier();
        if (tid == 0u) {
            slice_ml[slice] = vec2<f32>(run_max, run_sum);
        }
        if (tid < units) {
            pacc[2u * (sbase + tid)] = lo;
            pacc[2u * (sbase + tid) + 1u] = hi;
        }
        workgroupBarrier();
        if (slice == 0u) {
            var mx = slice_ml[0].x;
            for (var i = 1u; i < SLICES; i = i + 1u) {
                mx = max(mx, slice_ml[i].x);
            }
            let c0 = exp(run_max - mx);
            lo = lo * c0;
            hi = hi * c0;
            run_sum = run_sum * c0;
            for (var i = 1u; i < SLICES; i = i + 1u) {
                let ci = exp(slice_ml[i].x - mx);
                run_sum = run_sum + ci * slice_ml[i].y;
                lo = lo + ci * pacc[2u * (i * WG + tid)];
                hi = hi + ci * pacc[2u * (i * WG + tid) + 1u];
            }
            run_max = mx;
        }
    }
    let owner = tid < units && slice == 0u;
    if (p.n_splits > 1u) {
        let part = (m * p.n_head + h) * p.n_splits + z;
        if (tid == 0u && slice == 0u) {
            part_ml[part] = vec2<f32>(run_max, run_sum);
        }
        if (owner) {
            let v = unit_dims(lo, hi);
            for (var i = 0u; i < 2u * UNIT; i = i + 1u) {
                part_o[part * hd + 2u * w_own + i] = v[i];
            }
        }
        return;
    }
    if (owner) {
        let v = unit_dims(lo, hi);
        for (var i = 0u; i < 2u * UNIT; i = i + 1u) {
            out[m * p.n_head * hd + h * hd + 2u * w_own + i] = v[i] / run_sum;
        }
    }
    if (p.quantize != 0u) {
        storageBarrier();
        if (tid < hd / 32u && slice == 0u) {
            quantize_out(m, h, tid);
        }
    }
}

// Shared-prefix (cascade) attention, as Hydragen / FlashInfer's cascade: the N streams'
// queries against the prompt they share form a matrix, so the prompt's K/V is read once
// for all of them instead of once per stream and head. One workgroup per (KV head, chunk
// of ROWS queries, split z < shared_splits): it loads the split's keys and values into
// workgroup memory once, scores its queries — every (row, query head of the group) on this
// KV head — with one unpack of each key reused for ROWS queries held in registers, and
// writes the same partials as `main`; `merge` then adds each row's own suffix.
// (head_dim ≤ 64, keys_per_split ≤ 64; every key of the split is inside every row's
// shared prefix, so row 0's block table serves all rows.)
var<workgroup> pq: array<f32, 64 * ROWS>;   // [ROWS][64] scaled queries
var<workgroup> ps: array<f32, 64 * ROWS>;   // [ROWS][64] scores, then probabilities

// Partial-result index of query r (row r / group, head kvh·group + r % group) in split z.
fn prefix_part(r: u32, kvh: u32, group: u32, z: u32) -> u32 {
    let h = kvh * group + r % group;
    return ((r / group) * p.n_head + h) * p.n_splits + z;
}

@compute @workgroup_size(64)
fn prefix(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let kvh = wid.x;
    let z = wid.z;
    let tid = lid.x;
    let hd = p.head_dim;
    let words = hd / 2u;
    let kv_words = p.n_kv_head * words;
    let group = p.n_head / p.n_kv_head;
    let n_q = p.m * group;
    let r0 = wid.y * ROWS;
    let k0 = z * p.keys_per_split;
    let count = p.keys_per_split;
    // The split's K and V, lanes reading consecutive words.
    for (var i = tid; i < count * words; i = i + WG) {
        let kb = key_slot(0u, k0 + i / words) * kv_words + kvh * words + i % words;
        pk[i] = k_word(kb);
        pv[i] = v_word(kb);
    }
    for (var i = tid; i < ROWS * 64u; i = i + WG) {
        let r = r0 + i / 64u;
        let d = i % 64u;
        var v = 0.0;
        if (r < n_q && d < hd) {
            let h = kvh * group + r % group;
            v = qkv[(r / group) * p.qkv_stride + h * hd + d] * p.scale;
        }
        pq[i] = v;
    }
    workgroupBarrier();
    // Scores: lane t takes key t for all ROWS queries.
    if (tid < count) {
        var dot{r} = 0.0;
        for (var w = 0u; w < words; w = w + 1u) {
            let kk = unpack2x16float(pk[tid * words + w]);
            dot{r} = dot{r} + pq[{r}u * 64u + 2u * w] * kk.x + pq[{r}u * 64u + 2u * w + 1u] * kk.y;
        }
        ps[{r}u * 64u + tid] = dot{r};
    }
    workgroupBarrier();
    // Softmax within the split: lane r takes query r.
    if (tid < ROWS && r0 + tid < n_q) {
        var mx = -3.0e38;
        for (var j = 0u; j < count; j = j + 1u) {
            mx = max(mx, ps[tid * 64u + j]);
        }
        var sum = 0.0;
        for (var j = 0u; j < count; j = j + 1u) {
            let e = exp(ps[tid * 64u + j] - mx);
            ps[tid * 64u + j] = e;
            sum = sum + e;
        }
        part_ml[prefix_part(r0 + tid, kvh, group, z)] = vec2<f32>(mx, sum);
    }
    workgroupBarrier();
    // Probabilities · V: lane w of each half takes output dims (2w, 2w+1) for all ROWS
    // queries over half the keys (words ≤ 32, so both halves fit in 64 lanes); the second
    // half's sums go through `pq`, free after the scores.
    let half = tid / words;
    let w = tid % words;
    let j_mid = count / 2u;
    var acc{r} = vec2<f32>(0.0);
    if (half < 2u) {
        for (var j = select(0u, j_mid, half == 1u); j < select(j_mid, count, half == 1u); j = j + 1u) {
            let vv = unpack2x16float(pv[j * words + w]);
            acc{r} = acc{r} + ps[{r}u * 64u + j] * vv;
        }
    }
    if (half == 1u) {
        pq[{r}u * 64u + 2u * w] = acc{r}.x; pq[{r}u * 64u + 2u * w + 1u] = acc{r}.y;
    }
    workgroupBarrier();
    if (half == 0u) {
        if (r0 + {r}u < n_q) { let o = prefix_part(r0 + {r}u, kvh, group, z) * hd + 2u * w; part_o[o] = acc{r}.x + pq[{r}u * 64u + 2u * w]; part_o[o + 1u] = acc{r}.y + pq[{r}u * 64u + 2u * w + 1u]; }
    }
}

// Combine the splits of one (head, row): out = Σ e^(max_z − M)·o_z / Σ e^(max_z − M)·sum_z.
@compute @workgroup_size(64)
fn merge(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let h = wid.x;
    let m = wid.y;
    let hd = p.head_dim;
    let base = (m * p.n_head + h) * p.n_splits;
    var mx = -3.0e38;
    for (var z = 0u; z < p.n_splits; z = z + 1u) {
        mx = max(mx, part_ml[base + z].x);
    }
    var den = 0.0;
    for (var z = 0u; z < p.n_splits; z = z + 1u) {
        let ml = part_ml[base + z];
        den = den + exp(ml.x - mx) * ml.y;
    }
    for (var d = lid.x; d < hd; d = d + WG) {
        var num = 0.0;
        for (var z = 0u; z < p.n_splits; z = z + 1u) {
            num = num + exp(part_ml[base + z].x - mx) * part_o[(base + z) * hd + d];
        }
        out[m * p.n_head * hd + h * hd + d] = num / den;
    }
    if (p.quantize != 0u) {
        storageBarrier();
        if (lid.x < hd / 32u) {
            quantize_out(m, h, lid.x);
        }
    }
}

//#if HEAD_DIM
// Flash prefill: steps of many rows of one stream (a prompt chunk). One invocation per
// (query row, head): its query and output accumulator sit in private arrays and the keys
// stream past in order through an online softmax, so no scores are stored and a 2k-8k
// prompt costs O(keys) memory per row. A workgroup is 64 consecutive rows of one head:
// they share the stream's block table, so every key and value load is the same address
// for all lanes (a broadcast on GPUs; a scalar load on lavapipe). The loop runs to the
// block's last row's keys; each lane masks keys past its own position (causal).
@compute @workgroup_size(64)
fn prefill(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let h = wid.x;
    let m0 = wid.y * 64u;
    let m = min(m0 + lid.x, p.m - 1u);
    let words = HEAD_DIM / 2u;
    let kv_words = p.n_kv_head * words;
    let kvh = h / (p.n_head / p.n_kv_head);
    var q: array<f32, HEAD_DIM>;
    var acc: array<f32, HEAD_DIM>;
    for (var d = 0u; d < HEAD_DIM; d = d + 1u) {
        q[d] = qkv[m * p.qkv_stride + h * HEAD_DIM + d] * p.scale;
        acc[d] = 0.0;
    }
    let pos = positions[m];
    let n_keys = positions[min(m0 + 63u, p.m - 1u)] + 1u;
    var run_max = -3.0e38;
    var run_sum = 0.0;
    for (var t = 0u; t < n_keys; t = t + 1u) {
        let kb = key_slot(m0, t) * kv_words + kvh * words;
        var s = 0.0;
        for (var w = 0u; w < words; w = w + UNIT) {
            let kk = k_unit(kb + w);
            for (var i = 0u; i < UNIT; i = i + 1u) {
                let f = unpack2x16float(kk[i]);
                s = s + q[2u * (w + i)] * f.x + q[2u * (w + i) + 1u] * f.y;
            }
        }
        let valid = t <= pos;
        let new_max = select(run_max, max(run_max, s), valid);
        let correction = exp(run_max - new_max);
        let e = select(0.0, exp(s - new_max), valid);
        run_sum = run_sum * correction + e;
        run_max = new_max;
        for (var w = 0u; w < words; w = w + UNIT) {
            let vu = v_unit(kb + w);
            for (var i = 0u; i < UNIT; i = i + 1u) {
                let vv = unpack2x16float(vu[i]);
                let d = 2u * (w + i);
                acc[d] = acc[d] * correction + e * vv.x;
                acc[d + 1u] = acc[d + 1u] * correction + e * vv.y;
            }
        }
    }
    if (m0 + lid.x < p.m) {
        let o = m * p.n_head * HEAD_DIM + h * HEAD_DIM;
        for (var d = 0u; d < HEAD_DIM; d = d + 1u) {
            acc[d] = acc[d] / run_sum;
            out[o + d] = acc[d];
        }
        // This invocation holds its row's whole head: quantize it straight from registers.
        if (p.quantize != 0u) {
            for (var g = 0u; g < HEAD_DIM / 32u; g = g + 1u) {
                var v: array<f32, 32>;
                for (var i = 0u; i < 32u; i = i + 1u) {
                    v[i] = acc[g * 32u + i];
                }
                store_block(m, h, g, &v);
            }
        }
    }
}
//#endif
