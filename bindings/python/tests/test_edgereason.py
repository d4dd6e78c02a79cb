"""The Python package (`import edgereason`, built by maturin) against the CLI on SmolLM2-135M.

Run by tools/test.sh after `maturin build`; EDGEREASON_BIN is the CLI (default
target/release/edgereason). The model comes from `edgereason pull`'s cache.
"""
import json
import os
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest

import edgereason

ROOT = Path(__file__).resolve().parents[3]
BIN = os.environ.get("EDGEREASON_BIN", str(ROOT / "target/release/edgereason"))
MODEL = "smollm2-135m"
QUESTION = "What is 12 + 30?"


@pytest.fixture(scope="module")
def eng():
    return edgereason.Engine.load(MODEL, load_shipped=True)


def cli_run(*args):
    out = subprocess.run([BIN, "run", "--model", MODEL, "--json", *args], check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout)


def test_greedy_tokens_equal_the_cli(eng):
    cli = cli_run("--reasoning", "off", "--max-tokens", "24", QUESTION)
    prompt = eng.chat([{"role": "user", "content": QUESTION}])
    assert eng.encode(prompt) == cli["prompt_token_ids"]
    stream = eng.generate(prompt, max_tokens=24)
    tokens = list(stream)
    assert [t.id for t in tokens] == cli["tokens"]
    assert "".join(t.text for t in tokens) == cli["text"]
    result = stream.result["candidates"][0]
    assert result["tokens"] == cli["tokens"]
    assert result["finish_reason"] == cli["finish_reason"]
    assert eng.decode(result["tokens"]) == cli["text"]


def test_tokens_carry_their_logprob_and_the_most_likely_tokens(eng):
    prompt = eng.chat([{"role": "user", "content": QUESTION}])
    tokens = list(eng.generate(prompt, max_tokens=8, top_logprobs=3))
    assert tokens
    for t in tokens:
        assert len(t.top_logprobs) == 3 and t.top_logprobs[0][0] == t.id, t
        assert abs(t.top_logprobs[0][1] - t.logprob) < 1e-4 and t.logprob <= 0
        lps = [lp for _, lp in t.top_logprobs]
        assert lps == sorted(lps, reverse=True)
    assert all(t.top_logprobs == [] for t in eng.generate(prompt, max_tokens=4))
    with pytest.raises(ValueError):
        eng.generate(prompt, top_logprobs=21)


def test_reasoning_adapter_tokens_equal_the_cli(eng):
    cli = cli_run("--reasoning", "on", "--max-tokens", "32", QUESTION)
    prompt = eng.chat([{"role": "user", "content": QUESTION}])
    r = eng.generate(prompt, max_tokens=32, reasoning="on").result
    assert r["reasoning"] is True
    assert r["candidates"][0]["tokens"] == cli["tokens"]


def test_best_of_votes_and_is_reproducible(eng):
    prompt = eng.chat([{"role": "user", "content": QUESTION}])
    a = eng.best_of(prompt, n=4, reasoning="on", max_tokens=64, seed=3)
    b = eng.best_of(prompt, n=4, reasoning="on", max_tokens=64, seed=3)
    assert [c["tokens"] for c in a["candidates"]] == [c["tokens"] for c in b["candidates"]]
    assert len(a["candidates"]) == 4
    answers = [c["answer"] for c in a["candidates"] if c["answer"] is not None]
    # majority: each distinct answer's votes is its count, best first, and the winner is first
    assert sorted(v for _, v in a["votes"]) == sorted(answers.count(x) for x in set(answers))
    assert a["answer"] == a["votes"][0][0]
    # the shipped verifier scores every candidate; weighted votes are sums of its scores
    w = eng.best_of(prompt, n=4, reasoning="on", max_tokens=64, seed=3, vote="weighted")
    scores = {}
    for c in w["candidates"]:
        assert 0.0 <= c["verifier_score"] <= 1.0
        if c["answer"] is not None:
            scores[c["answer"]] = scores.get(c["answer"], 0.0) + c["verifier_score"]
    for answer, votes in w["votes"]:
        assert votes == pytest.approx(scores[answer], rel=1e-5)


def test_score_returns_numpy_and_agrees_with_greedy(eng):
    prompt = eng.encode(eng.chat([{"role": "user", "content": QUESTION}]))
    reply = eng.generate(prompt, max_tokens=12).result["candidates"][0]["tokens"]
    s = eng.score(prompt + reply)
    n = len(prompt) + len(reply)
    assert s["tokens"].dtype == np.uint32 and s["tokens"].shape == (n,)
    assert s["logprobs"].dtype == np.float32 and s["logprobs"].shape == (n - 1,)
    assert s["top5_ids"].shape == (n - 1, 5)
    assert np.all(s["logprobs"] <= 0)
    # greedy decoding picked each reply token as the argmax at its position
    assert s["top5_ids"][len(prompt) - 1:, 0].tolist() == reply
    assert s["mean_nll"] == pytest.approx(-float(np.mean(s["logprobs"].astype(np.float64))), rel=1e-5)


def test_cancel_and_gil_released(eng):
    prompt = eng.chat([{"role": "user", "content": "Write a long story about a dragon."}])
    stream = eng.generate(prompt, max_tokens=200)
    ticks = 0
    stop = threading.Event()

    def count():
        nonlocal ticks
        while not stop.is_set():
            ticks += 1

    t = threading.Thread(target=count)
    t.start()
    first = next(stream)  # blocks on the GPU thread with the GIL released
    stop.set()
    t.join()
    assert ticks > 1000, "the GIL was held while waiting for a token"
    assert first.stream == 0
    threading.Thread(target=stream.cancel).start()
    rest = list(stream)
    c = stream.result["candidates"][0]
    assert c["finish_reason"] == "cancelled"
    assert len(rest) + 1 < 200


def test_two_readers_of_one_stream_lose_no_token(eng):
    # Two threads iterate the same TokenStream: a next() while the other thread waits for
    # a token raises RuntimeError (never a deadlock); every token reaches exactly one
    # reader, each reader sees its tokens in order, and the result is the whole reply.
    prompt = eng.chat([{"role": "user", "content": QUESTION}])
    expected = [t.id for t in eng.generate(prompt, max_tokens=40)]
    stream = eng.generate(prompt, max_tokens=40)
    got = {0: [], 1: []}
    busy = [0]

    def reader(k):
        while True:
            try:
                token = next(stream)
            except StopIteration:
                return
            except RuntimeError as e:
                assert "another thread" in str(e)
                busy[0] += 1
                threading.Event().wait(0.001)
                continue
            got[k].append(token.id)

    threads = [threading.Thread(target=reader, args=(k,), daemon=True) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "a reader hung"

    def in_order(sub):
        it = iter(expected)
        return all(any(x == y for y in it) for x in sub)

    assert sorted(got[0] + got[1]) == sorted(expected)
    assert in_order(got[0]) and in_order(got[1])
    assert stream.result["candidates"][0]["tokens"] == expected


def test_bad_input_raises_clear_errors(eng):
    with pytest.raises(ValueError, match="reasoning mode 'sideways'"):
        eng.generate("hi", reasoning="sideways")
    with pytest.raises(ValueError, match="top_p"):
        eng.generate("hi", top_p=0.0)
    with pytest.raises(ValueError, match="not loaded"):
        eng.generate("hi", reasoning="on", adapter="nope")
    with pytest.raises(ValueError, match="temperature"):
        eng.best_of("hi", n=4, temperature=0.0)
    with pytest.raises(RuntimeError, match="/nonexistent"):
        eng.load_adapter("x", "/nonexistent")
    with pytest.raises(RuntimeError, match="context"):
        list(eng.generate(list(range(5000)) , max_tokens=4))
    with pytest.raises(ValueError, match="role"):
        eng.chat([{"content": "no role"}])


def test_adapters_load_and_unload(eng):
    shipped = ROOT / "adapters" / MODEL / "reasoning"
    eng.load_adapter("extra", str(shipped))
    assert "extra" in eng.adapters
    eng.unload_adapter("extra")
    assert "extra" not in eng.adapters
    with pytest.raises(RuntimeError):
        eng.unload_adapter("extra")


def test_calls_from_several_threads_share_decode_steps(eng):
    # Three threads generate at once: each gets the tokens it gets alone, and the engine's
    # scheduler decoded them together (a step with more than one stream).
    questions = [QUESTION, "What is 7 * 8?", "Name a primary color."]
    prompts = [eng.chat([{"role": "user", "content": q}]) for q in questions]
    alone = [[t.id for t in eng.generate(p, max_tokens=16)] for p in prompts]
    barrier = threading.Barrier(len(prompts))
    got = [None] * len(prompts)

    def run(i):
        barrier.wait()
        got[i] = [t.id for t in eng.generate(prompts[i], max_tokens=16)]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert got == alone
    m = eng.scheduler_metrics()
    assert m is not None and m["peak_step_streams"] >= 2, m
