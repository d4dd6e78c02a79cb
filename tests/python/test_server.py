"""`edgereason serve` with real clients: the official `openai` package (chat, streaming,
n > 1 with the vote, stop strings, seed reproducibility, the CLI's greedy tokens) and plain
HTTP (bad requests as OpenAI-style 4xx, the API key, a client that disconnects mid-stream,
and a bounded load test that ends with the KV block pool back to full).

Run by tools/test.sh (the README's test command) against SmolLM2-135M on the default device.
"""

import concurrent.futures as cf
import http.client
import json
import os
import re
import subprocess
import time
import urllib.request

import openai
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.join(ROOT, "target", "release", "edgereason")
MODEL = "smollm2-135m"
KEY = "test-key"


@pytest.fixture(scope="module")
def server():
    proc = subprocess.Popen(
        [BIN, "serve", "--model", MODEL, "--port", "0", "--max-streams", "8", "--max-queue", "4",
         "--api-key", KEY],
        stderr=subprocess.PIPE, text=True, cwd=ROOT)
    port = None
    deadline = time.time() + 300
    for line in proc.stderr:
        m = re.search(r"serving .* on http://127\.0\.0\.1:(\d+)", line)
        if m:
            port = int(m.group(1))
            break
        assert time.time() < deadline, "server did not start"
    assert port, "server exited before listening"
    # Keep draining stderr so the server never blocks on a full pipe.
    import threading
    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
    yield port
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"http://127.0.0.1:{server}/v1", api_key=KEY, max_retries=0,
                         timeout=300)


def raw(port, method, path, body=None, key=KEY):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    conn.request(method, path, body=body, headers=headers)
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return r.status, dict(r.getheaders()), data


def metrics(port):
    _, _, data = raw(port, "GET", "/metrics")
    out = {}
    for line in data.decode().splitlines():
        if line and not line.startswith("#") and "{" not in line:
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def settled(port, timeout=120):
    """Metrics once nothing runs or waits (a cancelled request leaves at the next step)."""
    t = time.time()
    while True:
        m = metrics(port)
        if m["edgereason_requests_running"] == 0 and m["edgereason_requests_queued"] == 0:
            return m
        assert time.time() - t < timeout, m
        time.sleep(0.2)


def chat(client, content, **kw):
    kw.setdefault("max_tokens", 16)
    kw.setdefault("temperature", 0)
    extra = kw.pop("extra_body", {"reasoning": "off"})
    return client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": content}], extra_body=extra, **kw)


def test_greedy_chat_equals_the_cli(client):
    r = chat(client, "What is the capital of France?")
    out = subprocess.run([BIN, "run", "--model", MODEL, "--max-tokens", "16", "--reasoning", "off",
                          "--json", "What is the capital of France?"],
                         capture_output=True, text=True, cwd=ROOT, check=True)
    cli = json.loads(out.stdout)
    assert r.choices[0].message.content == cli["text"]
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens == cli["prompt_tokens"]
    assert r.usage.completion_tokens == len(cli["tokens"])


def test_streaming_gives_the_same_text_and_usage(client):
    full = chat(client, "Name three colours.").choices[0].message.content
    parts, usage, finish = [], None, None
    for chunk in chat(client, "Name three colours.", stream=True,
                      stream_options={"include_usage": True}):
        if chunk.usage:
            usage = chunk.usage
        for c in chunk.choices:
            parts.append(c.delta.content or "")
            finish = c.finish_reason or finish
    assert "".join(parts) == full
    assert usage is not None and usage.completion_tokens > 0
    assert finish in ("stop", "length")


def test_n_candidates_vote_and_seed_reproduce(client, server):
    kw = dict(n=3, temperature=0.9, seed=11, max_tokens=12)
    a = chat(client, "Pick a number between 1 and 9.", **kw)
    b = chat(client, "Pick a number between 1 and 9.", **kw)
    texts = [c.message.content for c in a.choices]
    assert len(texts) == 3 and [c.index for c in a.choices] == [0, 1, 2]
    assert texts == [c.message.content for c in b.choices], "same seed, same candidates"
    ext = a.model_extra["edgereason"]
    assert len(ext["candidates"]) == 3
    assert all(c["verifier_score"] is not None for c in ext["candidates"]), "the verifier scores n > 1"
    c = chat(client, "Pick a number between 1 and 9.", **{**kw, "seed": 12})
    assert [x.message.content for x in c.choices] != texts


def test_logprobs_with_the_most_likely_tokens(client):
    # Greedy: each chosen token is the most likely, listed first among its alternatives,
    # which are sorted and are log-probabilities; streamed chunks carry the same entries.
    r = chat(client, "Name a fruit.", max_tokens=8, logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    for e in content:
        alts = e.top_logprobs
        assert len(alts) == 3, e
        assert alts[0].token == e.token and abs(alts[0].logprob - e.logprob) < 1e-4, e
        lps = [a.logprob for a in alts]
        assert lps == sorted(lps, reverse=True) and all(lp <= 0 for lp in lps), e
    streamed = [e for c in chat(client, "Name a fruit.", max_tokens=8, logprobs=True,
                                top_logprobs=3, stream=True)
                for ch in c.choices if ch.logprobs for e in ch.logprobs.content]
    assert [(e.token, [a.token for a in e.top_logprobs]) for e in streamed] == \
        [(e.token, [a.token for a in e.top_logprobs]) for e in content]
    plain = chat(client, "Name a fruit.", max_tokens=8, logprobs=True)
    assert all(e.top_logprobs == [] for e in plain.choices[0].logprobs.content)


def test_stop_strings_end_the_reply_and_are_not_returned(client):
    full = chat(client, "Write a sentence about the sea.", max_tokens=24).choices[0].message.content
    words = full.split()
    assert len(words) >= 4, full
    stop = " " + words[2]
    r = chat(client, "Write a sentence about the sea.", max_tokens=24, stop=[stop])
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].message.content == full[:full.index(stop)]
    s = "".join(c.choices[0].delta.content or "" for c in
                chat(client, "Write a sentence about the sea.", max_tokens=24, stop=[stop], stream=True)
                if c.choices)
    assert s == r.choices[0].message.content


def test_completions_and_models(client):
    r = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=5,
                                  temperature=0, extra_body={"reasoning": "off"})
    assert r.object == "text_completion" and r.choices[0].text
    assert [m.id for m in client.models.list().data] == [MODEL]


def test_bad_requests_are_openai_errors(server):
    body = json.dumps
    msgs = [{"role": "user", "content": "hi"}]
    cases = [
        (b"{not json", None),
        (body({"messages": []}), "messages"),
        (body({"messages": msgs, "temperature": "hot"}), "temperature"),
        (body({"messages": msgs, "n": 0}), "n"),
        (body({"messages": msgs, "adapter": "nope"}), "adapter"),
        (body({"messages": msgs, "max_tokens": 10 ** 6}), "max_tokens"),
        (body({"messages": [{"role": "user", "content": "word " * 5000}]}), None),
    ]
    for data, param in cases:
        status, _, out = raw(server, "POST", "/v1/chat/completions", data)
        err = json.loads(out)["error"]
        assert status == 400, (data[:60], status, err)
        assert err["type"] == "invalid_request_error" and err["message"]
        if param:
            assert err["param"] == param, (param, err)
    status, _, _ = raw(server, "POST", "/v1/chat/completions", body({"messages": msgs}), key=None)
    assert status == 401
    status, _, out = raw(server, "GET", "/health", key=None)
    assert status == 200 and json.loads(out)["status"] == "ok"


def test_a_client_that_disconnects_frees_its_rows_and_blocks(server):
    conn = http.client.HTTPConnection("127.0.0.1", server, timeout=300)
    conn.request("POST", "/v1/chat/completions", body=json.dumps({
        "messages": [{"role": "user", "content": "Tell me a long story."}], "max_tokens": 400,
        "stream": True, "reasoning": "off"}),
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    r = conn.getresponse()
    assert r.status == 200
    seen = 0
    while seen < 3:
        line = r.fp.readline()
        seen += line.startswith(b"data: ")
    conn.close()
    m = settled(server)
    assert m["edgereason_requests_cancelled_total"] >= 1
    assert m["edgereason_kv_blocks_free"] + m["edgereason_kv_blocks_cached_only"] == \
        m["edgereason_kv_blocks_total"]


def one_load_request(port, i):
    """Mixed n, adapters, streaming and cancellation (the client goes away after sending).
    A 429 is retried after its Retry-After, as clients do. Returns (status, tries)."""
    body = {"messages": [{"role": "user", "content": f"Question {i}: what is {i} + {i}?"}],
            "max_tokens": 10 + i % 5, "reasoning": ["off", "on"][i % 2],
            "n": 1 + (i % 3 == 0), "temperature": 0.7, "seed": i, "stream": i % 4 == 1}
    for tries in range(1, 41):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        conn.request("POST", "/v1/chat/completions", body=json.dumps(body),
                     headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
        if i % 5 == 2:
            time.sleep(0.5)
            conn.close()  # cancel: gone before the answer
            return "cancelled", tries
        r = conn.getresponse()
        data = r.read()
        conn.close()
        if r.status == 429:
            assert r.getheader("Retry-After") == "1"
            time.sleep(1)
            continue
        if r.status == 200 and not body["stream"]:
            assert len(json.loads(data)["choices"]) == body["n"]
        elif r.status == 200:
            assert data.rstrip().endswith(b"data: [DONE]")
        return r.status, tries
    return 429, tries


def test_bounded_load_every_request_answered_or_refused_and_nothing_leaks(server):
    t = time.time()
    with cf.ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda i: one_load_request(server, i), range(16)))
    statuses = [r[0] for r in results]
    assert set(statuses) <= {200, "cancelled"}, results
    assert statuses.count(200) == 16 - statuses.count("cancelled"), results
    assert any(r[1] > 1 for r in results), f"a queue of 4 under 8 clients refuses some: {results}"
    m = settled(server)
    assert m["edgereason_requests_rejected_total"] >= 1
    assert m["edgereason_kv_blocks_free"] + m["edgereason_kv_blocks_cached_only"] == \
        m["edgereason_kv_blocks_total"], m
    assert time.time() - t < 600
