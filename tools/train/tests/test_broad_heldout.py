"""The broad training generator and the independent held-out set."""

import random
import re

import broad
import data
import heldout

EQ = re.compile(r"(\d+) ([-+*/]) (\d+) = (\d+)")
OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "/": lambda a, b: a // b}


def test_broad_traces_compute_their_answers():
    rng = random.Random(3)
    for _ in range(400):
        it = broad.gen_hard_broad(rng, 0, terse_frac=0.3)
        m = data_hard(it["response"])
        eqs = EQ.findall(m)
        assert eqs, it
        for a, op, b, c in eqs:
            if op == "/":
                assert int(a) % int(b) == 0, it
            assert OPS[op](int(a), int(b)) == int(c), it
        # The last equation's result is the boxed answer, and numbers stay within 3 digits.
        assert eqs[-1][3] == it["answer"], it
        assert all(int(n) <= 999 for n in re.findall(r"\d+", it["prompt"])), it
        # Every operand of the trace's equations is in the prompt or an earlier result.
        known = set(re.findall(r"\d+", it["prompt"]))
        known |= {w for w, word in (("2", "doubles"), ("3", "triples")) if word in it["prompt"]}
        for a, _, b, c in eqs:
            assert a in known and b in known, (a, b, it)
            known.add(c)


def data_hard(response):
    m = re.match(r"<think>\n(.+)\n</think>\n\nFinal answer: \\boxed\{(\d+)\}$", response, re.S)
    assert m, response
    return m.group(1)


def test_broad_covers_many_shapes_and_distractors():
    rng = random.Random(5)
    items = [broad.gen_hard_broad(rng) for _ in range(300)]
    firsts = {it["prompt"].split()[1] for it in items}
    assert len(firsts) > 15
    assert sum("is not needed" in it["response"] for it in items) > 40
    assert max(int(it["answer"]) for it in items) > 300


def test_styles():
    for style in ("classic", "broad", "mixed"):
        train, test = data.generate(60, 20, 0.1, 1, 20, 0.0, style)
        assert {it["prompt"] for it in train}.isdisjoint(it["prompt"] for it in test)
    try:
        data.generate(10, 0, 0.1, 1, style="other")
    except ValueError:
        pass
    else:
        raise AssertionError("unknown style accepted")


def test_heldout_is_deterministic_correct_and_apart_from_training():
    a, b = heldout.generate(40, 16, 7), heldout.generate(40, 16, 7)
    assert a == b and len(a) == 56 and len({it["prompt"] for it in a}) == 56
    assert [it["difficulty"] for it in a] == ["hard"] * 40 + ["easy"] * 16
    assert all(int(it["answer"]) >= 0 for it in a if it["answer"].isdigit())
    # No held-out sentence occurs in a large sample of the training generators' prompts.
    train, _ = data.generate(2000, 500, 0.0, 1, 20, 0.3, "mixed")
    train_sents = {s for it in train for s in re.split(r"(?<=[.?]) ", it["prompt"])}
    held_sents = {s for it in a for s in re.split(r"(?<=[.?]) ", it["prompt"]) if it["difficulty"] == "hard"}
    assert not train_sents & held_sents, train_sents & held_sents


def test_probe_steps_are_correct_and_sized_like_the_problems():
    items = heldout.probe(42, 7)
    assert items == heldout.probe(42, 7) and len({it["prompt"] for it in items}) == 42
    for it in items:
        a, op, b = re.match(r"What is (\d+) ([-+*]) (\d+)\?$", it["prompt"]).groups()
        assert OPS[op](int(a), int(b)) == int(it["answer"])
    assert sum(int(it["answer"]) >= 100 for it in items) > 20


def test_trace_steps_checks_arithmetic_and_grounding():
    import trace_steps

    steps = trace_steps.steps_of("Tom has 12 cards and buys 3 packs of 5.",
                                 "3 * 5 = 15.\n12 + 15 = 27.\n27 - 4 = 22.")
    assert [(s[4], s[5]) for s in steps] == [(True, True), (True, True), (False, False)]
    report = {"items": [{"prompt": "Tom has 12 cards.", "candidate_texts": ["12 + 3 = 15", "12 * 2 = 25"]}]}
    s = trace_steps.summarize(report)
    assert s["steps"] == 2 and s["right"] == 0.5 and s["by_op"] == {"*": 0.0, "+": 1.0}
