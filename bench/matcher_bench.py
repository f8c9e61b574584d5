"""How often `QuestionMatcher` asks a reworded question as its own trained question, and how
often it swaps a question that matches nothing for a trained one.

    python bench/matcher_bench.py                  # matching figures, every set, ngram, lexical and new
    python bench/matcher_bench.py --thresholds     # + the figures at other thresholds
    python bench/matcher_bench.py --timing         # + build and match time, 1,000 and 10,000 questions
    python bench/matcher_bench.py --set tech --model DIR/main/onnx   # + answered right, end to end

Data (bench/data/), one set = three files sharing a prefix:

- `<set>_qa.json`: the trained pairs, a list of {"input": question, "output": answer};
- `<set>_reworded.json`: other people's wordings of some trained questions, same format; a
  rewording's own question is the trained question with the same answer;
- `<set>_unrelated.json`: a list of question strings that no trained question answers, written
  to share words with trained questions ("near misses": "How do I patch a hole in my jeans?"
  for a home-repair set that has "How do I patch a small hole in drywall?").

| set        | trained topic | rewordings by                                   | role        |
|------------|---------------|-------------------------------------------------|-------------|
| bicycle    | bicycles      | tuning_reworded.json: plain, near the trained words | tuning  |
| houseplant | houseplants   | heldout_reworded.json: the same                 | tuning      |
| cooking    | cooking       | mixed styles, mostly synonyms                   | tuning      |
| repair     | home repair   | a terse, casual writer                          | development |
| finance    | money         | a verbose, formal writer                        | development |
| pets       | pet care      | a chatty writer: the story first, typos         | development |
| tech       | computers     | a writer who asks first and explains after      | held out    |
| travel     | travel        | a writer for whom English is a second language  | held out    |
| gardening  | vegetables    | another author: a hurried phone user, lowercase, abbreviations | held out, other hand |
| running    | running       | another author: a polite writer, context around it | held out, other hand |

bicycle and houseplant are the files the old threshold was tuned on (tuning_qa.json,
tuning_reworded.json, heldout_qa.json, heldout_reworded.json), with tuning_unrelated.json as
their near misses. repair, finance and pets were written as held-out sets and first scored the
matcher's first design; that design failed on them and they then served to choose the
constants, so they count as development sets now. tech and travel were written before that
second round and chose nothing. gardening and running were written by another author (a separate
session that never saw the matcher, its data or its figures) after the sentence-vector matcher's
constants were chosen.

For every set and matcher: rewordings asked as their own trained question (right), as another
trained question (wrong swap), left as asked (left); "top-1": how often the best candidate is the
own question, with no decision rule; near misses swapped for a trained question; and other
topics swapped: the trained questions of every other set, asked of this set's matcher.
Matchers: "ngram" is question_matcher.py at NGRAM_COMMIT and "lexical" at LEXICAL_COMMIT (read
with git show; lexical as chat built it, with the trained answers), "new" the working tree's as
chat builds it for a model trained before answers were recorded (trained questions only),
"new+answers" the same given the trained answers, as chat builds it now.

With --model (an ONNX directory of a model trained on the set: `answer_bench.py --keep DIR`
keeps DIR/main/onnx): asks that model each trained question, each rewording, near miss and
other-topic question in a fresh conversation, with no matcher and with each matcher
(mtnsails.loop.evaluator.Evaluator, greedy, as answer_bench.py asks): a rewording is answered
right when the reference's first sentence is in the answer (answer_bench.py's "reworded" figure);
a near miss or other-topic question "gets a trained answer" when the first sentence of any trained
answer is in the answer (a confident, wrong answer, with or without a swap).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
DATA = REPO_ROOT / "bench" / "data"
NGRAM_COMMIT = "ab480b5"  # the last commit with the character n-gram matcher (threshold 0.35)
LEXICAL_COMMIT = "18424f1"  # the last with stemmed words + n-grams in TF-IDF (thresholds 0.40 / 0.32)

from mtnsails.inference import question_matcher  # noqa: E402


def read(name: str) -> list:
    return json.loads((DATA / name).read_text())


def sets() -> dict[str, dict]:
    """name -> {"qa": [...], "reworded": [...], "near": [str], "other": [str], "role": ...}."""
    table = {
        "bicycle": {
            "qa": read("tuning_qa.json"),
            "reworded": read("tuning_reworded.json"),
            "near": read("tuning_unrelated.json"),
            "role": "tuning",
        },
        "houseplant": {
            "qa": read("heldout_qa.json"),
            "reworded": read("heldout_reworded.json"),
            "near": read("tuning_unrelated.json"),
            "role": "tuning",
        },
    }
    for name, role in (
        ("cooking", "tuning"),
        ("repair", "development"),
        ("finance", "development"),
        ("pets", "development"),
        ("tech", "held out"),
        ("travel", "held out"),
        ("gardening", "held out, other hand"),
        ("running", "held out, other hand"),
    ):
        table[name] = {
            "qa": read(f"{name}_qa.json"),
            "reworded": read(f"{name}_reworded.json"),
            "near": read(f"{name}_unrelated.json"),
            "role": role,
        }
    for name, data in table.items():  # other topics: every other set's trained questions
        data["other"] = list(
            dict.fromkeys(pair["input"] for other, more in table.items() if other != name for pair in more["qa"])
        )
    return table


def module_at(commit: str, name: str):
    """question_matcher.py as it was at `commit` (None outside a git checkout)."""
    try:
        source = subprocess.run(
            ["git", "show", f"{commit}:mtnsails/inference/question_matcher.py"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    path = Path(tempfile.mkdtemp()) / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def builders() -> dict:
    """name -> function(qa pairs) -> a matcher."""
    found = {}
    ngram = module_at(NGRAM_COMMIT, "ngram_question_matcher")
    if ngram is not None:
        found["ngram"] = lambda qa: ngram.QuestionMatcher([p["input"] for p in qa])
    lexical = module_at(LEXICAL_COMMIT, "lexical_question_matcher")
    if lexical is not None:
        found["lexical"] = lambda qa: lexical.QuestionMatcher(
            [p["input"] for p in qa], answers=[p["output"] for p in qa]
        )
    new = question_matcher.QuestionMatcher
    found["new"] = lambda qa: new([p["input"] for p in qa])
    found["new+answers"] = lambda qa: new([p["input"] for p in qa], answers=[p["output"] for p in qa])
    return found


def top_question(matcher, text: str) -> str | None:
    """The best candidate with no decision rule."""
    if hasattr(matcher, "scores"):  # the n-gram matcher has none
        scores = matcher.scores(text)
        return matcher.questions[int(scores.argmax())] if scores.max() > 0 else None
    threshold = matcher.threshold  # the old matcher: no threshold gives its best candidate
    matcher.threshold = -1.0
    try:
        found = matcher.match(text)
    finally:
        matcher.threshold = threshold
    return found.question if found else None


def figures(matcher, data: dict, show: bool = False) -> dict:
    own = {pair["output"]: pair["input"] for pair in data["qa"]}
    counts = {"right": 0, "wrong": 0, "left": 0, "top1": 0, "near": 0, "other": 0}
    for pair in data["reworded"]:
        found = matcher.match(pair["input"])
        kind = "left" if found is None else "right" if found.question == own[pair["output"]] else "wrong"
        counts[kind] += 1
        counts["top1"] += top_question(matcher, pair["input"]) == own[pair["output"]]
        if show and kind != "right":
            print(f"    {kind}: {pair['input']!r} -> {found.question if found else None!r}")
    for kind in ("near", "other"):
        for question in data[kind]:
            found = matcher.match(question)
            counts[kind] += found is not None
            if show and found is not None:
                print(f"    {kind} swap: {question!r} -> {found.question!r} ({found.similarity})")
    return counts


def share(count: int, total: int) -> str:
    return f"{count}/{total} ({count / total:.0%})"


def matching_table(table: dict, makers: dict, show: bool) -> None:
    print("| set | role | matcher | right | wrong swap | left | top-1 | near misses swapped | other topics swapped |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, data in table.items():
        n = len(data["reworded"])
        for label, make in makers.items():
            if show:
                print(f"  {name} / {label}:")
            c = figures(make(data["qa"]), data, show)
            print(
                f"| {name} | {data['role']} | {label} | {share(c['right'], n)} | {c['wrong']}/{n} | "
                f"{c['left']}/{n} | {c['top1']}/{n} | {share(c['near'], len(data['near']))} | "
                f"{share(c['other'], len(data['other']))} |"
            )


def thresholds_table(table: dict) -> None:
    """Right, wrong swaps, near misses and other topics swapped at other thresholds (margin as
    set), summed over the tuning + development sets and over the held-out sets."""
    print("| matcher | threshold | sets | right | wrong swap | near misses swapped | other topics swapped |")
    print("|---|---|---|---|---|---|---|")
    new = question_matcher.QuestionMatcher
    grids = (
        ("new", question_matcher.DEFAULT_THRESHOLD, (0.36, 0.40, 0.44, 0.48, 0.52)),
        ("new+answers", question_matcher.ANSWERS_THRESHOLD, (0.30, 0.34, 0.38, 0.42, 0.46)),
    )
    for label, default, grid in grids:
        for threshold in grid:
            for group in ("tuning + development", "held out"):
                names = [n for n, d in table.items() if d["role"].startswith("held out") == (group == "held out")]
                if not names:
                    continue
                total = dict.fromkeys(("right", "wrong", "near", "other", "n", "n_near", "n_other"), 0)
                for name in names:
                    data = table[name]
                    answers = [p["output"] for p in data["qa"]] if label == "new+answers" else None
                    c = figures(new([p["input"] for p in data["qa"]], threshold, answers=answers), data)
                    for key in ("right", "wrong", "near", "other"):
                        total[key] += c[key]
                    total["n"] += len(data["reworded"])
                    total["n_near"] += len(data["near"])
                    total["n_other"] += len(data["other"])
                mark = " (default)" if threshold == default else ""
                print(
                    f"| {label} | {threshold:.2f}{mark} | {group} | {share(total['right'], total['n'])} | "
                    f"{total['wrong']}/{total['n']} | {share(total['near'], total['n_near'])} | "
                    f"{share(total['other'], total['n_other'])} |"
                )


def synthetic_pairs(count: int, seed: int = 0) -> list[dict]:
    """`count` distinct question/answer pairs made of the words of every bench set."""
    words = sorted(
        {
            w
            for data in sets().values()
            for p in data["qa"]
            for w in question_matcher._words(p["input"] + " " + p["output"])
            if w not in question_matcher.FUNCTION_WORDS
        }
    )
    rng = random.Random(seed)
    starts = ["How do I", "Why does my", "What is the", "When should I", "How often should I"]
    pairs = {}
    while len(pairs) < count:
        question = f"{rng.choice(starts)} {' '.join(rng.sample(words, 3))}?"
        pairs[question] = {"input": question, "output": " ".join(rng.sample(words, 20)) + "."}
    return list(pairs.values())


OLD_TIMING_LIMIT = 1_000  # the old matcher stores questions x n-grams densely (float32)


def old_grams(text: str) -> set[str]:
    """The character n-grams the old matcher indexes (its dense matrix has one column each)."""
    words = [w for w in question_matcher._words(text) if w not in OLD_FUNCTION_WORDS]
    return {f" {w} "[i : i + n] for w in words for n in (3, 4, 5) for i in range(max(1, len(w) + 3 - n))}


OLD_FUNCTION_WORDS = frozenset(
    """a an and any are as at be can could do does did for from how i if in
is it its me my of on or should so than that the then there this to was what when where which who
whom why will with would you your""".split()
)


def timing_table(makers: dict) -> None:
    queries = [p["input"] for data in sets().values() for p in data["reworded"]]
    print("| trained questions | matcher | build (s) | match per query (ms, median) |")
    print("|---|---|---|---|")
    for count in (1_000, 10_000):
        pairs = synthetic_pairs(count)
        for label, make in makers.items():
            if label == "ngram" and count > OLD_TIMING_LIMIT:
                grams = {g for p in pairs for g in old_grams(p["input"])}
                print(f"| {count:,} | ngram | not run: its dense matrix is {count * len(grams) * 4 / 1e9:.1f} GB | |")
                continue
            start = time.perf_counter()
            matcher = make(pairs)
            built = time.perf_counter() - start
            times = []
            for query in queries:
                start = time.perf_counter()
                matcher.match(query)
                times.append(time.perf_counter() - start)
            print(f"| {count:,} | {label} | {built:.2f} | {statistics.median(times) * 1e3:.2f} |")


def answered_table(model: str, data: dict, makers: dict) -> None:
    from mtnsails.loop.evaluator import Evaluator, first_sentence_match

    evaluator = Evaluator(model)
    trained = evaluator.evaluate(data["qa"])
    n = len(data["qa"])
    print(f"trained questions answered right: {sum(r.first_sentence_match for r in trained.results)}/{n}")
    references = [pair["output"] for pair in data["qa"]]
    print(
        "| matcher | rewordings answered right | near misses given a trained answer "
        "| other topics given a trained answer |"
    )
    print("|---|---|---|---|")
    for label, make in {"none": None, **makers}.items():
        evaluator.chat.engine.matcher = make(data["qa"]) if make else None
        right = sum(r.first_sentence_match for r in evaluator.evaluate(data["reworded"]).results)
        given = {}
        for kind in ("near", "other"):
            asked = [{"input": question, "output": ""} for question in data[kind]]
            given[kind] = share(
                sum(
                    any(first_sentence_match(r.answer, ref) for ref in references)
                    for r in evaluator.evaluate(asked).results
                ),
                len(asked),
            )
        print(f"| {label} | {share(right, len(data['reworded']))} | {given['near']} | {given['other']} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--set", action="append", help="only these sets (default: all)")
    parser.add_argument("--timing", action="store_true", help="time matching 1,000 and 10,000 questions")
    parser.add_argument("--model", help="ONNX model trained on the (single) --set: answered right")
    parser.add_argument("--thresholds", action="store_true", help="the figures at other thresholds")
    parser.add_argument("--show", action="store_true", help="print every miss and swap")
    args = parser.parse_args()
    from mtnsails.core.cpu import cpu_flags

    print(f"matcher: {question_matcher.__file__}")
    flags = " ".join(f for f in ("avx2", "avx512f", "avx512_vnni") if f in cpu_flags())
    print(f"CPU: {question_matcher_cpu()} ({flags or 'no avx2'}); {time.strftime('%Y-%m-%d')}")
    table = sets()
    if args.set:
        table = {name: table[name] for name in args.set}
    makers = builders()
    matching_table(table, makers, args.show)
    if args.thresholds:
        thresholds_table(table)
    if args.timing:
        timing_table(makers)
    if args.model:
        if len(table) != 1:
            parser.error("--model needs exactly one --set (the set the model was trained on)")
        answered_table(args.model, next(iter(table.values())), makers)


def question_matcher_cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


if __name__ == "__main__":
    main()
