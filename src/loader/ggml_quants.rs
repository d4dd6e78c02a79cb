//! ggml block formats: sizes, reference dequantizers, and the exact int4 mapping.
//!
//! The dequantizers follow ggml's reference `dequantize_row_*` (ggml/src/ggml-quants.c)
//! block by block. Q4_0, Q4_1 and Q4_K are additionally mapped onto the engine's
//! [`Q4Group`] (`w = scale * q + min`) without requantizing, so a GGUF int4 model runs on
//! exactly the weights llama.cpp would use.

use super::{Q4Group, Q8Group};
use half::{bf16, f16};

/// Elements per K-quant super-block.
pub const QK_K: usize = 256;

/// A ggml tensor element type, by its on-disk id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q4K,
    Q5K,
    Q6K,
    BF16,
    /// A type this loader cannot decode (kept so the file still opens and the error can
    /// name the tensor that uses it).
    Other(u32),
}

impl GgmlType {
    /// Map a ggml type id (`enum ggml_type`) to a type.
    pub fn from_id(id: u32) -> Self {
        match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            6 => Self::Q5_0,
            7 => Self::Q5_1,
            8 => Self::Q8_0,
            12 => Self::Q4K,
            13 => Self::Q5K,
            14 => Self::Q6K,
            30 => Self::BF16,
            other => Self::Other(other),
        }
    }

    /// `(elements per block, bytes per block)`, or `None` for an unsupported type.
    pub fn block_layout(self) -> Option<(usize, usize)> {
        Some(match self {
            Self::F32 => (1, 4),
            Self::F16 | Self::BF16 => (1, 2),
            Self::Q4_0 => (32, 18),
            Self::Q4_1 => (32, 20),
            Self::Q5_0 => (32, 22),
            Self::Q5_1 => (32, 24),
            Self::Q8_0 => (32, 34),
            Self::Q4K => (QK_K, 144),
            Self::Q5K => (QK_K, 176),
            Self::Q6K => (QK_K, 210),
            Self::Other(_) => return None,
        })
    }

    /// Whether the type maps exactly onto [`Q4Group`]s.
    pub fn is_q4(self) -> bool {
        matches!(self, Self::Q4_0 | Self::Q4_1 | Self::Q4K)
    }

    /// ggml's name for the type (`Q4_K`, `F32`, ...).
    pub fn name(self) -> String {
        match self {
            Self::F32 => "F32".into(),
            Self::F16 => "F16".into(),
            Self::BF16 => "BF16".into(),
            Self::Q4_0 => "Q4_0".into(),
            Self::Q4_1 => "Q4_1".into(),
            Self::Q5_0 => "Q5_0".into(),
            Self::Q5_1 => "Q5_1".into(),
            Self::Q8_0 => "Q8_0".into(),
            Self::Q4K => "Q4_K".into(),
            Self::Q5K => "Q5_K".into(),
            Self::Q6K => "Q6_K".into(),
            Self::Other(id) => format!("ggml type {id}"),
        }
    }
}

#[inline]
fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Q4_0: `d: f16, qs[16]`; low nibbles are weights 0..16, high nibbles 16..32.
pub fn dequant_q4_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for j in 0..16 {
        y[j] = ((b[2 + j] & 0xF) as i32 - 8) as f32 * d;
        y[j + 16] = ((b[2 + j] >> 4) as i32 - 8) as f32 * d;
    }
}

/// Q4_1: `d: f16, m: f16, qs[16]`.
pub fn dequant_q4_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    for j in 0..16 {
        y[j] = (b[4 + j] & 0xF) as f32 * d + m;
        y[j + 16] = (b[4 + j] >> 4) as f32 * d + m;
    }
}

/// Q5_0: `d: f16, qh: u32 (5th bits), qs[16]`, values offset by 16.
pub fn dequant_q5_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    for j in 0..16 {
        let h0 = (((qh >> j) << 4) & 0x10) as u8;
        let h1 = ((qh >> (j + 12)) & 0x10) as u8;
        y[j] = (((b[6 + j] & 0xF) | h0) as i32 - 16) as f32 * d;
        y[j + 16] = (((b[6 + j] >> 4) | h1) as i32 - 16) as f32 * d;
    }
}

/// Q5_1: `d: f16, m: f16, qh: u32, qs[16]`.
pub fn dequant_q5_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    for j in 0..16 {
        let h0 = (((qh >> j) << 4) & 0x10) as u8;
        let h1 = ((qh >> (j + 12)) & 0x10) as u8;
        y[j] = ((b[8 + j] & 0xF) | h0) as f32 * d + m;
        y[j + 16] = ((b[8 + j] >> 4) | h1) as f32 * d + m;
    }
}

/// Q8_0: `d: f16, qs: [i8; 32]`.
pub fn dequant_q8_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for j in 0..32 {
        y[j] = (b[2 + j] as i8) as f32 * d;
    }
}

/// ggml's `get_scale_min_k4`: 8 six-bit (scale, min) pairs packed into 12 bytes. Pairs
/// 0..4 are the low 6 bits of bytes 0..4 / 4..8; pairs 4..8 take their low 4 bits from
/// bytes 8..12 and their top 2 bits from the spare top bits of bytes 0..8.
#[inline]
pub fn get_scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Q4_K super-block as 8 [`Q4Group`]s: `d: f16, dmin: f16, scales[12], qs[128]`. Each
/// 32-byte chunk of `qs` holds 64 weights: low nibbles the first 32, high nibbles the next.
/// `scale = d*sc`, `min = -dmin*m`, so `scale*q + min` is bit-identical to ggml's
/// `d1*q - m1`.
pub fn q4_k_groups(b: &[u8]) -> [Q4Group; 8] {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let scales = &b[4..16];
    let qs = &b[16..144];
    let mut out = [Q4Group {
        scale: 0.0,
        min: 0.0,
        q: [0; 32],
    }; 8];
    for (c, chunk) in qs.chunks_exact(32).enumerate() {
        for half in 0..2 {
            let (sc, m) = get_scale_min_k4(2 * c + half, scales);
            let g = &mut out[2 * c + half];
            g.scale = d * sc as f32;
            g.min = -(dmin * m as f32);
            for (q, &byte) in g.q.iter_mut().zip(chunk) {
                *q = if half == 0 { byte & 0xF } else { byte >> 4 };
            }
        }
    }
    out
}

/// Q4_K reference dequantization (ggml's loop, kept separate from [`q4_k_groups`] so the
/// tests can check one against the other).
pub fn dequant_q4_k(b: &[u8], y: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let scales = &b[4..16];
    let mut q = &b[16..144];
    let mut is = 0;
    let mut yi = 0;
    for _ in (0..QK_K).step_by(64) {
        let (sc, m) = get_scale_min_k4(is, scales);
        let (d1, m1) = (d * sc as f32, dmin * m as f32);
        let (sc, m) = get_scale_min_k4(is + 1, scales);
        let (d2, m2) = (d * sc as f32, dmin * m as f32);
        for l in 0..32 {
            y[yi + l] = d1 * (q[l] & 0xF) as f32 - m1;
            y[yi + 32 + l] = d2 * (q[l] >> 4) as f32 - m2;
        }
        q = &q[32..];
        is += 2;
        yi += 64;
    }
}

/// Q5_K: `d, dmin: f16, scales[12], qh[32], qs[128]`; bit pair (2k, 2k+1) of `qh[l]` is the
/// 5th bit of the two 32-weight halves of chunk k.
pub fn dequant_q5_k(b: &[u8], y: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let scales = &b[4..16];
    let qh = &b[16..48];
    let mut ql = &b[48..176];
    let (mut is, mut yi) = (0, 0);
    let (mut u1, mut u2) = (1u8, 2u8);
    for _ in (0..QK_K).step_by(64) {
        let (sc, m) = get_scale_min_k4(is, scales);
        let (d1, m1) = (d * sc as f32, dmin * m as f32);
        let (sc, m) = get_scale_min_k4(is + 1, scales);
        let (d2, m2) = (d * sc as f32, dmin * m as f32);
        for l in 0..32 {
            let h1 = if qh[l] & u1 != 0 { 16 } else { 0 };
            let h2 = if qh[l] & u2 != 0 { 16 } else { 0 };
            y[yi + l] = d1 * ((ql[l] & 0xF) + h1) as f32 - m1;
            y[yi + 32 + l] = d2 * ((ql[l] >> 4) + h2) as f32 - m2;
        }
        ql = &ql[32..];
        is += 2;
        yi += 64;
        u1 <<= 2;
        u2 <<= 2;
    }
}

/// Q6_K: `ql[128], qh[64], scales: [i8; 16], d: f16`; 6-bit values offset by 32, one
/// scale per 16 weights.
pub fn dequant_q6_k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 208);
    for n in 0..2 {
        let ql = &b[64 * n..64 * n + 64];
        let qh = &b[128 + 32 * n..128 + 32 * n + 32];
        let sc = &b[192 + 8 * n..192 + 8 * n + 8];
        let y = &mut y[128 * n..128 * n + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            y[l] = d * (sc[is] as i8) as f32 * q1 as f32;
            y[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
            y[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
            y[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
        }
    }
}

/// Q4_0 block as one group: `w = d*(q-8) = d*q + (-8d)`, exact in f32.
pub fn q4_0_group(b: &[u8]) -> Q4Group {
    let d = f16_at(b, 0);
    Q4Group {
        scale: d,
        min: -8.0 * d,
        q: split_nibbles(&b[2..18]),
    }
}

/// Q4_1 block as one group: `w = d*q + m`.
pub fn q4_1_group(b: &[u8]) -> Q4Group {
    Q4Group {
        scale: f16_at(b, 0),
        min: f16_at(b, 2),
        q: split_nibbles(&b[4..20]),
    }
}

/// Q4_0/Q4_1 nibble order: low nibbles are weights 0..16, high nibbles 16..32.
fn split_nibbles(qs: &[u8]) -> [u8; 32] {
    let mut q = [0u8; 32];
    for j in 0..16 {
        q[j] = qs[j] & 0xF;
        q[j + 16] = qs[j] >> 4;
    }
    q
}

/// Dequantize `bytes` (whole blocks of `ty`) to f32. `bytes.len()` must be a multiple of
/// the block size (the GGUF parser checks this against the tensor's shape).
pub fn dequantize(ty: GgmlType, bytes: &[u8]) -> Option<Vec<f32>> {
    let (be, bs) = ty.block_layout()?;
    let n = bytes.len() / bs * be;
    match ty {
        GgmlType::F32 => {
            return Some(
                bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            )
        }
        GgmlType::F16 => {
            return Some(
                bytes
                    .chunks_exact(2)
                    .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
            )
        }
        GgmlType::BF16 => {
            return Some(
                bytes
                    .chunks_exact(2)
                    .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
            )
        }
        _ => {}
    }
    let f: fn(&[u8], &mut [f32]) = match ty {
        GgmlType::Q4_0 => dequant_q4_0,
        GgmlType::Q4_1 => dequant_q4_1,
        GgmlType::Q5_0 => dequant_q5_0,
        GgmlType::Q5_1 => dequant_q5_1,
        GgmlType::Q8_0 => dequant_q8_0,
        GgmlType::Q4K => dequant_q4_k,
        GgmlType::Q5K => dequant_q5_k,
        GgmlType::Q6K => dequant_q6_k,
        _ => return None,
    };
    let mut out = vec![0f32; n];
    for (blk, y) in bytes.chunks_exact(bs).zip(out.chunks_exact_mut(be)) {
        f(blk, y);
    }
    Some(out)
}

/// Take Q4_0 / Q4_1 / Q4_K blocks over as [`Q4Group`]s in weight order; `None` for any
/// other type.
pub fn to_q4_groups(ty: GgmlType, bytes: &[u8]) -> Option<Vec<Q4Group>> {
    Some(match ty {
        GgmlType::Q4_0 => bytes.chunks_exact(18).map(q4_0_group).collect(),
        GgmlType::Q4_1 => bytes.chunks_exact(20).map(q4_1_group).collect(),
        GgmlType::Q4K => bytes.chunks_exact(144).flat_map(q4_k_groups).collect(),
        _ => return None,
    })
}

/// Types stored at 5 to 8 bits: the engine keeps them at int8 rather than lose a bit or
/// more to int4 (see `to_q8_groups`).
pub fn is_int8_class(ty: GgmlType) -> bool {
    matches!(
        ty,
        GgmlType::Q8_0 | GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q5K | GgmlType::Q6K
    )
}

/// Q8_0 blocks as [`Q8Group`]s exactly (`d: f16, qs: [i8; 32]`); the other int8-class
/// types dequantized and re-quantized to symmetric int8 per 32 (error ≤ absmax/254 per
/// weight, a small fraction of their own 5-6-bit step).
pub fn to_q8_groups(ty: GgmlType, bytes: &[u8]) -> Option<Vec<Q8Group>> {
    if ty == GgmlType::Q8_0 {
        return Some(
            bytes
                .chunks_exact(34)
                .map(|b| Q8Group {
                    scale: f16::from_le_bytes([b[0], b[1]]).to_f32(),
                    q: std::array::from_fn(|i| b[2 + i] as i8),
                })
                .collect(),
        );
    }
    if !is_int8_class(ty) {
        return None;
    }
    Some(super::quantize_q8(&dequantize(ty, bytes)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(x: f32) -> [u8; 2] {
        f16::from_f32(x).to_le_bytes()
    }

    fn groups_f32(gs: &[Q4Group]) -> Vec<f32> {
        gs.iter()
            .flat_map(|g| g.q.iter().map(move |&q| g.scale * q as f32 + g.min))
            .collect()
    }

    #[test]
    fn q8_0_maps_exactly_and_q6_k_keeps_its_precision() {
        let mut b = h(0.5).to_vec();
        b.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let g = to_q8_groups(GgmlType::Q8_0, &b).unwrap();
        assert_eq!(g[0].scale, 0.5);
        assert_eq!(g[0].q[0], -16);
        assert_eq!(dequantize(GgmlType::Q8_0, &b).unwrap()[31], 7.5);
        // A Q5_0 block re-quantized to int8 stays within a quarter of its own step.
        let mut b5 = h(0.1).to_vec();
        b5.extend([0x12u8, 0x34, 0x56, 0x78]);
        b5.extend((0..16).map(|i| (i * 17) as u8));
        let want = dequantize(GgmlType::Q5_0, &b5).unwrap();
        let got: Vec<f32> = to_q8_groups(GgmlType::Q5_0, &b5)
            .unwrap()
            .iter()
            .flat_map(|g| g.q.map(|q| q as f32 * g.scale))
            .collect();
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() <= 0.025, "{a} vs {b}");
        }
    }

    #[test]
    fn q4_0_known_values() {
        let mut b = vec![];
        b.extend(h(0.5));
        // byte j: low nibble j (weight j), high nibble 15-j (weight j+16)
        b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let y = dequantize(GgmlType::Q4_0, &b).unwrap();
        assert_eq!(y[0], -4.0);
        assert_eq!(y[3], (3.0 - 8.0) * 0.5);
        assert_eq!(y[16], 3.5);
        assert_eq!(y[31], -4.0); // byte 15: high nibble 0
        assert_eq!(y[15], 3.5); // byte 15: low nibble 15
        assert_eq!(groups_f32(&to_q4_groups(GgmlType::Q4_0, &b).unwrap()), y);
    }

    #[test]
    fn q4_1_known_values() {
        let mut b = vec![];
        b.extend(h(0.25));
        b.extend(h(-1.0));
        b.extend((0..16u8).map(|j| j | (j << 4)));
        let y = dequantize(GgmlType::Q4_1, &b).unwrap();
        assert_eq!(y[5], 5.0 * 0.25 - 1.0);
        assert_eq!(y[21], 5.0 * 0.25 - 1.0);
        assert_eq!(groups_f32(&to_q4_groups(GgmlType::Q4_1, &b).unwrap()), y);
    }

    #[test]
    fn q5_0_and_q5_1_high_bits() {
        let mut b = vec![];
        b.extend(h(1.0));
        // 5th bit set for weight 1 (bit 1) and weight 17 (bit 17)
        b.extend(((1u32 << 1) | (1u32 << 17)).to_le_bytes());
        b.extend([0x21u8; 16]); // low nibble 1, high nibble 2
        let y = dequantize(GgmlType::Q5_0, &b).unwrap();
        assert_eq!(y[0], 1.0 - 16.0);
        assert_eq!(y[1], 17.0 - 16.0);
        assert_eq!(y[16], 2.0 - 16.0);
        assert_eq!(y[17], 18.0 - 16.0);
        let mut b1 = vec![];
        b1.extend(h(2.0));
        b1.extend(h(0.5));
        b1.extend(b[2..].iter().copied());
        let y1 = dequantize(GgmlType::Q5_1, &b1).unwrap();
        assert_eq!(y1[1], 17.0 * 2.0 + 0.5);
        assert_eq!(y1[16], 2.0 * 2.0 + 0.5);
    }

    #[test]
    fn q8_0_signed() {
        let mut b = vec![];
        b.extend(h(0.5));
        b.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let y = dequantize(GgmlType::Q8_0, &b).unwrap();
        assert_eq!(y[0], -8.0);
        assert_eq!(y[31], 7.5);
    }

    /// A Q4_K block with distinct scales/mins in both the simple (j<4) and the split
    /// (j>=4) 6-bit packings.
    fn q4_k_block() -> (Vec<u8>, [u8; 8], [u8; 8]) {
        let sc: [u8; 8] = [1, 7, 33, 63, 2, 45, 17, 60];
        let mn: [u8; 8] = [0, 5, 62, 9, 48, 3, 31, 16];
        let mut s = [0u8; 12];
        for j in 0..4 {
            s[j] = sc[j] | ((sc[j + 4] >> 4) << 6);
            s[j + 4] = mn[j] | ((mn[j + 4] >> 4) << 6);
            s[j + 8] = (sc[j + 4] & 0xF) | ((mn[j + 4] & 0xF) << 4);
        }
        let mut b = vec![];
        b.extend(h(0.125));
        b.extend(h(0.0625));
        b.extend(s);
        b.extend((0..128u32).map(|i| ((i * 7 + 3) % 256) as u8));
        (b, sc, mn)
    }

    #[test]
    fn q4_k_scale_min_unpacking() {
        let (b, sc, mn) = q4_k_block();
        for j in 0..8 {
            assert_eq!(get_scale_min_k4(j, &b[4..16]), (sc[j], mn[j]), "pair {j}");
        }
        let y = dequantize(GgmlType::Q4K, &b).unwrap();
        // weight 64+32+5: chunk 1, high nibbles, sub-block 3
        let qb = b[16 + 32 + 5];
        assert_eq!(
            y[101],
            0.125 * sc[3] as f32 * (qb >> 4) as f32 - 0.0625 * mn[3] as f32
        );
        assert_eq!(
            y[64 + 5],
            0.125 * sc[2] as f32 * (qb & 0xF) as f32 - 0.0625 * mn[2] as f32
        );
    }

    #[test]
    fn q4_k_groups_equal_reference_dequant() {
        let (b, _, _) = q4_k_block();
        let y = dequantize(GgmlType::Q4K, &b).unwrap();
        let g = to_q4_groups(GgmlType::Q4K, &b).unwrap();
        assert_eq!(g.len(), 8);
        assert_eq!(groups_f32(&g), y, "bit-identical");
    }

    #[test]
    fn q5_k_and_q6_k_known_values() {
        // Q5_K: all scales 1, mins 0 (j<4 packing only used by pairs 0..4; zero the rest)
        let mut b = vec![];
        b.extend(h(1.0));
        b.extend(h(0.0));
        b.extend([1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1]);
        let mut qh = [0u8; 32];
        qh[2] = 0b10; // 5th bit of weight 32+2 (chunk 0 high half)
        b.extend(qh);
        b.extend([0x53u8; 128]);
        let y = dequantize(GgmlType::Q5K, &b).unwrap();
        assert_eq!(y[0], 3.0);
        assert_eq!(y[32], 5.0);
        assert_eq!(y[34], 21.0);
        // Q6_K: scale[k] = k+1, d = 0.5, all ql = 0x21, qh = 0 -> values 1-32 / 2-32
        let mut b = vec![0x21u8; 128];
        b.extend([0u8; 64]);
        b.extend((1..=16u8).map(|s| s as i8 as u8));
        b.extend(h(0.5));
        let y = dequantize(GgmlType::Q6K, &b).unwrap();
        assert_eq!(y[0], 0.5 * 1.0 * -31.0);
        assert_eq!(y[16], 0.5 * 2.0 * -31.0);
        assert_eq!(y[64], 0.5 * 5.0 * -30.0);
        assert_eq!(y[128 + 96 + 17], 0.5 * 16.0 * -30.0);
    }
}
