"""results.py: row order and labels, and the budget-over-SFT line, from engine-shaped reports."""

import json
import subprocess
import sys

from conftest import TRAIN_DIR


def report(acc, tokens, thinking, forced=0.0, candidates=1):
    return {"accuracy": acc, "tasks": 4, "model": "m", "device": "d", "mean_tokens": tokens,
            "mean_thinking_tokens": thinking, "mean_answer_tokens": tokens - thinking,
            "forced_fraction": forced, "reasoning_fraction": 1.0, "routing_accuracy": None,
            "by_difficulty": {"hard": [2, acc, tokens + 10], "easy": [2, acc, tokens - 10]},
            "items": [{"candidates": candidates, "verifier_scores": []}]}


def test_rows_in_order_and_the_budget_line(tmp_path):
    reports = {"budget80": report(0.5, 30, 25, 0.25), "sft": report(0.75, 100, 90), "budget": report(0.7, 40, 35),
               "base": report(0.25, 120, 0), "sft-cap40": report(0.3, 50, 40, 0.5)}
    for name, r in reports.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(r))
    (tmp_path / "half.json").write_text("{")  # an unfinished report is skipped, not fatal
    out = subprocess.run([sys.executable, str(TRAIN_DIR / "results.py"), str(tmp_path)],
                         capture_output=True, text=True, check=True).stdout
    rows = [ln.split(" | ")[0].lstrip("| ") for ln in out.splitlines() if ln.startswith("| ") and "---" not in ln][1:]
    assert rows == ["base model (int4), no adapter", "+ reasoning adapter (masked-LoRA SFT)",
                    "SFT adapter, hard cap 40 (no RL; control)",
                    "+ budget RL (GRPO), no budget stated, not forced",
                    "+ budget RL (GRPO), budget 80 stated and forced"]
    assert "| 0.700 | 0.700 | 0.700 | 40.0 | 50.0 | 30.0 | 35.0 + 5.0 | 0% |" in out
    assert "mean tokens 0.40x (40.0 / 100.0), accuracy -5.0 points" in out
    assert "half.json: not a finished report" in out
