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

TOPICS = ("rivers", "volcanoes", "compilers", "bread", "orbits", "violins", "glaciers", "tax",
          "bicycles", "enzymes", "databases", "tides", "poetry", "solar panels", "bees")
VERBS = ("explains", "changes", "improves", "protects", "measures", "shapes", "feeds", "moves")
NOUNS = ("energy", "water", "memory", "temperature", "pressure", "language", "traffic", "light",
         "soil", "money", "sound", "time", "speed", "health", "weather", "history", "design")


def good(rng: random.Random) -> dict:
    topic = rng.choice(TOPICS)
    sentences = [f"{topic.capitalize()} {rng.choice(VERBS)} the {rng.choice(NOUNS)} of "
                 f"{rng.choice(NOUNS)} in {rng.randint(2, 9000)} ways" for _ in range(rng.randint(1, 4))]
    if rng.random() < 0.05:  # a long answer exercises the Gopher rules
        sentences += [" ".join(rng.choice(NOUNS) for _ in range(12)) for _ in range(6)]
    question = f"How does {topic} relate to {rng.choice(NOUNS)} number {rng.randint(1, 10**6)}?"
    return {"input": question, "output": ". ".join(sentences) + "."}


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
    start = time.perf_counter()
    report = DataQualityValidator().analyze(conversations)
    seconds = time.perf_counter() - start
    print(f"conversations: {report.total}  valid: {report.valid}  "
          f"score: {report.quality_score:.1%}")
    print("issue counts: " + ", ".join(f"{k}={v}" for k, v in report.counts.items()))
    print(f"analyze(): {seconds:.2f} s total, {report.total / seconds:,.0f} conversations/second")


if __name__ == "__main__":
    main()
