// ---- prelude: helpers shared by every kernel (prepended by the Rust side) ----
//
// Portable on purpose: no f16 types and no subgroup operations are needed, so the same
// kernels run on Vulkan, Metal, DX12 and the GL backend. f16 values travel packed two per
// u32 (pack2x16float / unpack2x16float are core WGSL).

// Pack four i32 in -128..127 into one u32, byte i = v[i] (the layout dot4I8Packed reads).
fn pack_i8x4(v: vec4<i32>) -> u32 {
    return (u32(v.x) & 0xFFu) | ((u32(v.y) & 0xFFu) << 8u) | ((u32(v.z) & 0xFFu) << 16u) | ((u32(v.w) & 0xFFu) << 24u);
}

// One block of 32 activations as matmul_int4 reads them: int8 values packed four per
// word, and stats = (scale, Σx, Σx − Σx̂, 0) where x̂ = scale·q is what the int8 values
// stand for. The third term lets the int4 kernel multiply by centred weights (q − 8),
// which cuts the activation-rounding error about 2-3× at the cost of one FMA.
struct QuantBlock {
    words: array<u32, 8>,
    stats: vec4<f32>,
}

fn quantize_block(v: ptr<function, array<f32, 32>>) -> QuantBlock {
    var absmax = 0.0;
    var sum = 0.0;
    for (var i = 0u; i < 32u; i = i + 1u) {
        absmax = max(absmax, abs((*v)[i]));
        sum = sum + (*v)[i];
    }
    let scale = select(absmax / 127.0, 1.0, absmax == 0.0);
    var b: QuantBlock;
    var qsum = 0;
    for (var w = 0u; w < 8u; w = w + 1u) {
        let q = vec4<i32>(round(vec4<f32>((*v)[4u * w], (*v)[4u * w + 1u], (*v)[4u * w + 2u], (*v)[4u * w + 3u]) / scale));
        qsum = qsum + q.x + q.y + q.z + q.w;
        b.words[w] = pack_i8x4(q);
    }
    b.stats = vec4<f32>(scale, sum, sum - scale * f32(qsum), 0.0);
    return b;
}

fn silu(x: f32) -> f32 {
    return x / (1.0 + exp(-x));
}
