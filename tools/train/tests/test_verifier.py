"""The verifier's engine-candidate input and its validation split."""

import json

import pytest

import common
import verifier


def _report(path, items):
    path.write_text(json.dumps({"items": items}))
    return str(path)


def test_report_candidates_label_each_candidate(tmp_path):
    texts = {1: "<think>\n3 + 4 = 7\n</think>\n\\boxed{7}", 2: "<think>\n3 + 4 = 8\n</think>\n\\boxed{8}"}
    path = _report(tmp_path / "r.json", [
        {"prompt": "3 plus 4?", "expected": "7", "reasoning": True, "candidate_tokens": [[1], [2], [1]]},
        {"prompt": "5 plus 5?", "expected": "10", "reasoning": True, "candidate_tokens": [[2, 2]]},
    ])
    got = verifier.report_candidates([path], common.is_correct, lambda t: texts[t[0]])
    assert got == [("3 plus 4?", [1], 1.0), ("3 plus 4?", [2], 0.0), ("3 plus 4?", [1], 1.0),
                   ("5 plus 5?", [2, 2], 0.0)]


def test_report_candidates_refuse_reports_without_tokens_or_adapter(tmp_path):
    old = _report(tmp_path / "old.json", [{"prompt": "p", "expected": "1", "candidate_texts": ["1"]}])
    with pytest.raises(ValueError, match=r"items\[0\] has no candidate_tokens"):
        verifier.report_candidates([old], common.is_correct, str)
    base = _report(tmp_path / "base.json", [{"prompt": "p", "expected": "1", "reasoning": False,
                                             "candidate_tokens": [[1]]}])
    with pytest.raises(ValueError, match="--reasoning on"):
        verifier.report_candidates([base], common.is_correct, str)


def test_split_keeps_each_prompts_candidates_together():
    prompts = [f"p{i // 4}" for i in range(40)]
    vi, ti = verifier.split_by_prompt(prompts, 0.2, seed=3)
    assert len(vi) == 8 and len(ti) == 32
    assert {prompts[i] for i in vi}.isdisjoint({prompts[i] for i in ti})
    assert sorted(list(vi) + list(ti)) == list(range(40))


def test_probe_scores_raw_hidden_states_with_outlier_dimensions():
    # Hidden states have a few huge dimensions; the label here lives in a small one. The probe
    # trains on standardized features and folds that into its weights, so it must separate
    # fresh raw samples.
    import argparse

    import numpy as np
    import torch

    rng = np.random.default_rng(0)

    def sample(n):
        x = rng.normal(size=(n, 16)).astype(np.float32)
        x[:, 0] = x[:, 0] * 1000 + 5000
        y = (x[:, 3] > 0).astype(np.float32)
        return x, y

    a = argparse.Namespace(seed=0, lr=5e-2, epochs=300)
    x, y = sample(200)
    net = verifier.fit_probe(x, y, 1e-3, a)
    xt, yt = sample(200)
    with torch.no_grad():
        scores = torch.sigmoid(net(torch.from_numpy(xt))).numpy()
    assert common.binary_auc(scores, yt) > 0.95
