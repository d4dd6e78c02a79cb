#!/usr/bin/env python3
"""An independent held-out set: word problems written apart from data.py, never trained on.

data.py's problems are one template family ("Tom has 5 apples. He gets 3 more apples. ...")
with small numbers. A reasoning adapter that only learned that family scores here as the base
model does, so every result is reported on this set too. Its scenarios (shops, buses, money,
distances, tickets, ages, ...) have their own sentence structures and questions, quantities
of 2-3 digits with carries, 2-4 operations, and (in some) a sentence with an irrelevant
number. Nothing in data.py or the training scripts imports this file.

Writes JSONL lines {"prompt", "answer", "difficulty"} ("hard": the word problems; "easy":
one-step arithmetic in other phrasings and short facts not in data.py's table):

    heldout.py --out runs/heldout.jsonl [--n-hard 40] [--n-easy 16] [--seed 7]

`--probe N` writes instead N single arithmetic steps of the sizes these problems need (sums
and differences of 2-3 digit numbers, products of a 2-digit and a 1-digit number, ...), as
bare "What is a op b?" questions: how often a model gets one step right bounds what any
trace of 2-4 such steps can score.
"""

from __future__ import annotations

import argparse
import json
import random

PEOPLE = [("Priya", "she"), ("Marcus", "he"), ("Elena", "she"), ("Jonas", "he"), ("Fatima", "she"),
          ("Diego", "he"), ("Hana", "she"), ("Victor", "he")]

# Sentences with a number that has no bearing on the answer.
DISTRACTORS = [
    "The shop opened {d} years ago.",
    "It was {d} degrees outside that day.",
    "The building has {d} windows.",
    "Their neighbour owns {d} goats.",
]


def _person(rng):
    return rng.choice(PEOPLE)


def bookstore(rng):
    a, b = rng.randint(120, 480), rng.randint(100, 390)
    c = rng.randint(90, a + b - 20)
    return (f"A bookstore received {a} novels on Monday and {b} novels on Tuesday. By Friday it had "
            f"sold {c} of them. How many of those novels are still in the store?", a + b - c)


def bus(rng):
    start = rng.randint(25, 60)
    off1 = rng.randint(5, start - 5)
    on1 = rng.randint(6, 30)
    off2 = rng.randint(3, start - off1 + on1 - 2)
    return (f"A bus leaves the depot with {start} passengers. At the first stop {off1} people get off "
            f"and {on1} get on. At the second stop {off2} people get off. How many passengers are on "
            f"the bus now?", start - off1 + on1 - off2)


def savings(rng):
    name, pron = _person(rng)
    part = rng.choice([(2, "half"), (4, "a quarter"), (5, "a fifth")])
    weekly = part[0] * rng.randint(12, 60)
    weeks = rng.randint(3, 12)
    return (f"{name} earns ${weekly} a week and saves {part[1]} of it. How many dollars does {pron} "
            f"save in {weeks} weeks?", weekly // part[0] * weeks)


def bakery(rng):
    trays, per = rng.randint(6, 18), rng.choice([12, 16, 18, 24, 30])
    sold = rng.randint(trays * per // 3, trays * per - 5)
    return (f"A bakery bakes {trays} trays of muffins with {per} muffins on each tray. During the day "
            f"it sells {sold} muffins. How many muffins are left at closing time?", trays * per - sold)


def cycling(rng):
    name, pron = _person(rng)
    am, pm, days = rng.randint(8, 25), rng.randint(5, 19), rng.randint(4, 14)
    return (f"{name} cycles {am} km every morning and {pm} km every evening. How many kilometres does "
            f"{pron} cycle in {days} days?", (am + pm) * days)


def planting(rng):
    r1, c1, r2, c2 = rng.randint(3, 12), rng.randint(12, 40), rng.randint(2, 9), rng.randint(10, 35)
    return (f"A farmer plants {r1} rows of {c1} tomato plants and {r2} rows of {c2} pepper plants. "
            f"How many plants does the farmer plant altogether?", r1 * c1 + r2 * c2)


def tickets(rng):
    adult, child = rng.randint(11, 25), rng.randint(5, 10)
    na, nc = rng.randint(1, 3), rng.randint(1, 4)
    cost = na * adult + nc * child
    paid = 100 if cost < 100 else 200
    tix = lambda n, kind: f"{n} {kind} ticket" + ("s" if n > 1 else "")  # noqa: E731
    return (f"At the museum an adult ticket costs ${adult} and a child ticket costs ${child}. A family "
            f"buys {tix(na, 'adult')} and {tix(nc, 'child')} and pays with a ${paid} bill. How many "
            f"dollars of change do they get back?", paid - cost)


def classes(rng):
    k, per, extra = rng.randint(4, 9), rng.randint(18, 32), rng.randint(2, 6)
    total = k * per
    return (f"A school has {total} students, split evenly into {k} classes. Later, {extra} new "
            f"students join each class. How many students are in each class now?", per + extra)


def ages(rng):
    name, pron = _person(rng)
    kid, times, later = rng.randint(6, 14), rng.randint(3, 5), rng.randint(5, 20)
    return (f"{name} is {times} times as old as {'her' if pron == 'she' else 'his'} son, who is {kid}. "
            f"How old will {name} be in {later} years?", kid * times + later)


def reading(rng):
    name, pron = _person(rng)
    per, days, extra = rng.randint(20, 45), rng.randint(3, 7), rng.randint(15, 60)
    total = per * days + extra + rng.randint(30, 200)
    return (f"{name}'s book has {total} pages. {pron.capitalize()} reads {per} pages a day for {days} "
            f"days and then {extra} pages on the weekend. How many pages are still unread?",
            total - per * days - extra)


def warehouse(rng):
    start, out_, in_ = rng.randint(300, 900), rng.randint(100, 290), rng.randint(120, 480)
    return (f"A warehouse holds {start} boxes in the morning. A truck takes away {out_} boxes at noon, "
            f"and a delivery brings {in_} boxes in the afternoon. How many boxes does the warehouse "
            f"hold in the evening?", start - out_ + in_)


def fundraiser(rng):
    n, each, goal_extra = rng.randint(12, 35), rng.randint(8, 25), rng.randint(20, 150)
    goal = n * each + goal_extra
    return (f"A club wants to raise ${goal} for a trip. Each of its {n} members collects ${each}. "
            f"How many more dollars does the club need to reach its goal?", goal - n * each)


SCENARIOS = [bookstore, bus, savings, bakery, cycling, planting, tickets, classes, ages, reading,
             warehouse, fundraiser]

EASY_FORMS = [
    ("Add {a} and {b}.", "+"), ("What do you get if you add {a} to {b}?", "+"),
    ("Subtract {b} from {a}.", "-"), ("What is the difference between {a} and {b}?", "-"),
    ("Multiply {a} by {b}.", "*"), ("What is the product of {a} and {b}?", "*"),
]

# Facts absent from data.py's table.
FACTS = [
    ("Which planet is known as the Red Planet?", "Mars"),
    ("How many days are in a week?", "7"),
    ("What gas do plants take in from the air?", "carbon dioxide"),
    ("What is the largest ocean on Earth?", "Pacific"),
    ("How many legs does a spider have?", "8"),
    ("What is frozen water called?", "ice"),
    ("What is the capital of Australia?", "Canberra"),
    ("How many minutes are in an hour?", "60"),
]


def hard_item(rng) -> dict:
    text, ans = rng.choice(SCENARIOS)(rng)
    assert ans >= 0, text
    if rng.random() < 0.3:  # an irrelevant number before the question
        first, q = text.rsplit(". ", 1)
        text = f"{first}. {rng.choice(DISTRACTORS).format(d=rng.randint(3, 90))} {q}"
    return {"prompt": text, "answer": str(ans), "difficulty": "hard"}


def easy_item(rng) -> dict:
    if rng.random() < 0.35:
        q, a = rng.choice(FACTS)
        return {"prompt": q, "answer": a, "difficulty": "easy"}
    form, op = rng.choice(EASY_FORMS)
    a, b = rng.randint(11, 99), rng.randint(11, 99)
    if op == "*":
        b = rng.randint(2, 9)
    if op == "-" and b > a:
        a, b = b, a
    ans = {"+": a + b, "-": a - b, "*": a * b}[op]
    return {"prompt": form.format(a=a, b=b), "answer": str(ans), "difficulty": "easy"}


# (op, range of a, range of b) of the steps the scenarios above take.
PROBE_STEPS = [
    ("+", (100, 480), (100, 390)), ("-", (200, 870), (90, 199)), ("+", (25, 99), (6, 30)),
    ("-", (30, 99), (5, 29)), ("*", (12, 60), (3, 12)), ("*", (3, 12), (12, 40)), ("+", (100, 500), (20, 200)),
]


def probe(n: int, seed: int) -> list[dict]:
    """n distinct single steps, a op b with operands as the held-out problems' steps have."""
    rng = random.Random(seed)
    out, seen = [], set()
    while len(out) < n:
        op, ra, rb = PROBE_STEPS[len(out) % len(PROBE_STEPS)]
        a, b = rng.randint(*ra), rng.randint(*rb)
        q = f"What is {a} {op} {b}?"
        if q not in seen:
            seen.add(q)
            out.append({"prompt": q, "answer": str({"+": a + b, "-": a - b, "*": a * b}[op]), "difficulty": "easy"})
    return out


def generate(n_hard: int, n_easy: int, seed: int) -> list[dict]:
    """Distinct prompts, hard first then easy (as demo.sh's eval sets), deterministic in seed."""
    rng = random.Random(seed)
    out, seen = [], set()
    for make, n in ((hard_item, n_hard), (easy_item, n_easy)):
        made = 0
        for _ in range(100 * (n + 1)):
            if made == n:
                break
            it = make(rng)
            if it["prompt"] not in seen:
                seen.add(it["prompt"])
                out.append(it)
                made += 1
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output JSONL")
    p.add_argument("--n-hard", type=int, default=40)
    p.add_argument("--n-easy", type=int, default=16)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--probe", type=int, default=0, help="write N single arithmetic steps instead (see above)")
    a = p.parse_args()
    items = probe(a.probe, a.seed) if a.probe else generate(a.n_hard, a.n_easy, a.seed)
    with open(a.out, "w") as f:
        for it in items:
            f.write(json.dumps(it) + "\n")
    print(f"wrote {len(items)} items to {a.out}")


if __name__ == "__main__":
    main()
