// Embedding gather from the int4 (entry `int4`) or int8 (entry `int8`) table (matmul_int4 layout, rows n0..n0+n of the vocab in
// this chunk): out[m][k] = scale · q + min of row tokens[m]. Tokens outside the chunk are
// left for the chunk that holds them. One invocation per (packed word, row).

struct Params {
    n: u32,      // vocab rows in this chunk
    k: u32,      // n_embd
    m: u32,      // tokens
    n0: u32,     // first vocab row of this chunk
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> qweight: array<u32>;
@group(0) @binding(2) var<storage, read> scales: array<u32>;
@group(0) @binding(3) var<storage, read> tokens: array<u32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(64)
fn int4(@builtin(global_invocation_id) gid: vec3<u32>) {
    let kw = gid.x;
    let m = gid.y;
    if (kw >= p.k / 8u || m >= p.m) {
        return;
    }
    let tok = tokens[m];
    if (tok < p.n0 || tok >= p.n0 + p.n) {
        return;
    }
    let n = tok - p.n0;
    let w = qweight[kw * p.n + n];
    let sm = unpack2x16float(scales[(kw / 4u) * p.n + n]);
    let o = m * p.k + kw * 8u;
    for (var b = 0u; b < 4u; b = b + 1u) {
        out[o + b] = sm.x * f32((w >> (8u * b)) & 0xFu) + sm.y;
        out[o + 4u + b] = sm.x * f32((w >> (8u * b + 4u)) & 0xFu) + sm.y;
    }
}

@compute @workgroup_size(64)
fn int8(@builtin(global_invocation_id) gid: vec3<u32>) {
    let kw = gid.x;
    let m = gid.y;
    if (kw >= p.k / 4u || m >= p.m) {
        return;
    }
    let tok = tokens[m];
    if (tok < p.n0 || tok >= p.n0 + p.n) {
        return;
    }
    let n = tok - p.n0;
    let w = qweight[kw * p.n + n];
    let s = unpack2x16float(scales[(kw / 8u) * p.n + n]).x;
    let o = m * p.k + kw * 4u;
    for (var b = 0u; b < 4u; b = b + 1u) {
        out[o + b] = s * f32((i32(w << (24u - 8u * b))) >> 24u);
    }
}
