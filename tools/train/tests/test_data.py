"""The generators' answers, recomputed independently from the prompt text."""

import json
import re

import pytest

import data

HARD_RESPONSE = re.compile(r"<think>\n(.+)\n</think>\n\nFinal answer: \\boxed\{(-?\d+)\}", re.S)
START = re.compile(r"^(\w+) has (\d+) (\w+)\.$")
SENTENCES = [
    (re.compile(r"^(?:He|She) gets (\d+) more (\w+)\.$"), lambda c, k: c + k),
    (re.compile(r"^(?:He|She) gives away (\d+) (\w+)\.$"), lambda c, k: c - k),
    (re.compile(r"^Then the number of (\w+) becomes (\d+) times as large\.$"), None),
    (re.compile(r"^(?:He|She) splits the (\w+) into (\d+) equal groups and keeps one group\.$"), None),
    (re.compile(r"^(?:He|She) buys (\d+) packs with (\d+) (\w+) in each pack\.$"), None),
]


def solve_hard(prompt: str) -> int:
    body, q = prompt.rsplit(" How many ", 1)
    sents = re.split(r"(?<=\.) ", body)
    m = START.match(sents[0])
    assert m, sents[0]
    cur, n_ops = int(m.group(2)), 0
    for s in sents[1:]:
        if (m := SENTENCES[0][0].match(s)):
            cur += int(m.group(1))
        elif (m := SENTENCES[1][0].match(s)):
            cur -= int(m.group(1))
        elif (m := SENTENCES[2][0].match(s)):
            cur *= int(m.group(2))
        elif (m := SENTENCES[3][0].match(s)):
            assert cur % int(m.group(2)) == 0
            cur //= int(m.group(2))
        elif (m := SENTENCES[4][0].match(s)):
            cur += int(m.group(1)) * int(m.group(2))
        else:
            raise AssertionError(f"unparsed sentence: {s!r}")
        assert cur >= 0
        n_ops += 1
    assert 2 <= n_ops <= 4, prompt
    return cur


def check_steps(trace: str):
    """Every `a op b = c` in the trace is true arithmetic."""
    eqs = re.findall(r"(\d+) ([-+*/]) (\d+) = (\d+)", trace)
    assert eqs
    for a, op, b, c in eqs:
        a, b, c = int(a), int(b), int(c)
        assert {"+": a + b, "-": a - b, "*": a * b, "/": a // b if b and a % b == 0 else None}[op] == c


def test_items_are_correct():
    train, test = data.generate(300, 300, 0.2, seed=7)
    facts = {q: a for q, _, a in data.FACTS}
    n_fact = 0
    for it in train + test:
        assert set(it) == {"prompt", "response", "answer", "difficulty"} | ({"short_response"} if it["difficulty"] == "hard" else set())
        if it["difficulty"] == "hard":
            m = HARD_RESPONSE.fullmatch(it["response"])
            assert m, it["response"]
            assert m.group(2) == it["answer"] == str(solve_hard(it["prompt"]))
            assert it["response"] == "<think>\n" + m.group(1) + "\n</think>\n\nFinal answer: \\boxed{" + it["answer"] + "}"
            check_steps(m.group(1))
        else:
            assert "<think>" not in it["response"]
            assert it["response"].endswith("\\boxed{" + it["answer"] + "}")
            m = re.fullmatch(r"(?:What is|Compute|How much is|Quick:) (\d+) ([-+*]) (\d+)(?:\?|\.| = \?)", it["prompt"])
            if m:
                a, op, b = int(m.group(1)), m.group(2), int(m.group(3))
                assert str({"+": a + b, "-": a - b, "*": a * b}[op]) == it["answer"]
            else:
                assert facts[it["prompt"]] == it["answer"]
                n_fact += 1
    assert n_fact > 10


def test_max_value_bounds_every_number():
    train, test = data.generate(400, 400, 0.2, seed=3, max_value=20)
    for it in train + test:
        numbers = [int(x) for x in re.findall(r"\d+", it["prompt"] + " " + it["response"])]
        assert max(numbers, default=0) <= 20, it
        if it["difficulty"] == "hard":
            assert it["answer"] == str(solve_hard(it["prompt"]))


def test_terse_traces_are_shorter_and_still_correct():
    train, _ = data.generate(200, 0, 0.0, seed=4, max_value=20, terse_frac=0.5)
    terse = [it for it in train if "starts with" not in it["response"]]
    assert 50 < len(terse) < 150
    for it in terse:
        m = HARD_RESPONSE.fullmatch(it["response"])
        assert m and m.group(2) == it["answer"] == str(solve_hard(it["prompt"]))
        check_steps(m.group(1))


def test_checked_traces_work_back_to_the_start_and_keep_the_items():
    plain = data.generate(300, 100, 0.2, seed=5, max_value=20, terse_frac=0.2)
    checked = data.generate(300, 100, 0.2, seed=5, max_value=20, terse_frac=0.2, check_frac=0.8)
    # the same items and split: a check changes only the trace
    assert [(it["prompt"], it["answer"]) for it in plain[0] + plain[1]] == \
        [(it["prompt"], it["answer"]) for it in checked[0] + checked[1]]
    hard = [it for it in checked[0] + checked[1] if it["difficulty"] == "hard"]
    with_check = [it for it in hard if "Check backwards:" in it["response"]]
    assert 0.5 * len(hard) < len(with_check) < 0.75 * len(hard)  # 0.8 of the 0.8 prose traces
    for it in with_check:
        m = HARD_RESPONSE.fullmatch(it["response"])
        assert m and m.group(2) == it["answer"] == str(solve_hard(it["prompt"]))
        lines = m.group(1).split("\n")
        assert lines[0].startswith("Goal: ") and lines[-1].endswith(". Correct.")
        check_steps(m.group(1))
        # the check undoes the steps in reverse: from the answer back to the starting count
        back = re.findall(r"(\d+) [-+*/] \d+ = (\d+)", lines[-1])
        start = int(START.match(it["prompt"].split(". ")[0] + ".").group(2))
        assert back[0][0] == it["answer"] and int(back[-1][1]) == start
        assert all(b[1] == c[0] for b, c in zip(back, back[1:]))
        assert lines[-1].endswith(f"back to {start}. Correct.")
    for it in hard:  # the terse trace of the same steps: the shortest complete reply
        short = HARD_RESPONSE.fullmatch(it["short_response"])
        assert short and short.group(2) == it["answer"] and "starts with" not in short.group(1)
        assert len(it["short_response"]) <= len(it["response"])
        check_steps(short.group(1))
    with pytest.raises(ValueError, match="--check-frac needs --style classic"):
        data.generate(10, 0, 0.2, seed=5, check_frac=0.5, style="broad")


def test_labeled_terse_traces_name_each_sentence_and_keep_the_items():
    bare = data.generate(200, 50, 0.2, seed=6, max_value=20, terse_frac=0.4, check_frac=0.5)
    labeled = data.generate(200, 50, 0.2, seed=6, max_value=20, terse_frac=0.4, check_frac=0.5,
                            terse_style="labeled")
    pairs = list(zip(bare[0] + bare[1], labeled[0] + labeled[1]))
    assert all(b["prompt"] == a["prompt"] and b["answer"] == a["answer"] for b, a in pairs)
    words = {"more": 0, "away": 1, "times": 2, "groups": 3, "packs": 4}
    n_terse = 0
    for b, it in pairs:
        if it["difficulty"] != "hard":
            continue
        short = HARD_RESPONSE.fullmatch(it["short_response"])
        assert short and short.group(2) == it["answer"] == str(solve_hard(it["prompt"]))
        lines = short.group(1).split("\n")
        sents = re.split(r"(?<=\.) ", it["prompt"].rsplit(" How many ", 1)[0])
        assert lines[0] == f"Start {START.match(sents[0]).group(2)}" and len(lines) == len(sents)
        for line, sent in zip(lines[1:], sents[1:]):  # each label is its sentence's word and numbers
            label, eq = line.split(": ", 1)
            word, *nums = label.split(" ")
            assert SENTENCES[words[word]][0].match(sent), (line, sent)
            assert [n for n in nums if n != "of"] == re.findall(r"\d+", sent), (line, sent)
        bare_short = HARD_RESPONSE.fullmatch(b["short_response"]).group(1).split("\n")
        assert [ln.split(": ", 1)[1] for ln in lines[1:]] == bare_short  # the same equations
        check_steps(short.group(1))
        n_terse += it["response"] == it["short_response"]
    assert n_terse > 40
    with pytest.raises(ValueError, match="--terse-style labeled needs --style classic"):
        data.generate(10, 0, 0.2, seed=5, terse_style="labeled", style="mixed")


def test_split_and_determinism():
    a = data.generate(100, 100, 0.2, seed=1)
    b = data.generate(100, 100, 0.2, seed=1)
    c = data.generate(100, 100, 0.2, seed=2)
    assert a == b and a != c
    train, test = a
    assert len(train) == 160 and len(test) == 40
    assert not {x["prompt"] for x in train} & {x["prompt"] for x in test}
    assert sum(x["difficulty"] == "hard" for x in test) == 20


def test_load_external_jsonl(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text(json.dumps({"prompt": "Q", "response": "<think>\nhm\n</think>\n\nFinal answer: \\boxed{3}"}) + "\n\n"
                 + json.dumps({"prompt": "Hi", "response": "Hello!"}) + "\n")
    items = data.load_jsonl(str(p))
    assert items[0]["answer"] == "3" and items[0]["difficulty"] == "hard"
    assert items[1]["answer"] is None and items[1]["difficulty"] == "easy"


def test_cli(tmp_path):
    import subprocess
    import sys
    subprocess.run([sys.executable, str(data.__file__), "--out", str(tmp_path), "--n-hard", "10", "--n-easy", "10",
                    "--seed", "3"], check=True, capture_output=True)
    lines = (tmp_path / "train.jsonl").read_text().splitlines() + (tmp_path / "test.jsonl").read_text().splitlines()
    assert len(lines) == 20
    assert all(json.loads(ln)["difficulty"] in ("easy", "hard") for ln in lines)
