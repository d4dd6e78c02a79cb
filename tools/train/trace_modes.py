#!/usr/bin/env python3
"""Which kind of trace each hard reply is, and how often each kind is right.

Budget RL can only settle on a way of reasoning the model already writes and gets right, so
this is what decides how short a budget adapter can be: for every candidate of the hard
tasks in `edgereason eval --json` reports, the trace's mode —

    checked   restates the goal or ends with a backward check (data.py --check-frac)
    prose     sentences: `Ben starts with 9 stamps.` / `Gets 8 more: 9 + 8 = 17.`
    labeled   `Start 9` / `more 8: 9 + 8 = 17` (data.py --terse-style labeled)
    terse     bare `9 + 8 = 17` lines
    other     none of these (an empty think block)

— with its count, the share of those that are right, and their mean tokens.

    trace_modes.py runs/x/eval/sft.json [more.json ...] [--markdown]
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict

MODES = ("checked", "prose", "labeled", "terse", "other")
EQUATION = re.compile(r"^\d+ [-+*/] \d+ = \d+(, \d+ [-+*/] \d+ = \d+)?$")


def mode_of(text: str) -> str:
    """The mode of one reply (see the module doc)."""
    think = text.split("</think>", 1)[0]
    lines = [ln.strip() for ln in think.replace("<think>", "").split("\n") if ln.strip()]
    if not lines:
        return "other"
    if lines[0].startswith("Goal:") or any(ln.startswith("Check backwards") for ln in lines):
        return "checked"
    if re.fullmatch(r"Start \d+", lines[0]):
        return "labeled"
    if EQUATION.match(lines[0]):
        return "terse"
    if re.search(r"[A-Za-z]{2}", lines[0]):  # sentences: the start restated, then the steps
        return "prose"
    return "other"


def summarize(report: dict) -> dict:
    """mode -> {"n", "right", "tokens"} over every candidate of the report's hard tasks."""
    out = {m: {"n": 0, "right": 0, "tokens": 0} for m in MODES}
    for it in report["items"]:
        if it.get("difficulty") != "hard":
            continue
        texts, answers = it["candidate_texts"], it["candidate_answers"]
        tokens = it.get("candidate_tokens") or [[]] * len(texts)
        for text, answer, toks in zip(texts, answers, tokens):
            row = out[mode_of(text)]
            row["n"] += 1
            row["right"] += answer is not None and answer == it["expected"]
            row["tokens"] += len(toks)
    return out


def cell(row: dict) -> str:
    if not row["n"]:
        return "–"
    return f"{row['n']} ({row['right'] / row['n']:.2f} right, {row['tokens'] / row['n']:.0f} tok)"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("reports", nargs="+")
    p.add_argument("--markdown", action="store_true", help="one table row per report")
    a = p.parse_args()
    rows = [(path, summarize(json.load(open(path)))) for path in a.reports]
    if a.markdown:
        print("| report | " + " | ".join(MODES) + " |")
        print("|---" * (len(MODES) + 1) + "|")
        for path, s in rows:
            print(f"| {path} | " + " | ".join(cell(s[m]) for m in MODES) + " |")
        return
    for path, s in rows:
        print(path)
        for m in MODES:
            print(f"  {m:8} {cell(s[m])}")


if __name__ == "__main__":
    main()
