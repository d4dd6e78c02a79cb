#!/usr/bin/env python3
"""The evaluation tasks of data.py's held-out split: the first N hard and M easy items of
test.jsonl, in its order, as `edgereason eval` task lines (prompt, answer, difficulty).

    python tools/train/eval_set.py RUN/data/test.jsonl RUN/data/eval.jsonl [--hard 24] [--easy 16]
"""

from __future__ import annotations

import argparse
import json


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("test", help="data.py's test.jsonl")
    p.add_argument("out", help="task file to write")
    p.add_argument("--hard", type=int, default=24)
    p.add_argument("--easy", type=int, default=16)
    a = p.parse_args()
    items = [json.loads(line) for line in open(a.test) if line.strip()]
    pick = [i for i in items if i["difficulty"] == "hard"][: a.hard] + [i for i in items if i["difficulty"] == "easy"][: a.easy]
    with open(a.out, "w") as f:
        for i in pick:
            f.write(json.dumps({"prompt": i["prompt"], "answer": i["answer"], "difficulty": i["difficulty"]}) + "\n")


if __name__ == "__main__":
    main()
