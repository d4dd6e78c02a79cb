// RMSNorm: y = x / sqrt(mean(x²) + eps) · weight, one workgroup per row (rows row0.. of x
// land in rows 0.. of the output).
// `rmsnorm` writes f32; `rmsnorm_quant` writes the int8 blocks matmul_int4 reads
// (fusing the norm with the activation quantization saves a pass over x).

struct Params {
    k: u32,    // features per row
    m: u32,    // rows
    eps: f32,
    row0: u32, // first input row (the LM head normalizes only the rows it scores)
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> weight: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<storage, read_write> xq: array<u32>;
@group(0) @binding(5) var<storage, read_write> xs: array<vec4<f32>>;

const WG: u32 = 64u;
var<workgroup> partial: array<f32, 64>;

// 1/rms of row m; every invocation of the workgroup gets the same value.
fn inv_rms(m: u32, tid: u32) -> f32 {
    var ss = 0.0;
    for (var i = tid; i < p.k; i = i + WG) {
        let v = x[m * p.k + i];
        ss = ss + v * v;
    }
    partial[tid] = ss;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s >> 1u) {
        if (tid < s) {
            partial[tid] = partial[tid] + partial[tid + s];
        }
        workgroupBarrier();
    }
    let r = inverseSqrt(partial[0] / f32(p.k) + p.eps);
    workgroupBarrier();
    return r;
}

@compute @workgroup_size(64)
fn rmsnorm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let m = wid.y + p.row0;
    let r = inv_rms(m, lid.x);
    for (var i = lid.x; i < p.k; i = i + WG) {
        y[wid.y * p.k + i] = x[m * p.k + i] * r * weight[i];
    }
}

@compute @workgroup_size(64)
fn rmsnorm_quant(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let m = wid.y + p.row0;
    let o = wid.y;
    let r = inv_rms(m, lid.x);
    let groups = p.k / 32u;
    for (var g = lid.x; g < groups; g = g + WG) {
        var v: array<f32, 32>;
        for (var i = 0u; i < 32u; i = i + 1u) {
            let k = g * 32u + i;
            v[i] = x[m * p.k + k] * r * weight[k];
        }
        let blk = quantize_block(&v);
        for (var w = 0u; w < 8u; w = w + 1u) {
            xq[o * (p.k / 4u) + g * 8u + w] = blk.words[w];
        }
        xs[o * groups + g] = blk.stats;
    }
}
