#!/usr/bin/env python3
"""Baseline: llama.cpp's CPU backend (through llama-cpp-python) on the same GGUF files as
edgereason, measuring prefill and decode throughput the same way for each model.

Pinned: llama-cpp-python==0.3.36 (tools/requirements-bench.txt), llama.cpp built from the sdist
with -march=native minus AMX (CFLAGS/CXXFLAGS="-march=native -mno-amx-tile -mno-amx-int8
-mno-amx-bf16", CMAKE_ARGS="-DGGML_NATIVE=OFF"). A plain -DGGML_NATIVE=ON build enables ggml's AMX
backend on this AMX-capable KVM guest and segfaults at ldtilecfg in ggml_backend_amx_mul_mat on
the first decode (upstream llama.cpp issue #20824). See tools/README.md.

For each GGUF:
  load   Llama(path, n_threads=T, n_ctx=1024, n_batch=512, verbose=False)
  prompt a repeated English paragraph, tokenized with BOS, truncated to --prompt-tokens (128)
  prefill  llm.reset(); time llm.eval(prompt)          -> prompt_tokens / seconds
  decode   then --decode-tokens (32) single-token llm.eval([tok]) calls  -> decode_tokens / seconds
           tok = greedy argmax of the last logits row, read with llama_get_logits_ith(ctx, -1)
           (argmax time included)
  --warmup untimed rounds first (default 1), then --runs timed rounds (default 3); the median
  of each metric over the timed rounds is reported (prefill and decode come from the same round).

Usage:
  /root/venv-llamacpp/bin/python tools/bench_llamacpp.py [--threads 2] [--json out.json] [GGUF ...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

try:
    import llama_cpp
    from llama_cpp import Llama
except ImportError:  # pragma: no cover - a setup message, not a code path
    sys.exit("llama_cpp not importable: run with /root/venv-llamacpp/bin/python "
             "(pip install -r tools/requirements-bench.txt)")

CACHE = Path.home() / ".cache" / "edgereason"
DEFAULT_MODELS = [
    CACHE / "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    CACHE / "SmolLM2-135M-Instruct.Q4_1.gguf",
]

PARAGRAPH = (
    "The quick brown fox jumps over the lazy dog while the river runs quietly past the old "
    "mill. Engineers measure the speed of small language models on modest hardware, counting "
    "how many tokens each second the machine can read and how many it can write. "
)


def prompt_tokens(llm: Llama, n: int) -> list[int]:
    text = PARAGRAPH
    toks = llm.tokenize(text.encode(), add_bos=True, special=False)
    while len(toks) < n:
        text += PARAGRAPH
        toks = llm.tokenize(text.encode(), add_bos=True, special=False)
    return toks[:n]


def last_logits(llm: Llama) -> np.ndarray:
    # llama-cpp-python 0.3.x no longer copies logits into llm.scores unless logits_all=True
    # (which would also run the LM head over every prompt row), so read llama.cpp's buffer.
    ptr = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
    return np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),))


def one_round(llm: Llama, prompt: list[int], n_decode: int) -> tuple[float, float, list[int]]:
    """Returns (prefill seconds, decode seconds, generated tokens)."""
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(prompt)
    t1 = time.perf_counter()
    out: list[int] = []
    t2 = time.perf_counter()
    for _ in range(n_decode):
        tok = int(np.argmax(last_logits(llm)))
        llm.eval([tok])
        out.append(tok)
    t3 = time.perf_counter()
    return t1 - t0, t3 - t2, out


def bench_model(path: Path, args: argparse.Namespace) -> dict:
    t_load = time.perf_counter()
    llm = Llama(model_path=str(path), n_threads=args.threads, n_threads_batch=args.threads,
                n_ctx=args.ctx, n_batch=args.batch, verbose=False)
    load_s = time.perf_counter() - t_load
    prompt = prompt_tokens(llm, args.prompt_tokens)
    if args.prompt_tokens + args.decode_tokens > args.ctx:
        raise SystemExit(f"prompt + decode tokens exceed --ctx {args.ctx}")

    for _ in range(args.warmup):
        one_round(llm, prompt, args.decode_tokens)
    prefill_s, decode_s, gens = [], [], []
    for _ in range(args.runs):
        p, d, g = one_round(llm, prompt, args.decode_tokens)
        prefill_s.append(p)
        decode_s.append(d)
        gens.append(g)

    pre_med = statistics.median(prefill_s)
    dec_med = statistics.median(decode_s)
    res = {
        "model": path.name,
        "path": str(path),
        "size_bytes": path.stat().st_size,
        "n_vocab": llm.n_vocab(),
        "load_s": round(load_s, 3),
        "prompt_tokens": len(prompt),
        "decode_tokens": args.decode_tokens,
        "prefill_s": [round(x, 5) for x in prefill_s],
        "decode_s": [round(x, 5) for x in decode_s],
        "prefill_tok_s": round(len(prompt) / pre_med, 2),
        "decode_tok_s": round(args.decode_tokens / dec_med, 2),
        "decode_ms_per_tok": round(1000 * dec_med / args.decode_tokens, 3),
        "ttft_ms": round(1000 * pre_med, 2),
        "greedy_deterministic": all(g == gens[0] for g in gens),
        "generated_text": llm.detokenize(gens[0]).decode("utf-8", errors="replace"),
    }
    llm.close()
    return res


def main() -> None:
    ap = argparse.ArgumentParser(
        description="llama.cpp CPU baseline (llama-cpp-python): prefill and decode tok/s per GGUF.")
    ap.add_argument("models", nargs="*", type=Path,
                    help="GGUF files (default: the two under ~/.cache/edgereason)")
    ap.add_argument("--threads", type=int, default=2, help="n_threads and n_threads_batch (2)")
    ap.add_argument("--ctx", type=int, default=1024, help="n_ctx (1024)")
    ap.add_argument("--batch", type=int, default=512, help="n_batch (512)")
    ap.add_argument("--prompt-tokens", type=int, default=128, help="prefill length (128)")
    ap.add_argument("--decode-tokens", type=int, default=32, help="decode steps (32)")
    ap.add_argument("--runs", type=int, default=3, help="timed rounds; median reported (3)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed rounds first (1)")
    ap.add_argument("--json", type=Path, metavar="PATH", help="also write results as JSON")
    args = ap.parse_args()

    models = args.models or DEFAULT_MODELS
    missing = [m for m in models if not m.is_file()]
    if missing:
        sys.exit("missing GGUF: " + ", ".join(map(str, missing)))

    t_all = time.perf_counter()
    results = []
    for m in models:
        print(f"[bench] {m.name} ...", file=sys.stderr, flush=True)
        results.append(bench_model(m, args))
    wall = time.perf_counter() - t_all

    hdr = f"{'model':<42} {'prefill tok/s':>13} {'decode tok/s':>12} {'ms/tok':>8} {'TTFT ms':>8} {'load s':>7}"
    print(f"llama-cpp-python {llama_cpp.__version__}, threads={args.threads}, "
          f"prompt={args.prompt_tokens}, decode={args.decode_tokens}, "
          f"median of {args.runs} (+{args.warmup} warmup)")
    print(hdr)
    print("-" * len(hdr))
    for r in results:
        print(f"{r['model']:<42} {r['prefill_tok_s']:>13.1f} {r['decode_tok_s']:>12.1f} "
              f"{r['decode_ms_per_tok']:>8.2f} {r['ttft_ms']:>8.1f} {r['load_s']:>7.2f}")
    print(f"total wall {wall:.1f} s")

    if args.json:
        sysinfo = llama_cpp.llama_print_system_info()
        doc = {
            "engine": "llama.cpp (llama-cpp-python)",
            "llama_cpp_python": llama_cpp.__version__,
            "system_info": sysinfo.decode() if isinstance(sysinfo, bytes) else str(sysinfo),
            "machine": platform.machine(),
            "cpu_count": os.cpu_count(),
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                         if k not in ("models", "json")},
            "wall_s": round(wall, 2),
            "results": results,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
