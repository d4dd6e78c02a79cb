// Token sampling on the GPU: one workgroup per row turns a row of logits into the next
// token and its log-prob, so a decode step reads back 8 bytes per row, not the logits.
//
// Greedy (temperature ≤ 0): argmax, the first index on ties (as sampling::argmax), by a
// reduction over (value, index) pairs that prefers the lower index on equal values.
// Otherwise the rules of sampling::Sampler: keep the top_k largest logits (0 = all),
// softmax at the temperature, keep the smallest set by descending probability whose
// mass reaches top_p (≥ 1 = all), renormalize, draw. No sort: a kept set is "logits ≥ a
// threshold", and each threshold is found by a search over the logits' order-preserving
// u32 keys that tests WAYS − 1 = 15 candidates per pass over the row, counting the logits
// ≥ each candidate (top-k) or summing their mass exp((l − max) / T) (top-p): a first pass
// at max − {1/8 … 64} logits (top-k) or temperatures (top-p), then even splits of the key
// range (16× per pass): ≤ 9 passes per threshold, 5-7 on model-like logits; logits below
// the range are skipped; top_k = 1 takes the max without a search. Every logit equal to
// a threshold is kept, so a tie at the k-th logit, or at the logit where the top-p mass
// is reached, keeps a few more tokens than the CPU sampler (which keeps exactly k,
// breaking ties arbitrarily); real logits rarely tie there.
// The draw is an inverse CDF in index order (the same distribution as in probability
// order): u · (kept mass), u from a counter-based hash of (seed, step); each invocation
// sums the mass of one contiguous chunk, a scan over the WG sums finds the chunk, and its
// invocation walks it to the token. Same (seed, step), same logits → same token; the
// stream of draws is the GPU's own, not the CPU sampler's StdRng.
// Log-prob: logit[id] − max − log Σ exp(l − max), the full softmax at temperature 1.
// Reductions go through workgroup memory (no subgroups): this runs on every backend.
//
// The id also goes to next_tokens[r], the next step's input tokens: a step can be fed the
// tokens the last one drew without the host reading them first (decode pipelining).
// A row with top_n > 0 also lists its most likely tokens (OpenAI's top_logprobs): the
// top-k search finds the threshold of the top_n largest logits, and every logit at or
// above it goes to top[r] as (id, log-prob) in no order, TOP_SLOTS at most (ties at the
// threshold past that are dropped; the host sorts and keeps top_n).
//
// logits: [rows][row_stride] f32   rows: [m] SampleRow   out: [m] (id, log-prob bits) u32
// next_tokens: [≥ m] u32   top: [m][TOP_SLOTS] (id, log-prob bits) u32, id TOP_NONE if empty

struct Params {
    n_vocab: u32,
    m: u32,          // rows in this launch (grid y)
    row_stride: u32, // floats from one logits row to the next
    _pad: u32,
}

// One row's settings (ops::sampling::SampleRow).
struct SampleRow {
    temperature: f32, // ≤ 0: greedy
    top_k: u32,       // 0: all
    top_p: f32,       // ≥ 1: all
    seed_lo: u32,
    seed_hi: u32,
    step: u32,        // tokens the stream has sampled so far: a new draw each step
    logits_row: u32,  // the row of `logits` to sample from
    top_n: u32,       // > 0: also list the top_n most likely tokens in `top`
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read> rows: array<SampleRow>;
@group(0) @binding(3) var<storage, read_write> out: array<u32>;
@group(0) @binding(4) var<storage, read_write> next_tokens: array<u32>;
@group(0) @binding(5) var<storage, read_write> top: array<u32>;

const WG: u32 = 256u;
const TOP_SLOTS: u32 = 32u;
const TOP_NONE: u32 = 0xffffffffu;
const WAYS: u32 = 16u;
// Below every finite logit we expect, above -inf (WGSL has no infinity literal).
const NEG_BIG: f32 = -3.0e38;
// First search pass: candidates at mx − scale·d for these d, largest d first (keys ascend).
const FIRST_STEPS = array<f32, 15>(0.125, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0, 64.0);
// "No index yet" in the (value, sum, index) reduction; ids are < 2^24, exact in f32.
const NONE: f32 = 16777216.0;
// key(-inf): every logit is ≥ its value.
const KEY_NEG_INF: u32 = 0x007fffffu;

// (max, Σ exp(l − max), index of the max) per invocation, then the search's and the
// draw's partial sums: two vec4 per invocation.
var<workgroup> red: array<vec4<f32>, 512>;
var<workgroup> wg_lo: u32;
var<workgroup> wg_hi: u32;
var<workgroup> wg_target: f32;
var<workgroup> wg_chunk: u32;
var<workgroup> wg_off: f32;
var<workgroup> wg_top_count: atomic<u32>;

// Order-preserving u32 key of a float (total order, -0 < +0).
fn key_of(v: f32) -> u32 {
    let b = bitcast<u32>(v);
    return select(b | 0x80000000u, ~b, (b & 0x80000000u) != 0u);
}

fn value_of(k: u32) -> f32 {
    return bitcast<f32>(select(~k, k & 0x7fffffffu, (k & 0x80000000u) != 0u));
}

// lowbias32 (Wellons): a bijective u32 mixer.
fn mix32(x0: u32) -> u32 {
    var x = x0;
    x = x ^ (x >> 16u);
    x = x * 0x7feb352du;
    x = x ^ (x >> 15u);
    x = x * 0x846ca68bu;
    x = x ^ (x >> 16u);
    return x;
}

// Uniform in [0, 1) from (seed, step): ops::sampling::draw.
fn draw(seed_lo: u32, seed_hi: u32, step: u32) -> f32 {
    let h = mix32(seed_lo ^ mix32(seed_hi ^ mix32(step ^ 0x9e3779b9u)));
    return f32(h >> 8u) * (1.0 / 16777216.0);
}

fn merge_stats(a: vec4<f32>, b: vec4<f32>) -> vec4<f32> {
    if (b.z == NONE) {
        return a;
    }
    if (a.z == NONE) {
        return b;
    }
    let m = max(a.x, b.x);
    var idx = min(a.z, b.z);
    if (a.x > b.x) {
        idx = a.z;
    } else if (b.x > a.x) {
        idx = b.z;
    }
    return vec4<f32>(m, a.y * exp(a.x - m) + b.y * exp(b.x - m), idx, 0.0);
}

fn reduce_stats(tid: u32, v: vec4<f32>) -> vec4<f32> {
    red[tid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s >> 1u) {
        if (tid < s) {
            red[tid] = merge_stats(red[tid], red[tid + s]);
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

// Sums a, b over the workgroup into red[0], red[WG].
fn reduce_sums(tid: u32, a: vec4<f32>, b: vec4<f32>) {
    red[tid] = a;
    red[WG + tid] = b;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s >> 1u) {
        if (tid < s) {
            red[tid] = red[tid] + red[tid + s];
            red[WG + tid] = red[WG + tid] + red[WG + tid + s];
        }
        workgroupBarrier();
    }
}

// The largest key t in [lo0, hi0) whose weight W(t) = Σ_{l ≥ value(t)} w(l) reaches the
// target, given W(lo0) reaches it and W(hi0) does not. w = 1 (top-k: target k), or
// w = exp((l − mx) · inv_t) (top-p: target top_p · W(lo0), W(lo0) taken in the first pass).
// Each pass tests WAYS − 1 = 15 candidates (named accumulators: lavapipe spills private
// arrays indexed by a loop counter), reduced in two rounds through `red`. The first pass
// places them at mx − scale·FIRST_STEPS (scale: 1 logit for top-k, T for top-p), where
// thresholds of real logits lie, so later passes split a narrow key range and skip the
// many logits below it; then even steps in key space down to a single key.
fn search(tid: u32, base: u32, n: u32, lo0: u32, hi0: u32, mass: bool, target0: f32, mx: f32, inv_t: f32, scale: f32) -> u32 {
    if (tid == 0u) {
        wg_lo = lo0;
        wg_hi = hi0;
        wg_target = target0;
    }
    var lo = workgroupUniformLoad(&wg_lo);
    var hi = workgroupUniformLoad(&wg_hi);
    var first = true;
    loop {
        if (hi - lo <= 1u) {
            break;
        }
        // Candidates c_j = lo + ⌊(hi − lo)·j / WAYS⌋, j = 1..WAYS−1, exact in u32.
        let span = hi - lo;
        let q = span / WAYS;
        let rm = span % WAYS;
        var c: array<u32, 16>;
        for (var j = 1u; j < WAYS; j = j + 1u) {
            if (first) {
                c[j - 1u] = clamp(key_of(mx - scale * FIRST_STEPS[WAYS - 1u - j]), lo, hi - 1u);
            } else {
                c[j - 1u] = lo + q * j + (rm * j) / WAYS;
            }
        }
        c[15] = lo;
        let t0 = vec4<f32>(value_of(c[0]), value_of(c[1]), value_of(c[2]), value_of(c[3]));
        let t1 = vec4<f32>(value_of(c[4]), value_of(c[5]), value_of(c[6]), value_of(c[7]));
        let t2 = vec4<f32>(value_of(c[8]), value_of(c[9]), value_of(c[10]), value_of(c[11]));
        let t3 = vec4<f32>(value_of(c[12]), value_of(c[13]), value_of(c[14]), value_of(lo));
        var a0 = vec4<f32>(0.0);
        var a1 = vec4<f32>(0.0);
        var a2 = vec4<f32>(0.0);
        var a3 = vec4<f32>(0.0);
        for (var i = tid; i < n; i = i + WG) {
            let v = logits[base + i];
            // Below lo counts for no candidate.
            if (v >= t3.w) {
                var w = 1.0;
                if (mass) {
                    w = exp((v - mx) * inv_t);
                }
                let vv = vec4<f32>(v);
                a0 = a0 + select(vec4<f32>(0.0), vec4<f32>(w), vv >= t0);
                a1 = a1 + select(vec4<f32>(0.0), vec4<f32>(w), vv >= t1);
                a2 = a2 + select(vec4<f32>(0.0), vec4<f32>(w), vv >= t2);
                a3 = a3 + select(vec4<f32>(0.0), vec4<f32>(w), vv >= t3);
            }
        }
        reduce_sums(tid, a0, a1);
        var s0 = vec4<f32>(0.0);
        var s1 = vec4<f32>(0.0);
        if (tid == 0u) {
            s0 = red[0];
            s1 = red[WG];
        }
        workgroupBarrier();
        reduce_sums(tid, a2, a3);
        if (tid == 0u) {
            let s2 = red[0];
            let s3 = red[WG];
            if (mass && first) {
                wg_target = target0 * s3.w;
            }
            let tgt = wg_target;
            let w = array<f32, 15>(s0.x, s0.y, s0.z, s0.w, s1.x, s1.y, s1.z, s1.w, s2.x, s2.y, s2.z, s2.w, s3.x, s3.y, s3.z);
            var nlo = lo;
            var nhi = hi;
            // W is non-increasing in the key (sums of nested sets of non-negative terms).
            for (var j = 0u; j < WAYS - 1u; j = j + 1u) {
                if (w[j] >= tgt) {
                    nlo = c[j];
                } else {
                    nhi = c[j];
                    break;
                }
            }
            wg_lo = nlo;
            wg_hi = nhi;
        }
        lo = workgroupUniformLoad(&wg_lo);
        hi = workgroupUniformLoad(&wg_hi);
        first = false;
    }
    return lo;
}

// Row r's logits at or above the threshold of its top_n largest into top[r] (see the top
// of the file). Call in uniform control flow.
fn list_top(tid: u32, r: u32, base: u32, n: u32, top_n: u32, mx: f32, log_z: f32) {
    var lo = KEY_NEG_INF;
    if (top_n < n) {
        lo = search(tid, base, n, lo, key_of(mx) + 1u, false, f32(top_n), mx, 1.0, 1.0);
    }
    let thr = value_of(lo);
    if (tid == 0u) {
        atomicStore(&wg_top_count, 0u);
    }
    workgroupBarrier();
    for (var i = tid; i < n; i = i + WG) {
        let v = logits[base + i];
        if (v >= thr) {
            let slot = atomicAdd(&wg_top_count, 1u);
            if (slot < TOP_SLOTS) {
                top[(r * TOP_SLOTS + slot) * 2u] = i;
                top[(r * TOP_SLOTS + slot) * 2u + 1u] = bitcast<u32>(v - mx - log_z);
            }
        }
    }
    // The slots no logit took are marked empty (other addresses than the ones written).
    workgroupBarrier();
    let filled = atomicLoad(&wg_top_count);
    for (var j = filled + tid; j < TOP_SLOTS; j = j + WG) {
        top[(r * TOP_SLOTS + j) * 2u] = TOP_NONE;
    }
}

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let tid = lid.x;
    let r = wid.y;
    if (r >= p.m) {
        return;
    }
    let sp = rows[r];
    let n = p.n_vocab;
    let base = sp.logits_row * p.row_stride;

    // Max (first index on ties) and Σ exp(l − max), online, strided over the row.
    var st = vec4<f32>(0.0, 0.0, NONE, 0.0);
    if (tid < n) {
        st = vec4<f32>(logits[base + tid], 1.0, f32(tid), 0.0);
    }
    for (var i = tid + WG; i < n; i = i + WG) {
        let v = logits[base + i];
        if (v > st.x) {
            st = vec4<f32>(v, st.y * exp(st.x - v) + 1.0, f32(i), 0.0);
        } else if (v >= NEG_BIG) {
            st.y = st.y + exp(v - st.x);
        }
    }
    let stats = reduce_stats(tid, st);
    let mx = stats.x;
    let log_z = log(stats.y);
    if (sp.top_n > 0u) {
        list_top(tid, r, base, n, sp.top_n, mx, log_z);
    }
    if (sp.temperature <= 0.0) {
        if (tid == 0u) {
            out[2u * r] = u32(stats.z);
            out[2u * r + 1u] = bitcast<u32>(0.0 - log_z);
            next_tokens[r] = u32(stats.z);
        }
        return;
    }
    let inv_t = min(1.0 / sp.temperature, 1.0e30);

    // Kept: logits ≥ value_of(lo). Top-k, then top-p within it.
    var lo = KEY_NEG_INF;
    let top = key_of(mx);
    if (sp.top_k == 1u) {
        lo = top;
    } else if (sp.top_k > 1u && sp.top_k < n) {
        lo = search(tid, base, n, lo, top + 1u, false, f32(sp.top_k), mx, inv_t, 1.0);
    }
    if (sp.top_p < 1.0) {
        lo = search(tid, base, n, lo, top + 1u, true, sp.top_p, mx, inv_t, sp.temperature);
    }
    let thr = value_of(lo);

    // Draw: each invocation's contiguous chunk's kept mass, a scan over the chunks, then
    // the chunk's invocation walks it (summing in the same order) to the token.
    let chunk = (n + WG - 1u) / WG;
    let start = min(tid * chunk, n);
    let end = min(start + chunk, n);
    var s = 0.0;
    for (var i = start; i < end; i = i + 1u) {
        let v = logits[base + i];
        if (v >= thr) {
            s = s + exp((v - mx) * inv_t);
        }
    }
    red[tid] = vec4<f32>(s, 0.0, 0.0, 0.0);
    workgroupBarrier();
    if (tid == 0u) {
        var total = 0.0;
        for (var j = 0u; j < WG; j = j + 1u) {
            total = total + red[j].x;
        }
        let goal = draw(sp.seed_lo, sp.seed_hi, sp.step) * total;
        var acc = 0.0;
        var pick = WG;
        var off = 0.0;
        var last = 0u;
        for (var j = 0u; j < WG; j = j + 1u) {
            let sj = red[j].x;
            if (sj > 0.0) {
                last = j;
                if (pick == WG && goal < acc + sj) {
                    pick = j;
                    off = goal - acc;
                }
            }
            acc = acc + sj;
        }
        // u · total rounded up to total: the last chunk with mass, its last kept token.
        if (pick == WG) {
            pick = last;
            off = red[last].x;
        }
        wg_chunk = pick;
        wg_off = off;
    }
    workgroupBarrier();
    if (tid == wg_chunk) {
        let off = wg_off;
        var a = 0.0;
        var chosen = n;
        var last = start;
        for (var i = start; i < end; i = i + 1u) {
            let v = logits[base + i];
            if (v >= thr) {
                a = a + exp((v - mx) * inv_t);
                last = i;
                if (off < a) {
                    chosen = i;
                    break;
                }
            }
        }
        if (chosen == n) {
            chosen = last;
        }
        out[2u * r] = chosen;
        out[2u * r + 1u] = bitcast<u32>(logits[base + chosen] - mx - log_z);
        next_tokens[r] = chosen;
    }
}
