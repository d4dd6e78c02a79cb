// Rotary position embedding (HF rotate-half convention: dim i pairs with i + head_dim/2,
// inv_freq_i = theta^(-2i/head_dim)) applied to Q in place and to K, and the new K and V
// stored into this layer's f16 KV cache at slot positions[m] of row m.
//
// qkv:     [m][n_head·head_dim + 2·n_kv_head·head_dim] f32 (Q | K | V, from one matmul)
// k_cache, v_cache: [slot][n_kv_head·head_dim / 2] u32, two f16 per word
// Work items per row: (n_head + n_kv_head)·head_dim/4 rotations (each rotates two adjacent
// pairs so K lands as whole packed words), then n_kv_head·head_dim/2 V words.

struct Params {
    n_head: u32,
    n_kv_head: u32,
    head_dim: u32,
    m: u32,
    theta: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> qkv: array<f32>;
@group(0) @binding(2) var<storage, read> positions: array<u32>;
@group(0) @binding(3) var<storage, read> slots: array<u32>;
@group(0) @binding(4) var<storage, read_write> k_cache: array<u32>;
@group(0) @binding(5) var<storage, read_write> v_cache: array<u32>;

fn rotate(x0: f32, x1: f32, i: u32, pos: u32) -> vec2<f32> {
    let inv_freq = 1.0 / pow(p.theta, f32(2u * i) / f32(p.head_dim));
    let a = f32(pos) * inv_freq;
    let c = cos(a);
    let s = sin(a);
    return vec2<f32>(x0 * c - x1 * s, x1 * c + x0 * s);
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let m = gid.y;
    let item = gid.x;
    let hd = p.head_dim;
    let half = hd / 2u;
    let q_dim = p.n_head * hd;
    let kv_dim = p.n_kv_head * hd;
    let row = m * (q_dim + 2u * kv_dim);
    let n_rot = (p.n_head + p.n_kv_head) * (hd / 4u);
    if (m >= p.m || item >= n_rot + kv_dim / 2u) {
        return;
    }
    let pos = positions[m];
    let slot = slots[m];
    if (item < n_rot) {
        let head = item / (hd / 4u);
        let t = item % (hd / 4u);
        let i0 = 2u * t;
        let i1 = i0 + 1u;
        let base = row + head * hd; // K heads follow Q heads, so one index covers both
        let a = rotate(qkv[base + i0], qkv[base + i0 + half], i0, pos);
        let b = rotate(qkv[base + i1], qkv[base + i1 + half], i1, pos);
        if (head < p.n_head) {
            qkv[base + i0] = a.x;
            qkv[base + i0 + half] = a.y;
            qkv[base + i1] = b.x;
            qkv[base + i1 + half] = b.y;
        } else {
            let kvh = head - p.n_head;
            let w = slot * (kv_dim / 2u) + kvh * (hd / 2u);
            k_cache[w + t] = pack2x16float(vec2<f32>(a.x, b.x));
            k_cache[w + hd / 4u + t] = pack2x16float(vec2<f32>(a.y, b.y));
        }
    } else {
        let j = item - n_rot;
        let v = row + q_dim + kv_dim + 2u * j;
        v_cache[slot * (kv_dim / 2u) + j] = pack2x16float(vec2<f32>(qkv[v], qkv[v + 1u]));
    }
}
