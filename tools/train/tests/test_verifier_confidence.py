"""tools/train/verifier_confidence.py: the features, the fit and the file it writes."""

import json
import math

import numpy as np
from safetensors.numpy import load_file, save_file

import verifier_confidence as vc


def _item(expected, answers, lengths, logprobs, scores):
    return {
        "expected": expected,
        "candidate_answers": answers,
        "candidate_tokens": [[1] * n for n in lengths],
        "candidate_logprobs": logprobs,
        "verifier_scores": scores,
    }


def _items(n):
    """Right candidates are confident per token; the probe says nothing."""
    rng = np.random.default_rng(0)
    out = []
    for t in range(n):
        answers, lps, lengths = [], [], []
        for i in range(4):
            right = rng.random() < 0.5
            answers.append(str(t) if right else str(t + 1000 + i))
            lengths.append(int(rng.integers(20, 60)))
            lps.append(lengths[-1] * (-0.05 if right else -0.4) + float(rng.normal(0, 0.5)))
        out.append(_item(str(t), answers, lengths, lps, list(rng.uniform(0.2, 0.8, 4))))
    return out


def test_features_are_the_engines_three_numbers():
    it = _item("7", ["7"], [32], [-8.0], [0.75])
    logit, mean_lp, tokens = vc.features(it, 0)
    assert math.isclose(logit, math.log(3.0))
    assert mean_lp == -0.25 and tokens == 0.5


def test_fit_finds_the_signal_and_votes_with_it():
    x, y, group = vc.table(_items(60))
    w, b = vc.fit(x, y, 0.1)
    assert w[1] > 1.0 and abs(w[0]) < abs(w[1])
    assert vc.cross_validated_auc(x, y, group, 0.1) > 0.9
    rows = dict(vc.votes(_items(60), w, b))
    assert rows[4]["combined-weighted"] >= rows[4]["majority"]


def test_write_keeps_the_probe_and_adds_the_layer(tmp_path):
    probe = tmp_path / "verifier.safetensors"
    meta = {"format": "edgereason-verifier-v1", "hidden_size": "4", "prompt": "ok?"}
    save_file({"linear.weight": np.ones((1, 4), np.float32),
               "linear.bias": np.zeros(1, np.float32)}, str(probe), metadata=meta)
    out = tmp_path / "out.safetensors"
    vc.write(str(probe), str(out), np.array([0.5, 10.0, -0.2]), 1.5)
    t = load_file(str(out))
    assert t["confidence.weight"].tolist() == [0.5, 10.0, np.float32(-0.2)]
    assert t["confidence.bias"].tolist() == [1.5]
    assert t["linear.weight"].shape == (1, 4)
    from safetensors import safe_open
    with safe_open(str(out), "np") as f:
        assert f.metadata()["prompt"] == "ok?"


def test_main_reports_a_test_set(tmp_path, capsys, monkeypatch):
    train, test = tmp_path / "train.json", tmp_path / "test.json"
    train.write_text(json.dumps({"items": _items(40)}))
    test.write_text(json.dumps({"items": _items(20)}))
    monkeypatch.setattr("sys.argv", ["vc", "--train", str(train), "--test", str(test)])
    vc.main()
    out = capsys.readouterr().out
    assert "AUC combined" in out and "k=4: majority" in out
