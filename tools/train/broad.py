"""Broad hard items for data.py --style broad: word problems of many shapes and phrasings.

data.py's classic items are one template family with small numbers, and an adapter trained
on them reasons only there. These cover what users ask: several problem shapes (running
totals, rates over time, groups of equal size, two kinds added, change from a payment,
comparisons, equal shares), each with several phrasings of every sentence and question,
quantities up to 3 digits (carries and borrows), 2-5 operations, and distractor sentences
whose numbers the trace says it does not need. heldout.py is written apart from this file;
none of its sentences occur here.

Each generator returns (problem sentences, question, trace steps, terse steps, answer); the
trace has one line per operation, `label: a op b = c.`
"""

from __future__ import annotations

import random

NAMES = [("Aisha", "she"), ("Bruno", "he"), ("Chen", "he"), ("Dana", "she"), ("Emil", "he"),
         ("Freya", "she"), ("Gabe", "he"), ("Ines", "she"), ("Jamal", "he"), ("Keiko", "she"),
         ("Luis", "he"), ("Maya", "she"), ("Nikhil", "he"), ("Olga", "she"), ("Pavel", "he"),
         ("Rosa", "she"), ("Sven", "he"), ("Tara", "she"), ("Uma", "she"), ("Wes", "he")]
THINGS = ["eggs", "bottles", "seeds", "photos", "beads", "nails", "postcards", "bricks", "candles",
          "badges", "buttons", "tiles", "oranges", "envelopes", "screws", "ribbons", "jars", "plates"]
PLACES = ["a farm shop", "a garage", "a craft club", "a school kitchen", "a hardware store", "a florist",
          "a library", "a sports club"]

DISTRACT = [
    "{Pron} is {d} years old.", "The trip there takes {d} minutes.", "{Pron} lives at number {d}.",
    "Outside it is {d} degrees.", "The radio plays song number {d}.",
]


def _who(rng):
    name, pron = rng.choice(NAMES)
    return name, pron, {"she": "her", "he": "his"}[pron]


def _op(a: int, sym: str, b: int) -> int:
    return {"+": a + b, "-": a - b, "*": a * b, "/": a // b}[sym]


def _eq(label: str, a: int, sym: str, b: int) -> tuple[str, str, int]:
    c = _op(a, sym, b)
    return f"{label}: {a} {sym} {b} = {c}.", f"{a} {sym} {b} = {c}", c


def running_total(rng, top):
    """Start with some, then 2-5 events that add, remove, multiply or share."""
    name, pron, poss = _who(rng)
    thing = rng.choice(THINGS)
    cur = rng.randint(12, min(400, top // 2))
    text = [rng.choice([f"{name} has {cur} {thing}.", f"{name} starts the day with {cur} {thing}.",
                        f"There are {cur} {thing} in {name}'s box."])]
    steps, terse = [f"Start: {cur}."], []
    for _ in range(rng.randint(2, 5)):
        kinds = ["add"] * (cur < top - 10) + ["sub"] * (cur > 10) + ["mul"] * (cur * 2 <= top)
        kinds += ["share"] * any(cur % k == 0 for k in (2, 3, 4, 5))
        kinds += ["crates"] * (cur + 20 <= top)
        kind = rng.choice(kinds)
        if kind == "add":
            k = rng.randint(5, min(250, top - cur))
            text.append(rng.choice([f"{pron.capitalize()} buys {k} more.", f"A friend gives {name} another {k} {thing}.",
                                    f"Then {k} {thing} are added.", f"{pron.capitalize()} finds {k} extra {thing}."]))
            line = _eq(f"{k} more", cur, "+", k)
        elif kind == "sub":
            k = rng.randint(3, cur - 1)
            text.append(rng.choice([f"{pron.capitalize()} sells {k} of them.", f"{k} of the {thing} get lost.",
                                    f"{name} uses up {k} {thing}.", f"{pron.capitalize()} donates {k} {thing} to a school."]))
            line = _eq(f"{k} fewer", cur, "-", k)
        elif kind == "mul":
            k = rng.choice([k for k in (2, 3, 4, 5) if cur * k <= top])
            word = {2: "doubles", 3: "triples"}.get(k)
            text.append(f"The number of {thing} {word}." if word and rng.random() < 0.5
                        else f"By the end of the month {pron} has {k} times as many {thing}.")
            line = _eq(f"{k} times as many", cur, "*", k)
        elif kind == "share":
            k = rng.choice([k for k in (2, 3, 4, 5) if cur % k == 0])
            text.append(rng.choice([f"{pron.capitalize()} shares them equally among {k} people, {name} included, and keeps one share.",
                                    f"{name} splits the {thing} into {k} equal piles and keeps one pile."]))
            line = _eq(f"one of {k} equal parts", cur, "/", k)
        else:
            a = rng.randint(2, 9)
            b = rng.randint(2, max(2, min(40, (top - cur) // a)))
            text.append(rng.choice([f"{pron.capitalize()} gets {a} crates with {b} {thing} in each.",
                                    f"Then {a} boxes of {b} {thing} arrive."]))
            s1, t1, prod = _eq(f"{a} lots of {b}", a, "*", b)
            steps.append(s1)
            terse.append(t1)
            line = _eq("added", cur, "+", prod)
        steps.append(line[0])
        terse.append(line[1])
        cur = line[2]
    question = rng.choice([f"How many {thing} does {name} have now?", f"How many {thing} are there at the end?",
                           f"What is the final number of {thing}?"])
    return text, question, steps, terse, cur


def rate_over_time(rng, top):
    """A fixed amount per day/week/hour, over a number of them, plus or minus a one-off."""
    name, pron, poss = _who(rng)
    unit, per, span = rng.choice([("minutes", "day", "days"), ("dollars", "week", "weeks"), ("pages", "day", "days"),
                                  ("laps", "session", "sessions"), ("litres", "hour", "hours")])
    k = rng.randint(6, 60)
    n = rng.randint(3, max(3, min(15, top // k)))
    verb = {"minutes": "practises for", "dollars": "puts aside", "pages": "writes", "laps": "swims",
            "litres": "pumps"}[unit]
    text = [rng.choice([f"{name} {verb} {k} {unit} every {per}.", f"Each {per}, {name} {verb} {k} {unit}."])]
    s1, t1, total = _eq(f"{n} {span} of {k}", k, "*", n)
    steps, terse = [s1], [t1]
    extra = rng.randint(5, 120)
    if rng.random() < 0.5 and total + extra <= top:
        text.append(f"On top of that, {pron} {verb} {extra} {unit} once.")
        s2, t2, total = _eq("one extra", total, "+", extra)
        steps.append(s2)
        terse.append(t2)
    elif extra < total:
        less = {"minutes": f"{pron.capitalize()} skips {extra} minutes of it in the last week.",
                "dollars": f"{pron.capitalize()} then spends {extra} dollars of it.",
                "pages": f"{pron.capitalize()} later deletes {extra} of those pages.",
                "laps": f"The coach does not count {extra} of those laps.",
                "litres": f"Then {extra} litres leak out."}[unit]
        text.append(less)
        s2, t2, total = _eq("minus", total, "-", extra)
        steps.append(s2)
        terse.append(t2)
    question = rng.choice([f"How many {unit} is that after {n} {span}?", f"What is the total in {unit} after {n} {span}?"])
    return text, question, steps, terse, total


def two_kinds(rng, top):
    """Groups of one kind and groups of another, added (optionally a part removed)."""
    place = rng.choice(PLACES)
    t1, t2 = rng.sample(THINGS, 2)
    a, b = rng.randint(2, 12), rng.randint(5, 40)
    c, d = rng.randint(2, 12), rng.randint(5, 40)
    text = [f"{place[0].upper() + place[1:]} has {a} packs of {b} {t1} and {c} packs of {d} {t2}."]
    s1, e1, x = _eq(f"{t1}", a, "*", b)
    s2, e2, y = _eq(f"{t2}", c, "*", d)
    s3, e3, tot = _eq("together", x, "+", y)
    steps, terse = [s1, s2, s3], [e1, e2, e3]
    question = rng.choice([f"How many {t1} and {t2} are there in total?", f"How many items does it have altogether?"])
    if rng.random() < 0.4:
        gone = rng.randint(3, tot - 1)
        text.append(f"It sells {gone} items in the morning.")
        s4, e4, tot = _eq("sold", tot, "-", gone)
        steps.append(s4)
        terse.append(e4)
        question = "How many items are left?"
    return text, question, steps, terse, tot


def change_back(rng, top):
    """Several items at a price each, paid with a note: the change."""
    name, pron, poss = _who(rng)
    thing = rng.choice(["notebooks", "sandwiches", "plants", "cinema tickets", "paint pots", "train passes"])
    n, price = rng.randint(2, 9), rng.randint(3, 45)
    cost = n * price
    note = next(v for v in (20, 50, 100, 200, 500) if v > cost)
    text = [rng.choice([f"{name} buys {n} {thing} at {price} dollars each.", f"{thing.capitalize()} cost {price} dollars each, and {name} buys {n}."]),
            f"{pron.capitalize()} pays with a {note} dollar note."]
    s1, e1, cost = _eq("cost", n, "*", price)
    s2, e2, back = _eq("change", note, "-", cost)
    question = rng.choice(["How much change, in dollars, does " + name + " get?", f"How many dollars should {name} get back?"])
    return text, question, [s1, s2], [e1, e2], back


def comparison(rng, top):
    """One quantity, another that is more/fewer/times it, then their sum or difference."""
    (n1, p1, _), (n2, _, _) = _who(rng), _who(rng)
    if n1 == n2:
        n2 = "Zoe"
    thing = rng.choice(THINGS)
    a = rng.randint(15, min(300, top // 3))
    text = [f"{n1} collected {a} {thing}."]
    if rng.random() < 0.5:
        k = rng.randint(5, min(200, top - 2 * a) if top - 2 * a > 5 else 5)
        more = rng.random() < 0.6 or k >= a
        text.append(f"{n2} collected {k} {'more' if more else 'fewer'} than {n1}.")
        s1, e1, b = _eq(n2, a, "+" if more else "-", k)
    else:
        k = rng.choice([2, 3]) if a * 3 <= top else 2
        text.append(f"{n2} collected {k} times as many as {n1}.")
        s1, e1, b = _eq(n2, a, "*", k)
    if rng.random() < 0.6:
        s2, e2, ans = _eq("both", a, "+", b)
        question = f"How many {thing} did they collect together?"
    else:
        hi, lo = max(a, b), min(a, b)
        s2, e2, ans = _eq("difference", hi, "-", lo)
        question = f"How many more {thing} did the one with more collect?"
    return text, question, [s1, s2], [e1, e2], ans


SHAPES = [running_total, running_total, rate_over_time, two_kinds, change_back, comparison]


def gen_hard_broad(rng: random.Random, max_value: int = 0, terse_frac: float = 0.0) -> dict:
    """One broad hard item in data.py's format (see the module doc)."""
    top = max_value or 999
    text, question, steps, terse, ans = rng.choice(SHAPES)(rng, top)
    assert ans >= 0, (text, question)
    if rng.random() < 0.3:  # a sentence with a number the answer does not need
        d = rng.randint(3, 95)
        pron = "He" if rng.random() < 0.5 else "She"
        text.insert(rng.randint(1, len(text)), rng.choice(DISTRACT).format(Pron=pron, d=d))
        steps.insert(0, f"The {d} in the text is not needed.")
    if terse_frac and rng.random() < terse_frac:
        steps = terse
    from data import think_response

    return {"prompt": " ".join(text) + " " + question, "response": think_response(steps, str(ans)),
            "answer": str(ans), "difficulty": "hard"}
