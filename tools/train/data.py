#!/usr/bin/env python3
"""Verifiable training data for the reasoning adapter and the switcher.

Writes DIR/train.jsonl and DIR/test.jsonl; one JSON object per line:

    {"prompt": str, "response": str, "answer": str, "difficulty": "easy" | "hard"}

HARD items are multi-step arithmetic word problems (2-4 operations on small integers). Their
response is a reasoning trace, exactly

    "<think>\\n" + steps + "\\n</think>\\n\\nFinal answer: \\\\boxed{" + answer + "}"

EASY items are one-step arithmetic questions and short factual/chat prompts from a built-in table
(capitals, colours, opposites, simple definitions); their response is a short direct answer with
no think block, ending with "\\\\boxed{answer}".

Everything is generated from --seed and is deterministic. The held-out split never shares a
prompt with the train split (facts are split by table entry).

Other data: sft.py (and grpo.py / verifier.py, which need "answer") read any JSONL with at least
"prompt" and "response"; `load_jsonl` fills a missing "answer" from the response's last \\boxed{}
and a missing "difficulty" from whether the response has a <think> block.
"""

from __future__ import annotations

import argparse
import functools
import json
import random
from pathlib import Path

NAMES = ["Tom", "Anna", "Ravi", "Mia", "Leo", "Sara", "Omar", "Lena", "Kai", "Nora", "Ben", "Ivy"]
ITEMS = ["apples", "marbles", "stickers", "books", "coins", "pencils", "cookies", "stamps", "shells", "cards"]

# The sentence templates of hard problems; tests parse them back to recompute the answer.
START = "{name} has {n} {item}."
OPS = {
    "add": "{pron} gets {k} more {item}.",
    "sub": "{pron} gives away {k} {item}.",
    "mul": "Then the number of {item} becomes {k} times as large.",
    "div": "{pron} splits the {item} into {k} equal groups and keeps one group.",
    "addmul": "{pron} buys {a} packs with {b} {item} in each pack.",
}
QUESTION = " How many {item} does {name} have now?"
HE_SHE = {"Tom": "He", "Ravi": "He", "Leo": "He", "Omar": "He", "Kai": "He", "Ben": "He"}

# (question, short answer sentence, answer) — the EASY factual/chat table.
FACTS = [
    ("What is the capital of France?", "The capital of France is Paris.", "Paris"),
    ("What is the capital of Germany?", "The capital of Germany is Berlin.", "Berlin"),
    ("What is the capital of Italy?", "The capital of Italy is Rome.", "Rome"),
    ("What is the capital of Spain?", "The capital of Spain is Madrid.", "Madrid"),
    ("What is the capital of Japan?", "The capital of Japan is Tokyo.", "Tokyo"),
    ("What is the capital of Egypt?", "The capital of Egypt is Cairo.", "Cairo"),
    ("What is the capital of Canada?", "The capital of Canada is Ottawa.", "Ottawa"),
    ("What is the capital of Kenya?", "The capital of Kenya is Nairobi.", "Nairobi"),
    ("What is the capital of Peru?", "The capital of Peru is Lima.", "Lima"),
    ("What is the capital of Norway?", "The capital of Norway is Oslo.", "Oslo"),
    ("What is the capital of Greece?", "The capital of Greece is Athens.", "Athens"),
    ("What is the capital of Portugal?", "The capital of Portugal is Lisbon.", "Lisbon"),
    ("What colour is the sky on a clear day?", "The sky is blue.", "blue"),
    ("What colour is grass?", "Grass is green.", "green"),
    ("What colour is snow?", "Snow is white.", "white"),
    ("What colour is a ripe banana?", "A ripe banana is yellow.", "yellow"),
    ("What colour is coal?", "Coal is black.", "black"),
    ("What colour do you get by mixing red and white?", "Red and white make pink.", "pink"),
    ("What colour do you get by mixing blue and yellow?", "Blue and yellow make green.", "green"),
    ("What colour is a ripe tomato?", "A ripe tomato is red.", "red"),
    ("What is the opposite of hot?", "The opposite of hot is cold.", "cold"),
    ("What is the opposite of up?", "The opposite of up is down.", "down"),
    ("What is the opposite of big?", "The opposite of big is small.", "small"),
    ("What is the opposite of fast?", "The opposite of fast is slow.", "slow"),
    ("What is the opposite of open?", "The opposite of open is closed.", "closed"),
    ("What is the opposite of day?", "The opposite of day is night.", "night"),
    ("What do you call a baby cat?", "A baby cat is a kitten.", "kitten"),
    ("What do you call a baby dog?", "A baby dog is a puppy.", "puppy"),
    ("What do you call a baby cow?", "A baby cow is a calf.", "calf"),
    ("What do you call frozen water?", "Frozen water is ice.", "ice"),
    ("What is the word for a place where books are lent?", "That is a library.", "library"),
    ("What is the word for a doctor for animals?", "That is a vet.", "vet"),
    ("What gas do plants take in from the air?", "Plants take in carbon dioxide.", "carbon dioxide"),
    ("Which planet do we live on?", "We live on Earth.", "Earth"),
    ("How many days are in a week?", "A week has 7 days.", "7"),
    ("How many legs does a spider have?", "A spider has 8 legs.", "8"),
    ("How many months are in a year?", "A year has 12 months.", "12"),
    ("How many sides does a triangle have?", "A triangle has 3 sides.", "3"),
    ("Say hello in French.", "Hello in French is bonjour.", "bonjour"),
    ("Say thank you in Spanish.", "Thank you in Spanish is gracias.", "gracias"),
    ("Reply with the word yes.", "Yes.", "yes"),
    ("What is the first letter of the English alphabet?", "The first letter is A.", "A"),
    ("What animal says moo?", "A cow says moo.", "cow"),
    ("What animal says woof?", "A dog says woof.", "dog"),
    ("Which season comes after winter?", "Spring comes after winter.", "spring"),
    ("Which day comes after Monday?", "Tuesday comes after Monday.", "Tuesday"),
]

EASY_ARITH = ["What is {a} {op} {b}?", "Compute {a} {op} {b}.", "How much is {a} {op} {b}?", "Quick: {a} {op} {b} = ?"]
ARITH_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def think_response(steps: list[str], answer: str) -> str:
    return "<think>\n" + "\n".join(steps) + "\n</think>\n\nFinal answer: \\boxed{" + answer + "}"


def direct_response(sentence: str, answer: str) -> str:
    return sentence + " \\boxed{" + answer + "}"


def gen_hard(rng: random.Random, max_value: int = 0, terse_frac: float = 0.0, check_frac: float = 0.0,
             terse_style: str = "bare") -> dict:
    """A 2-4 step word problem; each step is one line `a op b = c` of the trace.

    max_value > 0 keeps every number in the problem and every intermediate result at or below it
    (a 135M model cannot add two-digit numbers reliably; the reasoning has to be within its reach).
    With probability terse_frac the trace is terse: the equations only, about 2/3 of the tokens.
    Otherwise, with probability check_frac, the prose trace also restates the goal and ends with
    a check that works the steps backwards to the start: the redundancy of distilled reasoning
    traces, which budget RL is meant to remove. Real reasoning-trace sets vary in length like this;
    budget RL needs that spread to select from. "short_response" is always the terse trace, the
    shortest complete one (grpo.py's `--unstated-budget ref`).

    terse_style "labeled" writes the terse trace with the start and, before each equation, the
    word and number of the sentence it executes (`Start 9`, `more 8: 9 + 8 = 17`): a 135M model's
    bare-equation traces lose their place among the prompt's sentences (RESULTS.md), and a
    label costs 2-4 tokens a step where the prose costs about 7.
    """
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    pron = HE_SHE.get(name, "She")
    top = max_value or 10**9
    cur = first = rng.randint(2, min(20, max(2, top // 2)))
    text = [START.format(name=name, n=cur, item=item)]
    steps = [f"{name} starts with {cur} {item}."]
    terse, back = [], []  # back: each step undone, `after inverse-op k = before`
    labels = [f"Start {cur}"]  # the labeled terse trace: labels[i] + terse[i - 1]
    for _ in range(rng.randint(2, 4)):
        choices = (["add"] if cur < top else []) + (["sub"] if cur > 1 else [])
        if cur * 2 <= top:
            choices.append("mul")
        if cur + 4 <= top:
            choices.append("addmul")
        divisors = [k for k in (2, 3, 4, 5) if cur % k == 0]
        if divisors:
            choices.append("div")
        op = rng.choice(choices)
        if op == "add":
            k = rng.randint(1, min(20, top - cur))
            text.append(OPS[op].format(pron=pron, k=k, item=item))
            steps.append(f"Gets {k} more: {cur} + {k} = {cur + k}.")
            terse.append(f"{cur} + {k} = {cur + k}")
            labels.append(f"more {k}: ")
            back.append(f"{cur + k} - {k} = {cur}")
            cur += k
        elif op == "sub":
            k = rng.randint(1, cur - 1)
            text.append(OPS[op].format(pron=pron, k=k, item=item))
            steps.append(f"Gives away {k}: {cur} - {k} = {cur - k}.")
            terse.append(f"{cur} - {k} = {cur - k}")
            labels.append(f"away {k}: ")
            back.append(f"{cur - k} + {k} = {cur}")
            cur -= k
        elif op == "mul":
            k = rng.randint(2, max(2, min(4, top // cur)))
            text.append(OPS[op].format(k=k, item=item))
            steps.append(f"{k} times as many: {cur} * {k} = {cur * k}.")
            terse.append(f"{cur} * {k} = {cur * k}")
            labels.append(f"times {k}: ")
            back.append(f"{cur * k} / {k} = {cur}")
            cur *= k
        elif op == "div":
            k = rng.choice(divisors)
            text.append(OPS[op].format(pron=pron, k=k, item=item))
            steps.append(f"Keeps one of {k} groups: {cur} / {k} = {cur // k}.")
            terse.append(f"{cur} / {k} = {cur // k}")
            labels.append(f"groups {k}: ")
            back.append(f"{cur // k} * {k} = {cur}")
            cur //= k
        else:  # addmul: two arithmetic operations in one step
            a = rng.randint(2, max(2, min(6, (top - cur) // 2)))
            b = rng.randint(2, max(2, min(9, (top - cur) // a)))
            text.append(OPS[op].format(pron=pron, a=a, b=b, item=item))
            steps.append(f"Buys {a} packs of {b}: {a} * {b} = {a * b}, and {cur} + {a * b} = {cur + a * b}.")
            terse.append(f"{a} * {b} = {a * b}, {cur} + {a * b} = {cur + a * b}")
            labels.append(f"packs {a} of {b}: ")
            back.append(f"{cur + a * b} - {a * b} = {cur}")
            cur += a * b
    prompt = " ".join(text) + QUESTION.format(item=item, name=name)
    ans = str(cur)
    if terse_style == "labeled":
        terse = labels[:1] + [label + eq for label, eq in zip(labels[1:], terse)]
    elif terse_style != "bare":
        raise ValueError(f"--terse-style {terse_style}: expected bare or labeled")
    if terse_frac and rng.random() < terse_frac:
        steps = terse
    elif check_frac and random.Random(prompt).random() < check_frac:
        # Its own stream, seeded by the prompt: adding checks leaves the items themselves as
        # they were (the same seed gives the same prompts and the same held-out split).
        goal = f"Goal: {name}'s {item} at the end."
        check = f"Check backwards: {', '.join(reversed(back))}, back to {first}. Correct."
        steps = [goal] + steps + [check]
    return {"prompt": prompt, "response": think_response(steps, ans), "answer": ans, "difficulty": "hard",
            "short_response": think_response(terse, ans)}


def gen_easy_arith(rng: random.Random, max_value: int = 0) -> dict:
    op = rng.choice(list(ARITH_OPS))
    top = max_value or 100
    a, b = rng.randint(1, top // 2), rng.randint(1, top // 2)
    if op == "*":
        a = rng.randint(2, min(12, max(2, top // 2)))
        b = rng.randint(2, min(12, max(2, top // a)))
    if op == "-" and b > a:
        a, b = b, a
    ans = str(ARITH_OPS[op](a, b))
    return {"prompt": rng.choice(EASY_ARITH).format(a=a, op=op, b=b), "response": direct_response(f"{a} {op} {b} = {ans}.", ans),
            "answer": ans, "difficulty": "easy"}


def fact_item(fact) -> dict:
    q, sentence, ans = fact
    return {"prompt": q, "response": direct_response(sentence, ans), "answer": ans, "difficulty": "easy"}


def hard_generator(style: str):
    """The hard-item generator of --style: classic (gen_hard), broad (broad.py), or mixed."""
    from broad import gen_hard_broad

    def broad(rng, max_value=0, terse_frac=0.0):
        return gen_hard_broad(rng, max_value if max_value >= 100 else 0, terse_frac)

    if style == "classic":
        return gen_hard
    if style == "broad":
        return broad
    if style == "mixed":  # a quarter classic (max_value applies), the rest broad
        return lambda rng, *a: (gen_hard if rng.random() < 0.25 else broad)(rng, *a)
    raise ValueError(f"--style {style}: expected classic, broad or mixed")


def generate(n_hard: int, n_easy: int, test_frac: float, seed: int, max_value: int = 0, terse_frac: float = 0.0,
             style: str = "classic", check_frac: float = 0.0, terse_style: str = "bare"):
    """Return (train, test) item lists, deterministic in the arguments (max_value, check_frac,
    terse_style: see gen_hard; style: see hard_generator; broad items ignore max_value <= 20 as too
    small for them)."""
    for flag, value in (("--check-frac", check_frac), ("--terse-style labeled", terse_style != "bare")):
        if value and style != "classic":
            raise ValueError(f"{flag} needs --style classic (got {style}): broad.py's traces have no such form")
    rng = random.Random(seed)
    if check_frac or terse_style != "bare":
        hard = functools.partial(gen_hard, check_frac=check_frac, terse_style=terse_style)
    else:
        hard = hard_generator(style)
    facts = list(FACTS)
    rng.shuffle(facts)
    n_fact_test = max(1, round(len(facts) * test_frac))
    fact_split = {"test": facts[:n_fact_test], "train": facts[n_fact_test:]}
    n_test_hard = round(n_hard * test_frac)
    n_test_easy = round(n_easy * test_frac)
    seen: set[str] = set()
    out = {}
    # test first, so the train split is what avoids collisions
    for split, nh, ne in (("test", n_test_hard, n_test_easy), ("train", n_hard - n_test_hard, n_easy - n_test_easy)):
        items = []
        for gen, n in ((hard, nh), (None, ne)):
            made, tries = 0, 0
            fact_pool = list(fact_split[split])
            while made < n and tries < 100 * (n + 1):
                tries += 1
                if gen is not None:
                    it = gen(rng, max_value, terse_frac)
                elif fact_pool and rng.random() < 0.35:  # ~1/3 of easy items are facts
                    it = fact_item(fact_pool.pop(rng.randrange(len(fact_pool))))
                else:
                    it = gen_easy_arith(rng, max_value)
                if it["prompt"] in seen:
                    continue
                seen.add(it["prompt"])
                items.append(it)
                made += 1
        rng.shuffle(items)
        out[split] = items
    return out["train"], out["test"]


def load_jsonl(path: str, need_answer: bool = False) -> list[dict]:
    """Read prompt/response JSONL (ours or any other reasoning-trace set)."""
    from common import extract_answer

    items = []
    with open(path) as f:
        for ln, line in enumerate(f, 1):
            if not line.strip():
                continue
            d = json.loads(line)
            if "prompt" not in d or "response" not in d:
                raise ValueError(f"{path}:{ln}: need 'prompt' and 'response' keys")
            if "answer" not in d:
                a = extract_answer(d["response"]) if "\\boxed{" in d["response"] else None
                if a is None and need_answer:
                    raise ValueError(f"{path}:{ln}: no 'answer' and no \\boxed{{}} in the response")
                d["answer"] = a
            d.setdefault("difficulty", "hard" if "<think>" in d["response"] else "easy")
            items.append(d)
    return items


def write_jsonl(path, items):
    with open(path, "w") as f:
        for it in items:
            f.write(json.dumps(it, ensure_ascii=False) + "\n")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output directory (train.jsonl, test.jsonl)")
    p.add_argument("--n-hard", type=int, default=2000, help="hard (multi-step) items in total")
    p.add_argument("--n-easy", type=int, default=2000, help="easy items in total (arithmetic + facts)")
    p.add_argument("--test-frac", type=float, default=0.1, help="held-out fraction")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-value", type=int, default=0,
                   help="cap on every number and intermediate result (0 = none); 20 suits ~100M-parameter models")
    p.add_argument("--terse-frac", type=float, default=0.0,
                   help="fraction of hard traces written as bare equations (a spread of lengths for budget RL)")
    p.add_argument("--terse-style", default="bare", choices=["bare", "labeled"],
                   help="terse traces: bare equations, or each labeled with its sentence's word and number "
                        "(`more 8: 9 + 8 = 17`; classic style only)")
    p.add_argument("--check-frac", type=float, default=0.0,
                   help="fraction of the other (prose) hard traces that restate the goal and end with a "
                        "backward check (classic style only)")
    p.add_argument("--style", default="classic", choices=["classic", "broad", "mixed"],
                   help="hard items: classic (one template family), broad (broad.py: many shapes and "
                        "phrasings, 3-digit numbers, distractors) or mixed (a quarter classic)")
    a = p.parse_args()
    train, test = generate(a.n_hard, a.n_easy, a.test_frac, a.seed, a.max_value, a.terse_frac, a.style,
                           a.check_frac, a.terse_style)
    Path(a.out).mkdir(parents=True, exist_ok=True)
    write_jsonl(Path(a.out) / "train.jsonl", train)
    write_jsonl(Path(a.out) / "test.jsonl", test)
    for name, items in (("train", train), ("test", test)):
        nh = sum(it["difficulty"] == "hard" for it in items)
        print(f"{name}: {len(items)} items ({nh} hard, {len(items) - nh} easy) -> {Path(a.out) / (name + '.jsonl')}")


if __name__ == "__main__":
    main()
