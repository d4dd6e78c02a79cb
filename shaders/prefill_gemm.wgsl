// Prefill GEMM: out[m, n] (+)= Σ_k W[n, k] · x[m, k] (+ bias[n]) for steps of many rows,
// with f32 activations x [m][k] (no int8 rounding, no dot4I8Packed, which lavapipe
// emulates). Entries `gemm_int4` / `gemm_int8` read the weights in matmul_int4.wgsl's
// word-major layout (int4: qweight [k/8][n], int8: [k/4][n]; scales [k/32][n]).
//
// Each lane owns four adjacent columns (a "quad": n = 4q .. 4q+3), so one vec4<u32> load
// brings the same k-word of all four, and the arithmetic is vec4 across the quad with each
// activation broadcast (no horizontal sums). A register tile is COLS quads (quad q = tile
// base + c·64 + lane: lanes read consecutive 16-byte words) × ROWS rows, the same rows for
// the whole workgroup. Each weight is dequantized once per tile and reused for ROWS rows;
// each activation for 4·COLS columns.
// Why so on lavapipe (Mesa 22.3; perf + gdb on its JIT code, `bench --prefill-matmul 128`
// on Qwen2.5's gate|up): every storage load, even at a workgroup-uniform address, is a
// loop over the 8 lanes with a bounds check per component. One vec4 load runs that loop
// once for four words (1.1x over scalar loads of four columns spaced 64 apart), and
// replacing the activation loads by constants cut the time from 80 to 22.5 ms: they were
// the cost. So with subgroups (variant SUBGROUPS) the eight lanes of a subgroup each load
// one vec4 of a row's 32-k group and `subgroupBroadcast` hands it to the others (a register
// shuffle there): one load loop per row and group instead of eight; 74 -> 42 ms with the
// best tile of each. Without subgroups (the GL backend) every lane loads all eight.
// Needs n a multiple of 4 (every chunk of the models this engine loads; the launcher
// checks). No k split and no LoRA: prefill has row tiles enough to fill a device, and
// steps with adapters take the int8 path (LoRA's `shrink` reads its int8 blocks).

struct Params {
    n: u32,          // output features of this matrix chunk (a multiple of 4)
    k: u32,          // input features (a multiple of 32)
    m: u32,          // activation rows
    flags: u32,      // bit 0: add bias, bit 1: accumulate into out (residual)
    out_stride: u32, // floats between output rows
    out_offset: u32, // first output column of this chunk
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> qweight: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> scales: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> bias: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

// Four activations of row `row` from k = kk (a multiple of 4).
fn x4(row: u32, kk: u32) -> vec4<f32> {
    return x[(row * p.k + kk) / 4u];
}

// A row's 32-k group of activations (k0 = 32g), eight vec4s. With subgroups each of eight
// lanes loads one and `subgroupBroadcast` hands it to the others (see the top); call in
// uniform control flow.
struct Group {
    a0: vec4<f32>,
    a1: vec4<f32>,
    a2: vec4<f32>,
    a3: vec4<f32>,
    a4: vec4<f32>,
    a5: vec4<f32>,
    a6: vec4<f32>,
    a7: vec4<f32>,
}

//#if SUBGROUPS
fn row_group(row: u32, k0: u32, lane: u32) -> Group {
    let mine = x4(row, k0 + 4u * (lane % 8u));
    return Group(subgroupBroadcast(mine, 0u), subgroupBroadcast(mine, 1u), subgroupBroadcast(mine, 2u), subgroupBroadcast(mine, 3u), subgroupBroadcast(mine, 4u), subgroupBroadcast(mine, 5u), subgroupBroadcast(mine, 6u), subgroupBroadcast(mine, 7u));
}
//#else
fn row_group(row: u32, k0: u32) -> Group {
    return Group(x4(row, k0), x4(row, k0 + 4u), x4(row, k0 + 8u), x4(row, k0 + 12u), x4(row, k0 + 16u), x4(row, k0 + 20u), x4(row, k0 + 24u), x4(row, k0 + 28u));
}
//#endif

// Scales (low halves) and mins (high halves) of a quad's pack2x16float words.
fn scale4(w: vec4<u32>) -> vec4<f32> {
    return vec4<f32>(unpack2x16float(w.x).x, unpack2x16float(w.y).x, unpack2x16float(w.z).x, unpack2x16float(w.w).x);
}
fn min4(w: vec4<u32>) -> vec4<f32> {
    return vec4<f32>(unpack2x16float(w.x).y, unpack2x16float(w.y).y, unpack2x16float(w.z).y, unpack2x16float(w.w).y);
}

// Nibble field `shift` of a quad's words as floats.
fn nib(w: vec4<u32>, shift: u32) -> vec4<f32> {
    return vec4<f32>((w >> vec4<u32>(shift)) & vec4<u32>(0xFu));
}

// d + Σ over one int4 word's eight k of q·x: byte b holds k = 8j + b in its low nibble
// (activations `lo`) and k = 8j + 4 + b in its high nibble (`hi`). A chain of fused
// multiply-adds (lavapipe does not contract separate multiplies and adds); the nibbles are
// the same for every row, and the shader compiler computes them once.
fn word_int4(w: vec4<u32>, lo: vec4<f32>, hi: vec4<f32>, d: vec4<f32>) -> vec4<f32> {
    var s = fma(nib(w, 0u), vec4<f32>(lo.x), d);
    s = fma(nib(w, 8u), vec4<f32>(lo.y), s);
    s = fma(nib(w, 16u), vec4<f32>(lo.z), s);
    s = fma(nib(w, 24u), vec4<f32>(lo.w), s);
    s = fma(nib(w, 4u), vec4<f32>(hi.x), s);
    s = fma(nib(w, 12u), vec4<f32>(hi.y), s);
    s = fma(nib(w, 20u), vec4<f32>(hi.z), s);
    return fma(nib(w, 28u), vec4<f32>(hi.w), s);
}

// Signed byte `b` of a quad's words as floats.
fn signed_byte(w: vec4<u32>, b: u32) -> vec4<f32> {
    return vec4<f32>(vec4<i32>(w << vec4<u32>(24u - 8u * b)) >> vec4<u32>(24u));
}

// d + Σ over one int8 word's four k (byte e holds k = 4j + e) of q·x.
fn word_int8(w: vec4<u32>, a: vec4<f32>, d: vec4<f32>) -> vec4<f32> {
    let s = fma(signed_byte(w, 0u), vec4<f32>(a.x), d);
    let t = fma(signed_byte(w, 1u), vec4<f32>(a.y), s);
    let u = fma(signed_byte(w, 2u), vec4<f32>(a.z), t);
    return fma(signed_byte(w, 3u), vec4<f32>(a.w), u);
}

// A quad's result for one row: + bias, + old value when accumulating (the residual).
fn store(row: u32, n: u32, acc: vec4<f32>) {
    if (row >= p.m || n >= p.n) {
        return;
    }
    var v = acc;
    if ((p.flags & 1u) != 0u) {
        let b = p.out_offset + n;
        v = v + vec4<f32>(bias[b], bias[b + 1u], bias[b + 2u], bias[b + 3u]);
    }
    let o = row * p.out_stride + p.out_offset + n;
    if ((p.flags & 2u) != 0u) {
        v = v + vec4<f32>(out[o], out[o + 1u], out[o + 2u], out[o + 3u]);
    }
    out[o] = v.x;
    out[o + 1u] = v.y;
    out[o + 2u] = v.z;
    out[o + 3u] = v.w;
}

// Per 32-k group, Σ_k (s·q_k + m)·x_k = s·Σ_k q_k·x_k + m·Σ_k x_k: the raw nibbles meet the
// activations in one fma chain, and the accumulator (whose every store lavapipe blends
// with the execution mask) is updated once per group.
@compute @workgroup_size(64)
//#if SUBGROUPS
fn gemm_int4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32) {
//#else
fn gemm_int4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
//#endif
    // Quads past the end compute on the last quad (no branches in the loop) and store
    // nothing. Rows past the end repeat the last row.
    let quads = p.n / 4u;
    let q{c} = wid.x * 64u * COLS + {c}u * 64u + lid.x;
    let qc{c} = min(q{c}, quads - 1u);
    let m0 = wid.y * ROWS;
    let row{r} = min(m0 + {r}u, p.m - 1u);
    var acc{r}_{c} = vec4<f32>(0.0);
    for (var g = 0u; g < p.k / 32u; g = g + 1u) {
        let sm{c} = scales[g * quads + qc{c}];
        let w0{c} = qweight[(g * 4u) * quads + qc{c}];
        let w1{c} = qweight[(g * 4u + 1u) * quads + qc{c}];
        let w2{c} = qweight[(g * 4u + 2u) * quads + qc{c}];
        let w3{c} = qweight[(g * 4u + 3u) * quads + qc{c}];
        let k0 = g * 32u;
//#if SUBGROUPS
        let x{r} = row_group(row{r}, k0, lane);
//#else
        let x{r} = row_group(row{r}, k0);
//#endif
        let sx{r} = dot((x{r}.a0 + x{r}.a1) + (x{r}.a2 + x{r}.a3) + (x{r}.a4 + x{r}.a5) + (x{r}.a6 + x{r}.a7), vec4<f32>(1.0));
        let d{r}_{c} = word_int4(w3{c}, x{r}.a6, x{r}.a7, word_int4(w2{c}, x{r}.a4, x{r}.a5, word_int4(w1{c}, x{r}.a2, x{r}.a3, word_int4(w0{c}, x{r}.a0, x{r}.a1, vec4<f32>(0.0)))));
        acc{r}_{c} = fma(scale4(sm{c}), d{r}_{c}, fma(min4(sm{c}), vec4<f32>(sx{r}), acc{r}_{c}));
    }
    store(m0 + {r}u, 4u * q{c}, acc{r}_{c});
}

// int8: Σ_k s·q_k·x_k = s·Σ_k q_k·x_k, one accumulator update per group as above.
@compute @workgroup_size(64)
//#if SUBGROUPS
fn gemm_int8(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32) {
//#else
fn gemm_int8(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
//#endif
    let quads = p.n / 4u;
    let q{c} = wid.x * 64u * COLS + {c}u * 64u + lid.x;
    let qc{c} = min(q{c}, quads - 1u);
    let m0 = wid.y * ROWS;
    let row{r} = min(m0 + {r}u, p.m - 1u);
    var acc{r}_{c} = vec4<f32>(0.0);
    for (var g = 0u; g < p.k / 32u; g = g + 1u) {
        let s{c} = scale4(scales[g * quads + qc{c}]);
        let w0{c} = qweight[(g * 8u) * quads + qc{c}];
        let w1{c} = qweight[(g * 8u + 1u) * quads + qc{c}];
        let w2{c} = qweight[(g * 8u + 2u) * quads + qc{c}];
        let w3{c} = qweight[(g * 8u + 3u) * quads + qc{c}];
        let w4{c} = qweight[(g * 8u + 4u) * quads + qc{c}];
        let w5{c} = qweight[(g * 8u + 5u) * quads + qc{c}];
        let w6{c} = qweight[(g * 8u + 6u) * quads + qc{c}];
        let w7{c} = qweight[(g * 8u + 7u) * quads + qc{c}];
        let k0 = g * 32u;
//#if SUBGROUPS
        let x{r} = row_group(row{r}, k0, lane);
//#else
        let x{r} = row_group(row{r}, k0);
//#endif
        let d{r}_{c} = word_int8(w7{c}, x{r}.a7, word_int8(w6{c}, x{r}.a6, word_int8(w5{c}, x{r}.a5, word_int8(w4{c}, x{r}.a4, word_int8(w3{c}, x{r}.a3, word_int8(w2{c}, x{r}.a2, word_int8(w1{c}, x{r}.a1, word_int8(w0{c}, x{r}.a0, vec4<f32>(0.0)))))))));
        acc{r}_{c} = fma(s{c}, d{r}_{c}, acc{r}_{c});
    }
    store(m0 + {r}u, 4u * q{c}, acc{r}_{c});
}
