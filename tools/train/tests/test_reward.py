"""R_budget edges and answer extraction/normalisation."""

import pytest

from common import BUDGET_TEMPLATE, budget_prompt, budget_reward, extract_answer, is_correct, normalize_answer


def test_budget_reward_edges_p0():
    B, m = 100, 0.2
    assert budget_reward(0, B, m) == 1.0
    assert budget_reward(80, B, m) == 1.0  # exactly (1-m)B
    assert 0.0 < budget_reward(81, B, m) < 1.0
    assert budget_reward(100, B, m) == pytest.approx(0.5)  # middle of the ramp
    assert budget_reward(110, B, m) == pytest.approx(0.25)
    assert budget_reward(120, B, m) == 0.0  # exactly (1+m)B
    assert budget_reward(121, B, m) == 0.0
    assert budget_reward(10_000, B, m) == 0.0


def test_budget_reward_edges_p_nonzero():
    B, m, p = 100, 0.2, 0.3
    assert budget_reward(80, B, m, p) == 1.0
    assert budget_reward(100, B, m, p) == pytest.approx(0.65)
    assert budget_reward(120, B, m, p) == pytest.approx(0.3)
    assert budget_reward(500, B, m, p) == pytest.approx(0.3)
    # monotone non-increasing in L
    vals = [budget_reward(L, B, m, p) for L in range(0, 200)]
    assert all(a >= b for a, b in zip(vals, vals[1:]))


def test_budget_reward_fractional_bounds_and_zero_margin():
    # B=64, m=0.2: ramp from 51.2 to 76.8
    assert budget_reward(51, 64, 0.2) == 1.0
    assert 0.0 < budget_reward(52, 64, 0.2) < 1.0
    assert 0.0 < budget_reward(76, 64, 0.2) < 1.0
    assert budget_reward(77, 64, 0.2) == 0.0
    # m=0: a step at B
    assert budget_reward(64, 64, 0.0, 0.1) == 1.0
    assert budget_reward(65, 64, 0.0, 0.1) == pytest.approx(0.1)


def test_budget_statement_exact():
    assert BUDGET_TEMPLATE.format(B=128) == "\n(Reasoning budget: 128 tokens.)"
    assert budget_prompt("Q?", 64) == "Q?\n(Reasoning budget: 64 tokens.)"
    assert budget_prompt("Q?", None) == "Q?"


def test_extract_answer():
    assert extract_answer("<think>\n1+1\n</think>\n\nFinal answer: \\boxed{2}") == "2"
    assert extract_answer("\\boxed{1} then \\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"
    assert extract_answer("so 3 + 4 = 7") == "7"
    assert extract_answer("we get -12.5 apples") == "-12.5"
    assert extract_answer("no digits here") is None
    assert extract_answer("\\boxed{unclosed 5") == "5"


def test_is_correct_normalisation():
    assert is_correct("Final answer: \\boxed{1,000}", "1000")
    assert is_correct("\\boxed{ Paris. }", "Paris")
    assert is_correct("\\boxed{\\text{blue}}", "blue")
    assert is_correct("\\boxed{14.0}", "14")
    assert is_correct("the total is 42", "42")
    assert not is_correct("\\boxed{41}", "42")
    assert not is_correct("", "42")
    assert normalize_answer("The cow") == "cow"


def test_answer_spec_shared_with_the_engine():
    """tests/fixtures/spec/answers.json: the table src/sched/vote.rs's tests also read."""
    import json
    from pathlib import Path
    table = Path(__file__).resolve().parents[3] / "tests/fixtures/spec/answers.json"
    cases = json.loads(table.read_text())["cases"]
    assert len(cases) >= 20
    for c in cases:
        got = extract_answer(c["text"])
        assert got == c["answer"], (c["text"], got)
        if got is not None:
            assert normalize_answer(got) == c["normalized"], (got, normalize_answer(got))


class _Tok:
    """One token per character: lengths are easy to state."""
    eos_token_id = 0

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [1] * len(text)}


def test_unstated_budget_from_the_shortest_complete_reply():
    from grpo import unstated_budget_rule

    m = 0.5
    rule = unstated_budget_rule("ref", 40, m, _Tok())
    item = {"prompt": "p", "response": "x" * 99, "short_response": "y" * 29}  # 30 tokens with eos
    B = rule(item)
    assert budget_reward(30, B, m) == 1.0 and budget_reward(10, B, m) == 1.0  # shorter earns no more
    assert 0.0 < budget_reward(31, B, m) < 1.0 and budget_reward(90, B, m) == 0.0
    # no short_response: the response, and a direct answer in the think frame the adapter writes
    think = "<think>\nzz\n</think>\n\nFinal answer: \\boxed{7}"
    assert rule({"prompt": "q", "response": think}) == pytest.approx((len(think) + 1) / (1 - m))
    assert rule({"prompt": "q", "response": "zz. \\boxed{7}"}) == pytest.approx(
        (len("<think>\nzz.\n</think>\n\nFinal answer: \\boxed{7}") + 1) / (1 - m))
    assert unstated_budget_rule(None, 40, m, _Tok())(item) == 40
    assert unstated_budget_rule("64", 40, m, _Tok())(item) == 64
    scaled = unstated_budget_rule("ref:0.5", 40, m, _Tok())(item)  # full reward up to 15 tokens
    assert budget_reward(15, scaled, m) == 1.0 and budget_reward(16, scaled, m) < 1.0
    assert 0.0 < budget_reward(30, scaled, m) < 1.0 and budget_reward(45, scaled, m) == 0.0
    for bad in ("short", "ref:0", "ref:1.5", "ref:x", "reference"):
        with pytest.raises(SystemExit, match="expected a token count, 'ref' or 'ref:S'|0 < S <= 1"):
            unstated_budget_rule(bad, 40, m, _Tok())
    with pytest.raises(SystemExit, match="margin below 1"):
        unstated_budget_rule("ref", 40, 1.0, _Tok())


def test_require_box_refuses_an_unboxed_last_number():
    from grpo import reply_correct

    steps = "<think>\n4 * 3 = 12\n12 / 4 = 3\n</think>\n\nFinal answer."
    assert reply_correct(steps, "3")  # the engine's rule: the last number
    assert not reply_correct(steps, "3", require_box=True)
    assert reply_correct(steps[:-1] + ": \\boxed{3}", "3", require_box=True)
    assert not reply_correct(steps[:-1] + ": \\boxed{4}", "3", require_box=True)
    # the box inside an unclosed think block is reasoning, not the answer
    assert not reply_correct("<think>\nGoal: 6 * 3 = 18.\nFinal answer: \\boxed{18}", "18", require_box=True)
    assert not reply_correct("<think>\n\\boxed{18}\n</think>\n\nFinal answer: 18", "18", require_box=True)
    assert reply_correct("<think>\n6 * 3 = 18\n</think>\n\nFinal answer: \\boxed{18}", "18", require_box=True)
    assert reply_correct("6 * 3 = 18. \\boxed{18}", "18", require_box=True)  # chat mode: no think block
