"""trace_modes.py tells data.py's trace kinds apart and counts them per report."""

import data
import trace_modes


def test_every_generated_trace_kind_is_recognized():
    want = {}
    for style in ("bare", "labeled"):
        train, _ = data.generate(300, 0, 0.0, seed=2, max_value=20, terse_frac=0.3, check_frac=0.5,
                                 terse_style=style)
        for it in train:
            r = it["response"]
            kind = ("checked" if "Check backwards" in r else "prose" if " starts with " in r
                    else "labeled" if style == "labeled" else "terse")
            assert trace_modes.mode_of(r) == kind, r
            want[kind] = want.get(kind, 0) + 1
    assert set(want) == {"checked", "prose", "labeled", "terse"}
    assert trace_modes.mode_of("<think>\n</think>\n\nFinal answer: \\boxed{3}") == "other"


def test_summary_counts_right_candidates_of_hard_tasks_only():
    terse = "<think>\n2 + 3 = 5\n</think>\n\nFinal answer: \\boxed{5}"
    labeled = "<think>\nStart 2\nmore 3: 2 + 3 = 5\n</think>\n\nFinal answer: \\boxed{5}"
    report = {"items": [
        {"difficulty": "hard", "expected": "5", "candidate_texts": [terse, labeled, labeled],
         "candidate_answers": ["5", "5", "6"], "candidate_tokens": [[1] * 10, [1] * 20, [1] * 30]},
        {"difficulty": "easy", "expected": "5", "candidate_texts": [terse], "candidate_answers": ["5"],
         "candidate_tokens": [[1]]},
    ]}
    s = trace_modes.summarize(report)
    assert s["terse"] == {"n": 1, "right": 1, "tokens": 10}
    assert s["labeled"] == {"n": 2, "right": 1, "tokens": 50}
    assert s["checked"]["n"] == s["prose"]["n"] == 0
    assert trace_modes.cell(s["labeled"]) == "2 (0.50 right, 25 tok)"
