enable f16;
enable wgpu_cooperative_matrix;

// Prefill GEMM on cooperative matrices (tensor cores: Vulkan VK_KHR_cooperative_matrix,
// Metal simdgroup matrices): out[m, n] (+)= Σ_k W[n, k] · x[m, k] (+ bias[n]) with f32
// activation rows x [m][k], the weights in matmul_int4.wgsl's word-major layout (int4:
// qweight [k/8][n], int8: [k/4][n]; scales [k/32][n]), the same contract as
// prefill_gemm.wgsl, which stays the path where a device has no cooperative matrices.
//
// A workgroup is four subgroups of SG lanes in a 2×2 grid and owns a BM × BN block of the
// output; each subgroup owns ROWS × COLS tiles of TILE × TILE (f32 accumulators) of it.
// Per 32-k quantization group the workgroup stages the block's activations (f32 → f16)
// and its weights, dequantized once (int4: s·q + m, int8: s·q), in workgroup memory;
// every subgroup then multiplies its row tiles by its column tiles, TILE k at a time. So
// each weight is dequantized once per BM rows and each activation converted once per BN
// columns, and the multiply-adds run on the matrix units in f16 with f32 sums.
// Accumulators leave through a per-subgroup TILE × TILE staging tile, so the epilogue
// (bias, residual, edges of m and n) is plain per-element code.
// SG must be the device's one subgroup size (the launcher checks min = max), so that the
// workgroup is exactly four subgroups. No LoRA, as in prefill_gemm.wgsl.

// The same uniform as prefill_gemm.wgsl's (one Rust struct, GemmParams, fills both).
struct Params {
    n: u32,          // output features of this matrix chunk
    k: u32,          // input features (a multiple of 32)
    m: u32,          // activation rows
    flags: u32,      // bit 0: add bias, bit 1: accumulate into out (residual)
    out_stride: u32, // floats between output rows
    out_offset: u32, // first output column of this chunk
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> qweight: array<u32>;
@group(0) @binding(2) var<storage, read> scales: array<u32>;
@group(0) @binding(3) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> bias: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

//#if TILE16
alias TileA = coop_mat16x16<f16, A>;
alias TileB = coop_mat16x16<f16, B>;
alias TileC = coop_mat16x16<f32, C>;
//#else
alias TileA = coop_mat8x8<f16, A>;
alias TileB = coop_mat8x8<f16, B>;
alias TileC = coop_mat8x8<f32, C>;
//#endif

const WG: u32 = 4u * SG;
const BM: u32 = 2u * ROWS * TILE;
const BN: u32 = 2u * COLS * TILE;

var<workgroup> xa: array<f16, BM * 32u>;       // the block's activations, [row][k]
var<workgroup> wb: array<f16, 32u * BN>;       // its dequantized weights, [k][column]
var<workgroup> staged: array<f32, 4u * TILE * TILE>; // one accumulator tile per subgroup

// Stage rows m0.. of 32-k group g as f16 (rows past the end repeat the last row: their
// results are never stored).
fn stage_activations(m0: u32, g: u32, lid: u32) {
    for (var i = lid; i < BM * 8u; i = i + WG) {
        let row = min(m0 + i / 8u, p.m - 1u);
        let v = vec4<f16>(x[(row * p.k) / 4u + g * 8u + i % 8u]);
        let at = (i / 8u) * 32u + (i % 8u) * 4u;
        xa[at] = v.x;
        xa[at + 1u] = v.y;
        xa[at + 2u] = v.z;
        xa[at + 3u] = v.w;
    }
}

// Stage group g of columns n0.. dequantized (columns past the end repeat the last one).
// int4 word j of a column holds k = 8j + b in byte b's low nibble, 8j + 4 + b in its high.
fn stage_int4(n0: u32, g: u32, lid: u32) {
    for (var i = lid; i < 4u * BN; i = i + WG) {
        let j = i / BN;
        let c = i % BN;
        let col = min(n0 + c, p.n - 1u);
        let w = qweight[(g * 4u + j) * p.n + col];
        let sm = unpack2x16float(scales[g * p.n + col]);
        for (var b = 0u; b < 4u; b = b + 1u) {
            let lo = f32((w >> (8u * b)) & 0xFu);
            let hi = f32((w >> (8u * b + 4u)) & 0xFu);
            wb[(8u * j + b) * BN + c] = f16(fma(sm.x, lo, sm.y));
            wb[(8u * j + 4u + b) * BN + c] = f16(fma(sm.x, hi, sm.y));
        }
    }
}

// int8 word j of a column holds k = 4j + e in (signed) byte e.
fn stage_int8(n0: u32, g: u32, lid: u32) {
    for (var i = lid; i < 8u * BN; i = i + WG) {
        let j = i / BN;
        let c = i % BN;
        let col = min(n0 + c, p.n - 1u);
        let w = qweight[(g * 8u + j) * p.n + col];
        let s = unpack2x16float(scales[g * p.n + col]).x;
        for (var e = 0u; e < 4u; e = e + 1u) {
            let q = f32(i32(w << (24u - 8u * e)) >> 24u);
            wb[(4u * j + e) * BN + c] = f16(s * q);
        }
    }
}

// One accumulator tile out: through the subgroup's staging tile, then + bias, + the old
// value when accumulating (the residual), stored where inside m × n. (row0, col0) is the
// tile's first output element. Call in uniform control flow (it holds barriers).
fn emit(acc: TileC, row0: u32, col0: u32, sid: u32, lane: u32) {
    let base = sid * TILE * TILE;
    coopStoreT(acc, &staged[base], TILE);
    workgroupBarrier();
    for (var e = lane; e < TILE * TILE; e = e + SG) {
        let row = row0 + e / TILE;
        let col = col0 + e % TILE;
        if (row < p.m && col < p.n) {
            var v = staged[base + e];
            if ((p.flags & 1u) != 0u) {
                v = v + bias[p.out_offset + col];
            }
            let o = row * p.out_stride + p.out_offset + col;
            if ((p.flags & 2u) != 0u) {
                v = v + out[o];
            }
            out[o] = v;
        }
    }
    workgroupBarrier();
}

// Subgroup sid's tiles: rows sr·ROWS·TILE.., columns sc·COLS·TILE.. of the block. INT8
// selects the weights' format (int8 words, else int4).
@compute @workgroup_size(WG)
fn coop(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32, @builtin(subgroup_id) sid: u32, @builtin(subgroup_invocation_id) lane: u32) {
    let m0 = wid.y * BM;
    let n0 = wid.x * BN;
    let tr = (sid / 2u) * ROWS * TILE;
    let tc = (sid % 2u) * COLS * TILE;
    var acc{r}_{c} = TileC();
    for (var g = 0u; g < p.k / 32u; g = g + 1u) {
        stage_activations(m0, g, lid);
//#if INT8
        stage_int8(n0, g, lid);
//#else
        stage_int4(n0, g, lid);
//#endif
        workgroupBarrier();
        for (var kk = 0u; kk < 32u; kk = kk + TILE) {
            let a{r} = coopLoadT<TileA>(&xa[(tr + {r}u * TILE) * 32u + kk], 32u);
            let b{c} = coopLoadT<TileB>(&wb[kk * BN + tc + {c}u * TILE], BN);
            acc{r}_{c} = coopMultiplyAdd(a{r}, b{c}, acc{r}_{c});
        }
        workgroupBarrier();
    }
    emit(acc{r}_{c}, m0 + tr + {r}u * TILE, n0 + tc + {c}u * TILE, sid, lane);
}
