// Activation quantization for matmul_int4: x [m][k] f32 -> xq [m][k/4] i8x4 (per group of
// 32: q = round(x / scale), scale = absmax / 127) and xs [m][k/32] (see QuantBlock).
// One invocation per (group, row).

struct Params {
    k: u32,         // features per row (multiple of 32)
    m: u32,         // rows
    in_stride: u32, // floats between input rows
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> xq: array<u32>;
@group(0) @binding(3) var<storage, read_write> xs: array<vec4<f32>>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let g = gid.x;
    let m = gid.y;
    let groups = p.k / 32u;
    if (g >= groups || m >= p.m) {
        return;
    }
    let base = m * p.in_stride + g * 32u;
    var v: array<f32, 32>;
    for (var i = 0u; i < 32u; i = i + 1u) {
        v[i] = x[base + i];
    }
    let blk = quantize_block(&v);
    let out = m * (p.k / 4u) + g * 8u;
    for (var w = 0u; w < 8u; w = w + 1u) {
        xq[out + w] = blk.words[w];
    }
    xs[m * groups + g] = blk.stats;
}
