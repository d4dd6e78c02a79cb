// Plain read kernel, the yardstick for matmul_int4's GB/s: each invocation sums a strided
// run of words (consecutive invocations read consecutive words) and writes one value.

struct Params {
    words: u32,   // words in src
    threads: u32, // invocations launched
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<u32>;
@group(0) @binding(2) var<storage, read_write> dst: array<u32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let t = gid.x;
    if (t >= p.threads) {
        return;
    }
    var acc = 0u;
    for (var i = t; i < p.words; i = i + p.threads) {
        acc = acc ^ src[i];
    }
    dst[t] = acc;
}
