#!/usr/bin/env python3
"""How well each per-candidate signal of a best-of-N `edgereason eval --json` report tells right
candidates from wrong, and what voting with it gives.

Signals: the verifier's score (`verifier_scores`), and the model's own confidence — each
candidate's summed log-probability of its sampled tokens (`candidate_logprobs`) and that sum
per token. For each: AUC over all candidates (right = its answer equals the expected one),
then vote accuracy over the first k streams (k = 1, 2, 4, ..., N) for
  majority                      one vote per candidate (checked against the report's own maj@k),
  weighted by the verifier      its score per candidate (the report's weighted@k),
  weighted by confidence        exp(mean token log-prob) per candidate,
  most confident half           majority among the ceil(k/2) candidates of highest mean log-prob.
Ties go to the answer seen first, as the engine's vote does.

    confidence.py REPORT.json [REPORT.json ...]
"""

from __future__ import annotations

import argparse
import json
import math


def norm(a):
    if a is None:
        return None
    a = a.strip().rstrip(".").replace(",", "").replace("$", "").lower()
    try:
        f = float(a)
        return str(int(f)) if f == int(f) else str(f)
    except ValueError:
        return a


def auc(scores, labels):
    """Probability that a right candidate outscores a wrong one (ties count half)."""
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    if not pos or not neg:
        return float("nan")
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def vote(answers, weights):
    """The answer with the largest summed weight; ties to the first seen; None answers skip."""
    total, order = {}, []
    for a, w in zip(answers, weights):
        if a is None:
            continue
        if a not in total:
            order.append(a)
            total[a] = 0.0
        total[a] += w
    if not order:
        return None
    return max(order, key=lambda a: (total[a], -order.index(a)))


def mean_logprob(item, i):
    n = max(len(item["candidate_tokens"][i]), 1)
    return item["candidate_logprobs"][i] / n


def methods(item, k):
    answers = [norm(a) for a in item["candidate_answers"][:k]]
    conf = [mean_logprob(item, i) for i in range(k)]
    top = sorted(range(k), key=lambda i: -conf[i])[: math.ceil(k / 2)]
    out = {
        "majority": vote(answers, [1.0] * k),
        "confidence-weighted": vote(answers, [math.exp(c) for c in conf]),
        "most-confident-half": vote([answers[i] if i in top else None for i in range(k)], [1.0] * k),
    }
    if item.get("verifier_scores"):
        out["verifier-weighted"] = vote(answers, item["verifier_scores"][:k])
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("reports", nargs="+")
    a = ap.parse_args()
    items, reported = [], {}
    for path in a.reports:
        with open(path) as f:
            r = json.load(f)
        items += r["items"]
        for v in r["vote_at"]:
            reported.setdefault(v["candidates"], []).append((v["majority_accuracy"], len(r["items"])))
    n = min(len(i["candidate_answers"]) for i in items)
    labels, signals = [], {"verifier": [], "sum log-prob": [], "mean log-prob": []}
    for it in items:
        want = norm(it["expected"])
        for i in range(len(it["candidate_answers"])):
            labels.append(norm(it["candidate_answers"][i]) == want)
            signals["sum log-prob"].append(it["candidate_logprobs"][i])
            signals["mean log-prob"].append(mean_logprob(it, i))
            if it.get("verifier_scores"):
                signals["verifier"].append(it["verifier_scores"][i])
    print(f"{len(items)} tasks, {len(labels)} candidates, {sum(labels)} right")
    for name, s in signals.items():
        if len(s) == len(labels):
            print(f"AUC {name:<14} {auc(s, labels):.3f}")
    k = 1
    while True:
        k = min(k, n)
        acc = {}
        for it in items:
            want = norm(it["expected"])
            for m, ans in methods(it, k).items():
                acc[m] = acc.get(m, 0) + (ans == want)
        rep = reported.get(k)
        check = ""
        if rep:
            ref = sum(x * c for x, c in rep) / sum(c for _, c in rep)
            check = f" (report's majority {ref:.3f})"
        row = ", ".join(f"{m} {c / len(items):.3f}" for m, c in acc.items())
        print(f"k={k}: {row}{check}")
        if k == n:
            break
        k *= 2


if __name__ == "__main__":
    main()
