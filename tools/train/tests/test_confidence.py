"""tools/train/confidence.py: AUC and the votes it compares."""

import json
import math

import confidence


def test_auc_counts_pairs_and_ties():
    assert confidence.auc([3, 2, 1], [True, False, False]) == 1.0
    assert confidence.auc([1, 2, 3], [True, False, False]) == 0.0
    assert confidence.auc([1, 1], [True, False]) == 0.5
    assert math.isnan(confidence.auc([1, 2], [True, True]))


def test_votes_break_ties_to_the_first_answer_and_skip_none():
    assert confidence.vote(["7", "8", "8", "7"], [1, 1, 1, 1]) == "7"
    assert confidence.vote(["7", None, "8"], [1, 5, 2]) == "8"
    assert confidence.vote([None, None], [1, 1]) is None


def test_methods_weigh_by_mean_log_prob():
    # Two wrong answers agree; the right one is far more confident per token.
    item = {
        "candidate_answers": ["5", "9", "9", "5"],
        "candidate_tokens": [[1] * 10, [1] * 10, [1] * 10, [1] * 10],
        "candidate_logprobs": [-1.0, -30.0, -30.0, -2.0],
        "verifier_scores": [0.1, 0.9, 0.9, 0.1],
    }
    m = confidence.methods(item, 4)
    assert m["majority"] == "5"  # 2-2 tie: first seen
    assert m["verifier-weighted"] == "9"
    assert m["confidence-weighted"] == "5"
    assert m["most-confident-half"] == "5"
    assert confidence.methods(item, 3)["majority"] == "9"


def test_main_reads_reports(tmp_path, capsys, monkeypatch):
    item = {
        "expected": "5",
        "candidate_answers": ["5", "9"],
        "candidate_tokens": [[1, 2], [1, 2]],
        "candidate_logprobs": [-0.2, -4.0],
        "verifier_scores": [0.4, 0.6],
    }
    report = {"items": [item], "vote_at": [{"candidates": 1, "majority_accuracy": 1.0},
                                            {"candidates": 2, "majority_accuracy": 1.0}]}
    path = tmp_path / "r.json"
    path.write_text(json.dumps(report))
    monkeypatch.setattr("sys.argv", ["confidence.py", str(path)])
    confidence.main()
    out = capsys.readouterr().out
    assert "AUC mean log-prob  1.000" in out and "AUC verifier       0.000" in out
    assert "k=2: majority 1.000" in out and "(report's majority 1.000)" in out
