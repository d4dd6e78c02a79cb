#!/usr/bin/env python3
"""The demonstration's results table (markdown) from `edgereason eval --json` reports.

    python tools/train/results.py RUN/eval          # every *.json in the folder

Rows in a fixed order when present (base, sft, sft-cap*, budget, budget*, auto, best*); any other
report is appended. Every figure is read from the engine's reports; the one derived line is the
budget adapter's length and accuracy against the SFT adapter's (`budget` over `sft`).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

LABELS = {
    "base": "base model (int4), no adapter",
    "sft": "+ reasoning adapter (masked-LoRA SFT)",
    "auto": "--reasoning auto (switcher routes; SFT adapter)",
}


def label(name: str, r: dict) -> str:
    if name in LABELS:
        return LABELS[name]
    if m := re.fullmatch(r"sft-cap(\d+)", name):
        return f"SFT adapter, hard cap {m.group(1)} (no RL; control)"
    if name == "budget":
        return "+ budget RL (GRPO), no budget stated, not forced"
    if m := re.fullmatch(r"budget(\d+)", name):
        return f"+ budget RL (GRPO), budget {m.group(1)} stated and forced"
    return name


def order(name: str) -> tuple:
    for i, pat in enumerate([r"base", r"sft", r"sft-cap\d+", r"budget\d*", r"auto", r"best\d+"]):
        if re.fullmatch(pat, name):
            return (i, int((re.findall(r"\d+", name) or ["0"])[0]), name)
    return (99, 0, name)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir", help="folder of eval reports (*.json)")
    a = p.parse_args()
    reports = {}
    for f in sorted(Path(a.dir).glob("*.json")):
        try:
            reports[f.stem] = json.loads(f.read_text())
        except json.JSONDecodeError:
            print(f"<!-- {f.name}: not a finished report, skipped -->")
    if not reports:
        raise SystemExit(f"{a.dir}: no reports")
    any_r = next(iter(reports.values()))
    print(f"Model `{any_r.get('model')}` on {any_r['tasks']} held-out tasks "
          f"({', '.join(f'{k} {v[0]}' for k, v in any_r['by_difficulty'].items())}), "
          f"device {any_r.get('device')}.\n")
    print("| configuration | accuracy | hard acc. | easy acc. | mean tokens | mean tokens (hard) | mean tokens (easy) "
          "| thinking + answer | forced | reasoning on | routing acc. |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name in sorted(reports, key=order):
        r = reports[name]
        bd = r["by_difficulty"]
        h, e = bd.get("hard", [0, float("nan"), float("nan")]), bd.get("easy", [0, float("nan"), float("nan")])
        fmt = lambda v, f: "–" if v != v else format(v, f)  # noqa: E731  (nan: no such tasks)
        ra = r.get("routing_accuracy")
        n = max(i["candidates"] for i in r["items"])
        vote = "weighted" if any(i.get("verifier_scores") for i in r["items"]) else "majority"
        lab = label(name, r) if n == 1 else f"best-of-{n} (SFT adapter, T=0.8), {vote} vote of all {n}"
        print(f"| {lab} | {r['accuracy']:.3f} | {fmt(h[1], '.3f')} | {fmt(e[1], '.3f')} | {r['mean_tokens']:.1f} "
              f"| {fmt(h[2], '.1f')} | {fmt(e[2], '.1f')} "
              f"| {r['mean_thinking_tokens']:.1f} + {r['mean_answer_tokens']:.1f} | {100 * r['forced_fraction']:.0f}% "
              f"| {100 * r['reasoning_fraction']:.0f}% | {'' if ra is None else f'{ra:.3f}'} |")
    if "budget" in reports and "sft" in reports:
        b, f = reports["budget"], reports["sft"]
        print(f"\nBudget RL against SFT, neither stated nor forced: mean tokens {b['mean_tokens'] / f['mean_tokens']:.2f}x "
              f"({b['mean_tokens']:.1f} / {f['mean_tokens']:.1f}), accuracy {100 * (b['accuracy'] - f['accuracy']):+.1f} points.")
    for name in sorted(reports, key=order):
        at = reports[name].get("vote_at", [])
        if len(at) > 1:
            print(f"\nVotes over the first k streams of `{name}` ({reports[name]['tasks']} tasks):\n")
            print("| k | majority | weighted (verifier) |")
            print("|---|---|---|")
            for v in at:
                w = v.get("weighted_accuracy")
                print(f"| {v['candidates']} | {v['majority_accuracy']:.3f} | {'' if w is None else f'{w:.3f}'} |")


if __name__ == "__main__":
    main()
