"""The engine's int4 weight layout, reproduced in numpy (see `quantize_q4` in src/loader/mod.rs).

Every 2-D weight matrix is quantized row by row in groups of 32 consecutive input columns:

    mn, mx = min(group), max(group)
    min    = f32(f16(mn))                       # round-to-nearest-even f16
    scale  = f32(f16((mx - min) / 15))          # computed in f32, then rounded to f16
    q      = clamp(round((w - min) / scale), 0, 15)   # round half away from zero (Rust f32::round);
                                                      # q = 0 everywhere when scale == 0
    w'     = scale * q + min                    # f32 multiply, then f32 add

`fake_quant_int4(w)` returns w' with w's shape (float32). It is idempotent: quantizing w' again
gives w' back bit for bit (checked by `check_idempotent`), so a checkpoint whose matrices went
through it is seen with exactly the same numbers by an engine that quantizes on load.
"""

import numpy as np

GROUP = 32


def _round_half_away(x: np.ndarray) -> np.ndarray:
    """Rust's f32::round: halves go away from zero. Done in f64, where x + 0.5 is exact."""
    x64 = x.astype(np.float64)
    return (np.sign(x64) * np.floor(np.abs(x64) + 0.5)).astype(np.float32)


def quantize_int4(w: np.ndarray):
    """Return (q uint8 [rows, cols], scale f32 [rows, cols/32], min f32 [rows, cols/32])."""
    w = np.ascontiguousarray(w, dtype=np.float32)
    if w.ndim != 2:
        raise ValueError(f"expected a 2-D matrix, got shape {w.shape}")
    rows, cols = w.shape
    if cols % GROUP != 0:
        raise ValueError(f"row length {cols} is not a multiple of {GROUP}")
    g = w.reshape(rows, cols // GROUP, GROUP)
    mn = g.min(axis=2)
    mx = g.max(axis=2)
    gmin = mn.astype(np.float16).astype(np.float32)
    scale = ((mx - gmin) / np.float32(15.0)).astype(np.float32).astype(np.float16).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        x = ((g - gmin[..., None]) / scale[..., None]).astype(np.float32)
    q = np.clip(_round_half_away(x), 0.0, 15.0)
    q = np.where(scale[..., None] > 0.0, q, 0.0).astype(np.uint8)
    return q.reshape(rows, cols), scale, gmin


def dequantize_int4(q: np.ndarray, scale: np.ndarray, gmin: np.ndarray) -> np.ndarray:
    rows, cols = q.shape
    qg = q.reshape(rows, cols // GROUP, GROUP).astype(np.float32)
    w = (scale[..., None] * qg).astype(np.float32) + gmin[..., None]
    return w.astype(np.float32).reshape(rows, cols)


def fake_quant_int4(w: np.ndarray) -> np.ndarray:
    """Quantize to the engine's int4 layout and back (float32, same shape)."""
    return dequantize_int4(*quantize_int4(w))


def check_idempotent(w: np.ndarray) -> bool:
    """True when quantizing w (already fake-quantized) gives w back exactly."""
    return np.array_equal(fake_quant_int4(w).view(np.uint32), np.ascontiguousarray(w, np.float32).view(np.uint32))


if __name__ == "__main__":
    rng = np.random.default_rng(0)
    a = (rng.standard_normal((7, 96)) * 0.08).astype(np.float32)
    b = fake_quant_int4(a)
    assert check_idempotent(b)
    assert np.abs(a - b).max() < 0.08
    c = np.zeros((2, 32), np.float32)
    assert np.array_equal(fake_quant_int4(c), c)
    print("quant self-test ok; max abs err", float(np.abs(a - b).max()))
