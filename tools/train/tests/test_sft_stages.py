"""sft.py's second-stage and early-stop options on tests/fixtures/tiny-qwen2: --init-adapter
starts from a saved adapter (checked with lr 0: the output is the input), refuses one of
another rank, and --stop-at ends a run early in a state --resume continues."""

import os
import subprocess
import sys

import torch
from safetensors.torch import load_file

from conftest import TINY_QWEN2, TRAIN_DIR

DATA = [{"prompt": f"What is {a} + {b}?", "response": f"<think>\n{a} + {b} = {a + b}\n</think>\n\n"
         f"Final answer: \\boxed{{{a + b}}}", "difficulty": "hard"} for a in range(3, 9) for b in (2, 5)]


def sft(tmp_path, *args):
    data = tmp_path / "data.jsonl"
    if not data.exists():
        import json

        data.write_text("".join(json.dumps(d) + "\n" for d in DATA))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, str(TRAIN_DIR / "sft.py"), "--model", str(TINY_QWEN2), "--data", str(data),
           "--batch-size", "4", "--max-len", "64", "--log-every", "1", "--seed", "0", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True)


def weights(folder):
    return load_file(str(folder / "adapter_model.safetensors"))


def test_init_adapter_starts_from_its_weights_and_checks_the_rank(tmp_path):
    first = tmp_path / "first"
    r = sft(tmp_path, "--out", str(first), "--r", "4", "--alpha", "8", "--max-steps", "2", "--lr", "1e-2")
    assert r.returncode == 0, r.stderr[-2000:]

    # lr 0 and no dropout: the second stage must save exactly the weights it started from
    second = tmp_path / "second"
    r = sft(tmp_path, "--out", str(second), "--r", "4", "--alpha", "8", "--max-steps", "1", "--lr", "0",
            "--dropout", "0", "--init-adapter", str(first))
    assert r.returncode == 0, r.stderr[-2000:]
    a, b = weights(first), weights(second)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(k.endswith("lora_B.weight") and a[k].abs().sum() > 0 for k in a), "stage one left B at zero"

    r = sft(tmp_path, "--out", str(tmp_path / "bad"), "--r", "8", "--alpha", "8", "--max-steps", "1",
            "--init-adapter", str(first))
    assert r.returncode != 0 and "adapter_config.json: r=4" in r.stderr and "--r 8" in r.stderr


def test_stop_at_ends_early_and_resume_goes_on(tmp_path):
    out = tmp_path / "run"
    r = sft(tmp_path, "--out", str(out), "--max-steps", "3", "--stop-at", "1")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "step 1/3" in r.stdout and "step 2/3" not in r.stdout
    assert torch.load(out / "trainer_state.pt", weights_only=False)["step"] == 1

    r = sft(tmp_path, "--out", str(out), "--max-steps", "3", "--resume")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resumed from" in r.stdout and "step 3/3" in r.stdout and "step 1/3" not in r.stdout
