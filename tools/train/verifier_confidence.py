#!/usr/bin/env python3
"""Give the verifier the model's own confidence: a logistic layer over three numbers the engine
has for every finished candidate — the verifier head's logit (its hidden-state probe), the
candidate's mean log-probability per token, and its length — fitted on candidates of the
training generators' problems, written into the verifier file beside the probe.

Why: on problems no training generator wrote, the probe alone is at chance (AUC 0.49 on
heldout.py's seed 7) while the mean log-prob separates right from wrong (0.75); see
adapters/qwen2.5-coder-0.5b/RESULTS.md.

    verifier_confidence.py --train CANDIDATES.json [--test REPORT.json ...] \
        [--verifier verifier.safetensors --out verifier.safetensors]

CANDIDATES.json and each REPORT.json are `edgereason eval --best-of N --vote weighted --json`
reports (each candidate's `verifier_scores`, `candidate_logprobs`, `candidate_tokens`). The fit
is cross-validated on the training report (folds grouped by prompt); each test report gets the
AUC of every signal and the votes at k = 1, 2, 4, ... with the combined score as weights. With
--out, the file gets `confidence.weight` [3] (probe logit, mean log-prob, tokens / 64) and
`confidence.bias` [1]; the engine then scores σ(weight · features + bias) instead of the probe's
σ(logit).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from confidence import auc, norm, vote  # noqa: E402

# Tokens are scaled so the length's weight is of the other two's size.
TOKEN_SCALE = 64.0


def features(item, i):
    """The three numbers the engine has for candidate i of a report item."""
    p = min(max(item["verifier_scores"][i], 1e-6), 1 - 1e-6)
    n = max(len(item["candidate_tokens"][i]), 1)
    return [math.log(p / (1 - p)), item["candidate_logprobs"][i] / n, n / TOKEN_SCALE]


def table(items):
    """Features, labels and each row's item index, over every candidate of `items`."""
    x, y, group = [], [], []
    for g, it in enumerate(items):
        want = norm(it["expected"])
        for i, a in enumerate(it["candidate_answers"]):
            x.append(features(it, i))
            y.append(norm(a) == want)
            group.append(g)
    return np.array(x, dtype=np.float64), np.array(y, dtype=np.float64), np.array(group)


def fit(x, y, l2):
    """Logistic regression by Newton's method, L2 on the weights (not the bias)."""
    a = np.hstack([x, np.ones((len(x), 1))])
    w = np.zeros(a.shape[1])
    reg = np.eye(a.shape[1]) * l2
    reg[-1, -1] = 0.0
    for _ in range(50):
        p = 1 / (1 + np.exp(-a @ w))
        grad = a.T @ (p - y) + reg @ w
        hess = (a * (p * (1 - p))[:, None]).T @ a + reg + 1e-9 * np.eye(a.shape[1])
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-10:
            break
    return w[:-1], w[-1]


def score(x, w, b):
    return 1 / (1 + np.exp(-(x @ w + b)))


def cross_validated_auc(x, y, group, l2, folds=5):
    order = np.random.default_rng(1).permutation(np.unique(group))
    out = np.zeros(len(y))
    for f in range(folds):
        held = np.isin(group, order[f::folds])
        w, b = fit(x[~held], y[~held], l2)
        out[held] = score(x[held], w, b)
    return auc(list(out), list(y > 0.5))


def votes(items, w, b):
    """Accuracy at k = 1, 2, 4, ...: majority, the probe's weights, the combined score's."""
    n = min(len(it["candidate_answers"]) for it in items)
    rows, k = [], 1
    while True:
        k = min(k, n)
        acc = {"majority": 0, "probe-weighted": 0, "combined-weighted": 0}
        for it in items:
            want = norm(it["expected"])
            answers = [norm(a) for a in it["candidate_answers"][:k]]
            combined = score(np.array([features(it, i) for i in range(k)]), w, b)
            acc["majority"] += vote(answers, [1.0] * k) == want
            acc["probe-weighted"] += vote(answers, it["verifier_scores"][:k]) == want
            acc["combined-weighted"] += vote(answers, list(combined)) == want
        rows.append((k, {m: c / len(items) for m, c in acc.items()}))
        if k == n:
            return rows
        k *= 2


def report_test(path, w, b):
    with open(path) as f:
        items = json.load(f)["items"]
    x, y, _ = table(items)
    right = y > 0.5
    print(f"{path}: {len(items)} tasks, {len(y)} candidates, {int(y.sum())} right")
    signals = {
        "probe": x[:, 0],
        "mean log-prob": x[:, 1],
        "length (shorter higher)": -x[:, 2],
        "combined": score(x, w, b),
    }
    for name, s in signals.items():
        print(f"  AUC {name:<24} {auc(list(s), list(right)):.3f}")
    for k, acc in votes(items, w, b):
        print(f"  k={k}: " + ", ".join(f"{m} {v:.3f}" for m, v in acc.items()))


def write(verifier, out, w, b):
    from safetensors.numpy import load_file, save_file
    from safetensors import safe_open

    with safe_open(verifier, "np") as f:
        meta = dict(f.metadata() or {})
    tensors = load_file(verifier)
    tensors["confidence.weight"] = w.astype(np.float32)
    tensors["confidence.bias"] = np.array([b], dtype=np.float32)
    meta["confidence_features"] = f"probe logit, mean token log-prob, tokens / {TOKEN_SCALE:g}"
    save_file(tensors, out, metadata=meta)
    print(f"wrote {out}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--train", required=True)
    ap.add_argument("--test", nargs="*", default=[])
    ap.add_argument("--l2", type=float, nargs="+", default=[0.1, 1.0, 10.0])
    ap.add_argument("--verifier")
    ap.add_argument("--out")
    a = ap.parse_args()
    with open(a.train) as f:
        items = json.load(f)["items"]
    x, y, group = table(items)
    print(f"train: {len(items)} tasks, {len(y)} candidates, {int(y.sum())} right")
    cv = {l2: cross_validated_auc(x, y, group, l2) for l2 in a.l2}
    for l2, v in cv.items():
        print(f"  L2 {l2:g}: cross-validated AUC {v:.3f}")
    l2 = max(cv, key=cv.get)
    w, b = fit(x, y, l2)
    print(f"chosen L2 {l2:g}: weight (probe logit, mean log-prob, tokens/{TOKEN_SCALE:g}) "
          f"{np.round(w, 4).tolist()}, bias {b:.4f}")
    for path in a.test:
        report_test(path, w, b)
    if a.out:
        if not a.verifier:
            ap.error("--out needs --verifier (the probe the weights go beside)")
        write(a.verifier, a.out, w, b)


if __name__ == "__main__":
    main()
