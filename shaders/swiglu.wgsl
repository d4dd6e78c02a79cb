// SwiGLU fused with activation quantization: h = silu(gate) · up, where gate_up [m][2·n_ff]
// holds gate in columns 0..n_ff and up in n_ff..2·n_ff (one matmul made both).
// `main` writes h as int8 blocks for the down projection's int8 path; `f32_out` writes h
// as f32 rows [m][n_ff] for the prefill GEMM. One invocation per (group, row).

struct Params {
    n_ff: u32,
    m: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> gate_up: array<f32>;
@group(0) @binding(2) var<storage, read_write> xq: array<u32>;
@group(0) @binding(3) var<storage, read_write> xs: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> h: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let g = gid.x;
    let m = gid.y;
    let groups = p.n_ff / 32u;
    if (g >= groups || m >= p.m) {
        return;
    }
    let base = m * 2u * p.n_ff + g * 32u;
    var v: array<f32, 32>;
    for (var i = 0u; i < 32u; i = i + 1u) {
        v[i] = silu(gate_up[base + i]) * gate_up[base + p.n_ff + i];
    }
    let blk = quantize_block(&v);
    for (var w = 0u; w < 8u; w = w + 1u) {
        xq[m * (p.n_ff / 4u) + g * 8u + w] = blk.words[w];
    }
    xs[m * groups + g] = blk.stats;
}

@compute @workgroup_size(64)
fn f32_out(@builtin(global_invocation_id) gid: vec3<u32>) {
    let g = gid.x;
    let m = gid.y;
    if (g >= p.n_ff / 32u || m >= p.m) {
        return;
    }
    let base = m * 2u * p.n_ff + g * 32u;
    for (var i = 0u; i < 32u; i = i + 1u) {
        h[m * p.n_ff + g * 32u + i] = silu(gate_up[base + i]) * gate_up[base + p.n_ff + i];
    }
}
