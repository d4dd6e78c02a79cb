#!/usr/bin/env python3
"""Where reasoning traces go wrong: every `a op b = c` step in `edgereason eval --json` reports.

For each report, over all candidates' replies: how many steps, the fraction whose arithmetic
is right (c really is a op b), by operator and by the size of the result, and the fraction
whose operands are grounded (each is a number of the prompt or an earlier step's result).
A task needs all of its 2-4 steps right and grounded, so a step accuracy s bounds its
accuracy near s^steps: this is how a small model's arithmetic caps what a trace can reach.

    trace_steps.py runs/x/eval-heldout/sft.json [more.json ...] [--markdown]
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict

STEP = re.compile(r"(\d+)\s*([-+*/x×])\s*(\d+)\s*=\s*(\d+)")
OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "x": lambda a, b: a * b,
       "×": lambda a, b: a * b, "/": lambda a, b: a // b if b and a % b == 0 else None}


def steps_of(prompt: str, text: str):
    """(op, a, b, c, right, grounded) for each step of one reply, in order."""
    known = set(re.findall(r"\d+", prompt))
    out = []
    for a, op, b, c in STEP.findall(text):
        want = OPS[op](int(a), int(b))
        out.append((op, int(a), int(b), int(c), want == int(c), a in known and b in known))
        known.add(c)
    return out


def summarize(report: dict) -> dict:
    n = right = grounded = 0
    by_op, by_size = defaultdict(lambda: [0, 0]), defaultdict(lambda: [0, 0])
    for item in report["items"]:
        for text in item.get("candidate_texts", []):
            for op, a, b, c, ok, gr in steps_of(item["prompt"], text):
                n += 1
                right += ok
                grounded += gr
                key = "*" if op in "x×" else op
                by_op[key][0] += 1
                by_op[key][1] += ok
                size = f"{len(str(max(a, b)))} digits"
                by_size[size][0] += 1
                by_size[size][1] += ok
    return {
        "steps": n,
        "right": right / n if n else None,
        "grounded": grounded / n if n else None,
        "by_op": {k: v[1] / v[0] for k, v in sorted(by_op.items())},
        "by_operand_size": {k: v[1] / v[0] for k, v in sorted(by_size.items())},
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("reports", nargs="+")
    p.add_argument("--markdown", action="store_true", help="one table row per report")
    a = p.parse_args()
    if a.markdown:
        print("| report | steps | arithmetic right | grounded | right by op | right by operand size |")
        print("|---|---|---|---|---|---|")
    for path in a.reports:
        s = summarize(json.load(open(path)))
        if a.markdown:
            f = lambda d: ", ".join(f"{k} {v:.2f}" for k, v in d.items())  # noqa: E731
            r = "–" if s["right"] is None else f"{s['right']:.3f}"
            g = "–" if s["grounded"] is None else f"{s['grounded']:.3f}"
            print(f"| {path} | {s['steps']} | {r} | {g} | {f(s['by_op'])} | {f(s['by_operand_size'])} |")
        else:
            print(path, json.dumps(s))


if __name__ == "__main__":
    main()
