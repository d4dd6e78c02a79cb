#!/usr/bin/env python3
"""Benchmark `edgereason serve`: aggregate decode tokens/s and TTFT (p50/p95) with 1, 4 and 8
concurrent streaming clients, and the prefix cache's effect on TTFT for a shared ~1000-token
system prompt. Starts its own server on a free loopback port and stops it at the end.

  python3 tools/bench_serve.py [--model smollm2-135m] [--clients 1,4,8] [--requests 2]
      [--max-tokens 32] [--json out.json]

Standard library only (plain HTTP + server-sent events), so it runs anywhere Python does.
"""

import argparse
import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# EDGEREASON_BIN: a binary built elsewhere (tools/gpu_check.sh carries one to the GPU machine).
BIN = os.environ.get("EDGEREASON_BIN") or os.path.join(ROOT, "target", "release", "edgereason")

QUESTIONS = [
    "What is the capital of France?", "Name a large ocean.", "How many legs has a spider?",
    "What colour is the sky on a clear day?", "Name a planet of the solar system.",
    "What do bees make?", "What is 12 times 3?", "Which animal says moo?",
    "What is frozen water called?", "Name a fruit that is yellow.", "How many days has a week?",
    "What is the opposite of hot?", "Name a musical instrument.", "What gas do we breathe in?",
    "What is the largest mammal?", "How many hours are in a day?",
]


def start(model, extra):
    proc = subprocess.Popen([BIN, "serve", "--model", model, "--port", "0", *extra],
                            stderr=subprocess.PIPE, text=True, cwd=ROOT)
    for line in proc.stderr:
        m = re.search(r"serving .* on http://127\.0\.0\.1:(\d+)", line)
        if m:
            threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
            return proc, int(m.group(1))
    raise SystemExit("the server did not start")


# A synthetic model's tokenizer knows only the words w1..wN (any other word is one unknown
# id), so on one every word is sent as its own w<n>: prompts keep their length and stay
# distinct, as the prefix cache needs.
SYNTHETIC = False


def as_words(text):
    import zlib
    return " ".join(f"w{1000 + zlib.crc32(w.encode()) % 30000}" for w in text.split())


def stream_chat(port, messages, max_tokens):
    """One streaming request: (seconds to the first token, completion tokens, seconds)."""
    if SYNTHETIC:
        messages = [{**m, "content": as_words(m["content"])} for m in messages]
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=3600)
    body = {"messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}, "reasoning": "off"}
    conn.request("POST", "/v1/chat/completions", body=json.dumps(body),
                 headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    if r.status != 200:
        raise SystemExit(f"HTTP {r.status}: {r.read()[:200]}")
    ttft, tokens = None, 0
    for raw in r:
        line = raw.decode().strip()
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        chunk = json.loads(line[6:])
        if chunk.get("usage"):
            tokens = chunk["usage"]["completion_tokens"]
        if ttft is None and any(c.get("delta", {}).get("content") for c in chunk["choices"]):
            ttft = time.perf_counter() - t0
    conn.close()
    return ttft or (time.perf_counter() - t0), tokens, time.perf_counter() - t0


def metric(port, name):
    """One value of the server's /metrics."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    if not m:
        raise SystemExit(f"/metrics has no {name}")
    return float(m.group(1))


def wait_warm(port, limit_s=600):
    """Seconds from now until the server has built its kernel variants (it does while idle)."""
    t0 = time.perf_counter()
    while metric(port, "edgereason_pipelines_cold") > 0:
        if time.perf_counter() - t0 > limit_s:
            raise SystemExit(f"the server was still warming up after {limit_s} s")
        time.sleep(0.2)
    return time.perf_counter() - t0


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def concurrency(port, clients, requests, max_tokens):
    results, lock = [], threading.Lock()

    def client(c):
        for r in range(requests):
            q = QUESTIONS[(c * requests + r) % len(QUESTIONS)]
            out = stream_chat(port, [{"role": "user", "content": f"{q} (client {c})"}], max_tokens)
            with lock:
                results.append(out)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    wall = time.perf_counter() - t0
    ttfts = [r[0] for r in results]
    tokens = sum(r[1] for r in results)
    return {"clients": clients, "requests": len(results), "tokens": tokens, "wall_s": wall,
            "tokens_per_s": tokens / wall, "ttft_p50_s": statistics.median(ttfts),
            "ttft_p95_s": pct(ttfts, 95)}


def shared_prefix(port, words):
    """TTFT of a request whose ~1000-token system prompt is new, then of one that shares it."""
    def msgs(q, salt):
        system = " ".join(f"Rule {i}: answer briefly and politely, item {(i * 7 + salt) % 101}."
                          for i in range(words))
        return [{"role": "system", "content": system}, {"role": "user", "content": q}]
    # An untimed pair with another system prompt first: the first prefill over cached blocks
    # compiles its pipelines (on a GPU, 0.5 s against a 0.05 s prefill).
    stream_chat(port, msgs("Say hello.", 1), 1)
    stream_chat(port, msgs("Say goodbye.", 1), 1)
    cold = stream_chat(port, msgs("Say hello.", 0), 1)[0]
    warm = stream_chat(port, msgs("Say goodbye.", 0), 1)[0]
    return {"cold_ttft_s": cold, "warm_ttft_s": warm, "speedup": cold / warm}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--clients", default="1,4,8")
    ap.add_argument("--requests", type=int, default=2, help="requests per client")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--prefix-rules", type=int, default=70, help="system prompt size (~15 tokens each)")
    ap.add_argument("--serve-arg", action="append", default=[],
                    help="extra `edgereason serve` argument (repeatable), e.g. --serve-arg=--no-warm-up")
    ap.add_argument("--json")
    a = ap.parse_args()
    global SYNTHETIC
    SYNTHETIC = a.model.startswith("synthetic:")
    proc, port = start(a.model, ["--max-streams", "8", "--max-queue", "64", *a.serve_arg])
    try:
        warm_s = wait_warm(port) if "--no-warm-up" not in a.serve_arg else None
        if warm_s is not None:
            print(f"kernel variants built while idle: {warm_s:.1f} s after start")
        stream_chat(port, [{"role": "user", "content": "Warm up."}], 4)
        rows = [concurrency(port, int(c), a.requests, a.max_tokens) for c in a.clients.split(",")]
        base = rows[0]["tokens_per_s"]
        print(f"{a.model}: {a.requests} streaming requests per client, {a.max_tokens} tokens each, greedy")
        print(f"{'clients':>8} {'requests':>9} {'tok/s':>8} {'vs 1':>6} {'TTFT p50':>10} {'p95':>10}")
        for r in rows:
            r["vs_one"] = r["tokens_per_s"] / base
            print(f"{r['clients']:>8} {r['requests']:>9} {r['tokens_per_s']:>8.2f} {r['vs_one']:>5.2f}x"
                  f" {r['ttft_p50_s'] * 1e3:>7.1f} ms {r['ttft_p95_s'] * 1e3:>7.1f} ms")
        p = shared_prefix(port, a.prefix_rules)
        print(f"shared system prompt: TTFT cold {p['cold_ttft_s'] * 1e3:.1f} ms, from the prefix cache "
              f"{p['warm_ttft_s'] * 1e3:.1f} ms ({p['speedup']:.1f}x)")
        compiled = metric(port, "edgereason_pipelines_compiled_total")
        warmed = metric(port, "edgereason_pipelines_warmed_total")
        print(f"kernel variants built: {compiled:.0f}, {warmed:.0f} of them while idle")
        if a.json:
            with open(a.json, "w") as f:
                json.dump({"model": a.model, "concurrency": rows, "prefix": p, "warm_up_s": warm_s,
                           "pipelines_compiled": compiled, "pipelines_warmed": warmed}, f, indent=1)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


if __name__ == "__main__":
    sys.exit(main())
