"""Benchmark: how fast `DataQualityValidator.analyze` checks 100,000 conversations.

Generates varied synthetic conversations (seeded): mostly good ones built from random words,
plus a share of bad ones (empty, short, repetitive, echo, cut-off, symbol soup) and of exact and
near duplicates. Prints conversations/second and total seconds on one core.

    python bench/validate_bench.py [--count 100000] [--seed 0]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mtnsails.quality import DataQualityValidator  # noqa: E402

NOUNS = """river volcano compiler bread orbit violin glacier tax bicycle enzyme database tide poem
panel bee energy water memory temperature pressure language traffic light soil money sound time
speed health weather history design engine garden market lantern harbour pencil forest copper
meadow signal basket candle thunder island bridge camera window kitchen village theatre museum
letter battery magnet cloud desert canyon recipe sensor rocket bottle ladder mirror carpet ticket
planet cell protein network server keyboard guitar piano ocean mountain valley""".split()
VERBS = """explains changes improves protects measures shapes feeds moves heats cools stores
carries filters balances records connects supports reduces doubles limits""".split()
ADJECTIVES = """small large quiet bright heavy fragile ancient modern warm cold simple complex
cheap rare common hidden local global careful rapid gentle strong""".split()
SENTENCES = ("The {a} {n1} {v} the {n2} of every {n3}",
             "A {n1} usually {v} {a} {n2} near the {n3}",
             "Most {n1}s need {a} {n2} and a {n3} to work well",
             "Without a {n2}, the {n1} cannot reach the {a} {n3}",
             "People often use a {a} {n1} when the {n2} {v} the {n3}")
QUESTIONS = ("How does a {n1} affect the {n2}?", "Why is the {a} {n1} important for {n2}s?",
             "What happens to a {n1} near a {n2}?", "Can a {n1} replace a {a} {n2}?")


def fill(template: str, rng: random.Random) -> str:
    return template.format(a=rng.choice(ADJECTIVES), v=rng.choice(VERBS), n1=rng.choice(NOUNS),
                           n2=rng.choice(NOUNS), n3=rng.choice(NOUNS))


def good(rng: random.Random) -> dict:
    sentences = [fill(rng.choice(SENTENCES), rng) for _ in range(rng.randint(1, 4))]
    if rng.random() < 0.05:  # a long answer exercises the Gopher rules
        sentences += [fill(rng.choice(SENTENCES), rng) for _ in range(10)]
    return {"input": fill(rng.choice(QUESTIONS), rng), "output": ". ".join(sentences) + "."}


def bad(rng: random.Random, conversation: dict) -> dict:
    kind = rng.randrange(6)
    output = conversation["output"]
    if kind == 0:
        output = ""
    elif kind == 1:
        output = "Yes."
    elif kind == 2:
        output = " ".join([output] * 3)
    elif kind == 3:
        output = conversation["input"]
    elif kind == 4:
        output = output.rstrip(".") + " and the"
    else:
        output = "#### @@ !! " * 3
    return {"input": conversation["input"], "output": output}


def generate(count: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    conversations: list[dict] = []
    while len(conversations) < count:
        roll = rng.random()
        if roll < 0.08 and conversations:
            conversations.append(dict(rng.choice(conversations)))  # exact duplicate
        elif roll < 0.16 and conversations:
            source = rng.choice(conversations)  # near duplicate: one word changed
            words = source["output"].split() or ["Empty"]
            words[rng.randrange(len(words))] = rng.choice(NOUNS)
            conversations.append({"input": source["input"], "output": " ".join(words)})
        elif roll < 0.28:
            conversations.append(bad(rng, good(rng)))
        else:
            conversations.append(good(rng))
    return conversations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    conversations = generate(args.count, args.seed)
    start, start_cpu = time.perf_counter(), time.process_time()
    report = DataQualityValidator().analyze(conversations)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
    print(f"conversations: {report.total}  valid: {report.valid}  "
          f"score: {report.quality_score:.1%}")
    print("issue counts: " + ", ".join(f"{k}={v}" for k, v in report.counts.items()))
    print(f"analyze(): {seconds:.2f} s total, {report.total / seconds:,.0f} conversations/second "
          f"({cpu_seconds:.2f} s of CPU time; wall time grows when other work shares the core)")


if __name__ == "__main__":
    main()
