// ---- prelude: helpers shared by every kernel (prepended by the Rust side) ----
//
// Portable on purpose: no f16 types and no subgroup operations are needed, so the same
// kernels run on Vulkan, Metal, DX12 and the GL backend. f16 values travel packed two per
// u32 (pack2x16float / unpack2x16float are core WGSL).

// Pack four i32 in -128..127 into one u32, byte i = v[i] (the layout dot4I8Packed reads).
fn pack_i8x4(v: vec4<i32>) -> u32 {
    return (u32(v.x) & 0xFFu) | ((u32(v.y) & 0xFFu) << 8u) | ((u32(v.z) & 0xFFu) << 16u) | ((u32(v.w) & 0xFFu) << 24u);
}

// Activation block quantization: 32 values -> 8 packed words, one f32 scale.
fn quant_scale(absmax: f32) -> f32 {
    return select(absmax / 127.0, 1.0, absmax == 0.0);
}

fn silu(x: f32) -> f32 {
    return x / (1.0 + exp(-x));
}
