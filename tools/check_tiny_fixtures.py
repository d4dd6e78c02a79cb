#!/usr/bin/env python3
"""Independent numpy forward pass over tests/fixtures/tiny-*/, compared with expected.json.

No torch or transformers: reads config.json + model.safetensors and spells out the math the
engine has to match (RMSNorm, rotate-half RoPE, GQA, SwiGLU, tied/untied head), then checks
that every int4 matrix is a fixed point of tools/quant.py and that the logits agree with the
HF reference. Needs numpy and safetensors only.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quant import check_idempotent  # noqa: E402


def rmsnorm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rope(x, pos, theta):
    # x: [T, H, D]; HF layout: pairs are (i, i + D/2) ("rotate half", NeoX style).
    d = x.shape[-1]
    inv = 1.0 / theta ** (np.arange(0, d, 2, dtype=np.float64) / d)
    ang = pos[:, None].astype(np.float64) * inv[None, :]  # [T, D/2]
    cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    a, b = x[..., : d // 2], x[..., d // 2:]
    return np.concatenate([a * cos - b * sin, b * cos + a * sin], axis=-1)


def forward(cfg, t, ids):
    f64 = {k: v.astype(np.float64) for k, v in t.items()}
    n_h, n_kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or cfg["hidden_size"] // n_h
    eps, theta = cfg["rms_norm_eps"], cfg["rope_theta"]
    T = len(ids)
    pos = np.arange(T)
    x = f64["model.embed_tokens.weight"][ids]
    mask = np.triu(np.full((T, T), -np.inf), 1)
    for layer in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        h = rmsnorm(x, f64[p + "input_layernorm.weight"], eps)

        def lin(name, inp):
            y = inp @ f64[p + name + ".weight"].T
            return y + f64[p + name + ".bias"] if p + name + ".bias" in f64 else y

        q = lin("self_attn.q_proj", h).reshape(T, n_h, hd)
        k = lin("self_attn.k_proj", h).reshape(T, n_kv, hd)
        v = lin("self_attn.v_proj", h).reshape(T, n_kv, hd)
        q, k = rope(q, pos, theta), rope(k, pos, theta)
        out = np.empty((T, n_h, hd))
        for head in range(n_h):
            kv = head // (n_h // n_kv)  # query head h reads KV head h / (n_head / n_kv_head)
            s = q[:, head] @ k[:, kv].T / np.sqrt(hd) + mask
            s = np.exp(s - s.max(-1, keepdims=True))
            out[:, head] = (s / s.sum(-1, keepdims=True)) @ v[:, kv]
        x = x + lin("self_attn.o_proj", out.reshape(T, n_h * hd))
        h = rmsnorm(x, f64[p + "post_attention_layernorm.weight"], eps)
        g, u = lin("mlp.gate_proj", h), lin("mlp.up_proj", h)
        x = x + lin("mlp.down_proj", g / (1.0 + np.exp(-g)) * u)
    x = rmsnorm(x, f64["model.norm.weight"], eps)
    head = f64["lm_head.weight"] if "lm_head.weight" in f64 else f64["model.embed_tokens.weight"]
    return x @ head.T


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fixtures", default=str(Path(__file__).resolve().parent.parent / "tests" / "fixtures"))
    ap.add_argument("--tol", type=float, default=1e-4, help="max abs logit difference allowed")
    args = ap.parse_args()
    ok = True
    for d in sorted(Path(args.fixtures).glob("tiny-*")):
        cfg = json.load(open(d / "config.json"))
        t = load_file(str(d / "model.safetensors"))
        exp = json.load(open(d / "expected.json"))
        fixed = all(check_idempotent(v) for v in t.values() if v.ndim == 2)
        worst = 0.0
        for c in exp["cases"]:
            ref = np.array(c["logits"], dtype=np.float64)
            got = forward(cfg, t, c["ids"])
            worst = max(worst, float(np.abs(got - ref).max()))
            ok &= bool((got.argmax(-1) == np.array(c["argmax"])).all())
        ok &= fixed and worst <= args.tol
        print(f"{d.name}: int4 fixed point {fixed}, max |logit - HF| = {worst:.2e}")
    print("ok" if ok else "MISMATCH")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
