"""Benchmark: how fast `DataQualityValidator.analyze` checks conversations, and what
`validate` costs in time and peak memory on a large JSON Lines file.

Generates varied synthetic conversations (seeded): mostly good ones built from random words,
plus a share of bad ones (empty, short, repetitive, echo, cut-off, symbol soup) and of exact and
near duplicates. Prints conversations/second of `analyze()` in this process, then runs
`main.py validate --quiet` on a generated file of `--file-count` conversations (one per line)
in a child process and prints its wall time, CPU time (its workers' included) and peak memory
(validate's and its workers' proportional set size summed, and their resident set size summed;
CPU time is the figure to compare on a shared machine: other work stretches the wall time).
Run it alone:

    flock /tmp/mtnsails-big.lock python bench/validate_bench.py [--count 100000]
        [--file-count 1000000] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mtnsails.core.cpu import cpu_model, vector_flags  # noqa: E402
from mtnsails.quality.validator import DataQualityValidator  # noqa: E402

POOL = 10_000  # recent conversations that duplicates are drawn from

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
SENTENCES = (
    "The {a} {n1} {v} the {n2} of every {n3}",
    "A {n1} usually {v} {a} {n2} near the {n3}",
    "Most {n1}s need {a} {n2} and a {n3} to work well",
    "Without a {n2}, the {n1} cannot reach the {a} {n3}",
    "People often use a {a} {n1} when the {n2} {v} the {n3}",
)
QUESTIONS = (
    "How does a {n1} affect the {n2}?",
    "Why is the {a} {n1} important for {n2}s?",
    "What happens to a {n1} near a {n2}?",
    "Can a {n1} replace a {a} {n2}?",
)


def fill(template: str, rng: random.Random) -> str:
    return template.format(
        a=rng.choice(ADJECTIVES), v=rng.choice(VERBS), n1=rng.choice(NOUNS), n2=rng.choice(NOUNS), n3=rng.choice(NOUNS)
    )


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


def generate(count: int, seed: int) -> Iterator[dict]:
    """`count` conversations; duplicates copy one of the last `POOL` conversations, so any
    count is generated in constant memory."""
    rng = random.Random(seed)
    pool: deque[dict] = deque(maxlen=POOL)
    for _ in range(count):
        roll = rng.random()
        if roll < 0.08 and pool:
            conversation = dict(rng.choice(pool))  # exact duplicate
        elif roll < 0.16 and pool:
            source = rng.choice(pool)  # near duplicate: one word changed
            words = source["output"].split() or ["Empty"]
            words[rng.randrange(len(words))] = rng.choice(NOUNS)
            conversation = {"input": source["input"], "output": " ".join(words)}
        elif roll < 0.28:
            conversation = bad(rng, good(rng))
        else:
            conversation = good(rng)
        pool.append(conversation)
        yield conversation


def cpu_time() -> float:
    """CPU seconds of this process and of its ended children (`analyze`'s workers)."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def tree_memory(pid: int) -> tuple[int, int]:
    """(RSS, PSS) in KiB of process `pid` and its descendants, each summed (sampled from /proc;
    0 once gone). A page a forked process still shares with its parent is in the RSS of both,
    so the RSS sum counts it twice; PSS splits it among them, so the PSS sum is the memory the
    processes take together."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0, 0
    rss = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
    pss = next((int(line.split()[1]) for line in rollup.splitlines() if line.startswith("Pss:")), 0)
    for child in children:
        child_rss, child_pss = tree_memory(int(child))
        rss, pss = rss + child_rss, pss + child_pss
    return rss, pss


def validate_file(count: int, seed: int) -> None:
    """Write `count` conversations as JSON Lines and time `main.py validate --quiet` on them."""
    with tempfile.TemporaryDirectory(prefix="validate-bench-") as folder:
        path = Path(folder) / "conversations.jsonl"
        with open(path, "w", encoding="utf-8") as handle:
            for conversation in generate(count, seed):
                handle.write(json.dumps(conversation) + "\n")
        size = path.stat().st_size
        load_before = os.getloadavg()[0]  # others' work: it stretches the wall time
        start, start_cpu = time.perf_counter(), cpu_time()
        process = subprocess.Popen(
            [sys.executable, str(ROOT / "main.py"), "validate", "--data-file", str(path), "--quiet"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        # validate's worker processes are its children: their memory counts too, summed
        rss_peak = pss_peak = 0
        while process.poll() is None:
            rss, pss = tree_memory(process.pid)
            rss_peak, pss_peak = max(rss_peak, rss), max(pss_peak, pss)
            time.sleep(0.2)
        seconds = time.perf_counter() - start
        result = subprocess.CompletedProcess(process.args, process.returncode, *process.communicate())
        cpu_seconds = cpu_time() - start_cpu  # validate's and its workers'
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    peak = max(usage.ru_maxrss / 1024, rss_peak / 1024)  # KiB on Linux
    load = os.getloadavg()[0]
    if result.returncode not in (0, 1):
        sys.exit(f"validate failed ({result.returncode}): {result.stderr.strip()}")
    print(
        f"validate --quiet on {count:,} conversations ({size / 1e6:.0f} MB of JSON Lines): "
        f"{seconds:.1f} s ({cpu_seconds:.1f} s of CPU time; load average {load_before:.1f} "
        f"before, {load:.1f} at the end, on {os.cpu_count()} cores), peak memory "
        f"{pss_peak / 1024:,.0f} MiB (PSS of validate and its workers together; their RSS "
        f"summed, which counts pages a forked worker shares with validate twice: "
        f"{peak:,.0f} MiB); {result.stdout.strip()}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000, help="conversations analysed in this process")
    parser.add_argument(
        "--file-count", type=int, default=1_000_000, help="conversations in the file given to `validate` (0: skip)"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(
        f"CPU: {cpu_model()}, {os.cpu_count()} logical cores, "
        f"flags: {' '.join(vector_flags()) or 'none of the vector flags'}"
    )
    conversations = list(generate(args.count, args.seed))
    start, start_cpu = time.perf_counter(), cpu_time()
    report = DataQualityValidator().analyze(conversations)
    seconds, cpu_seconds = time.perf_counter() - start, cpu_time() - start_cpu
    print(f"conversations: {report.total}  valid: {report.valid}  score: {report.quality_score:.1%}")
    print("issue counts: " + ", ".join(f"{k}={v}" for k, v in report.counts.items()))
    print(
        f"analyze(): {seconds:.2f} s total, {report.total / seconds:,.0f} conversations/second "
        f"({cpu_seconds:.2f} s of CPU time; wall time grows when other work shares the core)"
    )
    del conversations, report
    if args.file_count:
        validate_file(args.file_count, args.seed)


if __name__ == "__main__":
    main()
