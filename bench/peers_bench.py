"""Decode speed against the engines a user would pick instead: mtnsails side by side with its peers.

    nice python bench/peers_bench.py [--shape llama|gpt2|both] [--rounds 3] [--paths P,P,...]
        [--genai-python PY] [--ct2-python PY] [--threads N] [--work DIR] [--json OUT]

Builds random-weight models (nothing downloaded) of two shapes, with a byte-level BPE of the
shape's vocabulary learned from Python's standard library:
- llama: the SmolLM2-135M shape (Llama, 30 layers x 576, 9 heads / 3 KV heads, 49,152 vocabulary,
  tied embeddings);
- gpt2: the distilgpt2 shape (GPT-2, 6 layers x 768, 50,257 vocabulary);
converts each for every engine, then measures, batch 1, greedy, every engine fed the same prompt
token ids, with --threads threads (default: physical cores) for every engine:
- decode: seconds for 65 new tokens and for 1 (the prompt's prefill and the first token), the
  per-token time being their difference / 64 (--tokens);
- TTFT@500: the time from a 500-token prompt to the first new token (generate with 1 new token);
- cold start: the wall time of a whole process that loads the model, tokenizes a short prompt
  with the engine's own tokenizer, makes 1 new token and exits.
Decode and TTFT are timed inside one process per path (the model loaded, each call made once
untimed, checking that it makes the tokens asked for, then the median of --runs calls each);
every path runs in its own process and the rounds take turns over the paths, so a burst of load
from other jobs hits them alike; each figure is the median over --rounds rounds.

Paths (--paths takes these keys):
- pytorch: transformers' `generate`, fp32 (this interpreter);
- mtnsails-fp32, mtnsails-int8, mtnsails-int4: `convert --quantize all`, then the library that
  `main.py chat --temperature 0 --repetition-penalty 1` runs (`ChatInterface` as `chat` opens it,
  its `generate_ids` with EOS disabled so that every call makes exactly the tokens asked for); the
  cold start is `main.py chat --prompt ... --max-tokens 1` itself;
- llamacpp-q8_0, llamacpp-q4_0: mtnsails' own `convert --format gguf --gguf-type q8_0|q4_0`
  run by llama.cpp through llama-cpp-python (--llama-python, default this interpreter), its
  weight repacking (extra buffer types) off unless --llama-repack: a build for a CPU that reports
  AMX crashes in its repacked Q8_0/Q4_0 kernels (see bench/gguf_bench.py); a build with AMX
  off (below) repacks and runs;
- genai-int4: onnxruntime-genai's model builder (`-p int4 -e cpu`) and its generator, from
  --genai-python (its builder has no GPT-2);
- ct2-int8: CTranslate2's converter (`ct2-transformers-converter --quantization int8`, run as
  `python -m ctranslate2.converters.transformers`) and its Generator, from --ct2-python. On the
  2-core host of docs/performance.md it decoded slower at 2 threads than at 1.

Every peer is a bench-only extra, never a requirement of mtnsails; a peer whose interpreter or
module is missing is reported "not installed", one whose conversion fails "failed: ..."; neither
is ever replaced by another figure. To install them (each in a venv of its own, outside the repo):

    # llama.cpp: no binary wheel; builds from source (about 20 minutes on 2 cores). On an AMX
    # host, a build without AMX keeps its repacked kernels working (then pass --llama-repack):
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON \
      -DGGML_AVX512_VNNI=ON -DGGML_AVX_VNNI=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF \
      -DLLAMA_CURL=OFF" pip install --no-binary llama-cpp-python llama-cpp-python==0.3.36
    # onnxruntime-genai 0.18.0: its builder needs a transformers newer than 4.57
    python -m venv /tmp/genai-venv
    /tmp/genai-venv/bin/pip install torch==2.13.0 onnxruntime-genai==0.18.0 transformers onnx onnx_ir
    # CTranslate2 4.8.5: its converter needs torch and transformers beside it
    python -m venv /tmp/ct2-venv
    /tmp/ct2-venv/bin/pip install torch==2.13.0 ctranslate2==4.8.5 transformers==4.57.6

    nice python bench/peers_bench.py --genai-python /tmp/genai-venv/bin/python \\
        --ct2-python /tmp/ct2-venv/bin/python --json peers.json

Prints the CPU model and its vector flags first: figures differ between CPU kinds.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

# Only the standard library at module level: the workers run this file under the peers'
# interpreters, which have no mtnsails.
REPO_ROOT = Path(__file__).resolve().parent.parent
PROMPT = "What is a lighthouse and why do ships need one at night?"
COLD_PROMPT = "Hello!"
PREFILL_TOKENS = 500
EOS = "<|endoftext|>"

SHAPES = {
    "llama": dict(
        arch="llama",
        vocab_size=49152,
        label="SmolLM2-135M shape (Llama, 30 x 576, 9 heads / 3 KV heads, 49,152 vocabulary)",
    ),
    "gpt2": dict(
        arch="gpt2",
        vocab_size=50257,
        label="distilgpt2 shape (GPT-2, 6 x 768, 12 heads, 50,257 vocabulary)",
    ),
}


@dataclass(frozen=True)
class Route:
    """One way of running the model: its engine's interpreter (an option name), the module that
    must import there, and the label the tables show."""

    label: str
    python: str  # "self" (this interpreter), "llama", "genai" or "ct2"
    module: str
    engine: str  # worker kind
    precision: str


PATHS: dict[str, Route] = {
    "pytorch": Route("PyTorch generate fp32", "self", "transformers", "pytorch", "fp32"),
    "mtnsails-fp32": Route("mtnsails fp32", "self", "onnxruntime", "mtnsails", "fp32"),
    "mtnsails-int8": Route("mtnsails int8", "self", "onnxruntime", "mtnsails", "int8"),
    "mtnsails-int4": Route("mtnsails int4", "self", "onnxruntime", "mtnsails", "int4"),
    "llamacpp-q8_0": Route("llama.cpp Q8_0", "llama", "llama_cpp", "llamacpp", "q8_0"),
    "llamacpp-q4_0": Route("llama.cpp Q4_0", "llama", "llama_cpp", "llamacpp", "q4_0"),
    "genai-int4": Route("onnxruntime-genai int4", "genai", "onnxruntime_genai", "genai", "int4"),
    "ct2-int8": Route("CTranslate2 int8", "ct2", "ctranslate2", "ct2", "int8"),
}
BASELINE, LLAMA_Q4 = "pytorch", "llamacpp-q4_0"


# -- arithmetic and reporting (pure) -----------------------------------------------------------


def per_token_seconds(one_token: float, many_tokens: float, tokens: int) -> float:
    """Seconds per decoding step: generating `tokens` + 1 new tokens took `many_tokens` seconds
    and generating 1 took `one_token`; both paid the prompt and the first token once."""
    if tokens < 1:
        raise ValueError(f"tokens = {tokens}: the difference needs at least 1 decoding step")
    return (many_tokens - one_token) / tokens


def median_or_none(values: list[float]) -> float | None:
    """The median of `values` (None when there are none)."""
    return statistics.median(values) if values else None


@dataclass
class Result:
    """One path's figures over the rounds (seconds), or why there are none."""

    key: str
    label: str
    status: str = "ok"  # "ok", "not installed (...)", "failed: ..."
    per_token: list[float] = field(default_factory=list)
    ttft: list[float] = field(default_factory=list)
    cold: list[float] = field(default_factory=list)

    def row(self, baseline: float | None, llama_q4: float | None) -> dict:
        """The JSON row: medians in ms / tokens/s, speed relative to PyTorch and llama.cpp Q4_0."""
        per_token = median_or_none(self.per_token)
        ttft, cold = median_or_none(self.ttft), median_or_none(self.cold)
        return {
            "path": self.key,
            "label": self.label,
            "status": self.status,
            "ms_per_token": per_token * 1e3 if per_token else None,
            "tokens_per_s": 1 / per_token if per_token else None,
            "x_pytorch": baseline / per_token if baseline and per_token else None,
            "x_llamacpp_q4_0": llama_q4 / per_token if llama_q4 and per_token else None,
            "ttft_500_ms": ttft * 1e3 if ttft else None,
            "cold_start_s": cold,
            "rounds_ms_per_token": [round(x * 1e3, 3) for x in self.per_token],
        }


def rows(results: list[Result]) -> list[dict]:
    """The JSON rows of `results`, ratios against the PyTorch and llama.cpp Q4_0 paths' medians."""
    by_key = {r.key: median_or_none(r.per_token) for r in results}
    return [r.row(by_key.get(BASELINE), by_key.get(LLAMA_Q4)) for r in results]


def markdown_table(table_rows: list[dict]) -> str:
    """The rows as a markdown table; a path without figures shows its status instead."""

    def show(value: float | None, digits: int, suffix: str = "") -> str:
        return "-" if value is None else f"{value:.{digits}f}{suffix}"

    lines = [
        "| path | ms/token | tokens/s | x PyTorch | x llama.cpp Q4_0 | TTFT@500 | cold start |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in table_rows:
        if row["ms_per_token"] is None:
            lines.append(f"| {row['label']} | {row['status']} | | | | | |")
            continue
        lines.append(
            f"| {row['label']} | {show(row['ms_per_token'], 2)} | {show(row['tokens_per_s'], 1)} "
            f"| {show(row['x_pytorch'], 2, 'x')} | {show(row['x_llamacpp_q4_0'], 2, 'x')} "
            f"| {show(row['ttft_500_ms'], 0, ' ms')} | {show(row['cold_start_s'], 2, ' s')} |"
        )
    return "\n".join(lines)


@functools.cache
def engine_missing(python: str | None, module: str) -> str | None:
    """Why `module` cannot run under the interpreter `python` ("not installed (...)"), or None."""
    if not python:
        return "not installed (no interpreter given)"
    if not Path(python).exists() and not shutil.which(python):
        return f"not installed ({python} does not exist)"
    probe = subprocess.run([python, "-c", f"import {module}"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"not installed (no {module} in {python})"
    return None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring); --paths checked against `PATHS`."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--shape", choices=["llama", "gpt2", "both"], default="both")
    parser.add_argument("--rounds", type=int, default=3, help="processes per path, taking turns (median)")
    parser.add_argument("--runs", type=int, default=3, help="timed calls per process (median)")
    parser.add_argument("--tokens", type=int, default=64, help="decoding steps: 1 + this many new tokens vs 1")
    parser.add_argument("--paths", default=",".join(PATHS), help=f"comma-separated, of: {', '.join(PATHS)}")
    parser.add_argument("--repo", type=Path, default=REPO_ROOT, help="the mtnsails checkout to time")
    parser.add_argument("--llama-python", default="", help="interpreter with llama_cpp (default: this one)")
    parser.add_argument("--llama-repack", action="store_true", help="keep llama.cpp's weight repacking on")
    parser.add_argument("--genai-python", default="", help="interpreter with onnxruntime-genai and its builder")
    parser.add_argument("--ct2-python", default="", help="interpreter with ctranslate2, torch and transformers")
    parser.add_argument("--threads", type=int, default=0, help="threads for every engine (default: physical cores)")
    parser.add_argument("--work", type=Path, help="keep the models here and reuse them (default: a temporary folder)")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return args
    keys = [key.strip() for key in args.paths.split(",") if key.strip()]
    unknown = [key for key in keys if key not in PATHS]
    if unknown or not keys:
        parser.error(f"--paths: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(PATHS)}")
    if args.rounds < 1 or args.runs < 1 or args.tokens < 1:
        parser.error("--rounds, --runs and --tokens must be at least 1")
    args.paths = keys
    return args


# -- workers: run under the path's own interpreter ---------------------------------------------


def _median_time(call, runs: int) -> float:
    """Median seconds of `runs` calls of `call`."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _pytorch(job: dict):
    """(generate(ids, n) -> new tokens made, tokenize(text) -> ids) with transformers' `generate` fp32."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(job["threads"])
    model = AutoModelForCausalLM.from_pretrained(job["model"]).eval()

    def generate(ids: list[int], n: int) -> int:
        input_ids = torch.tensor([ids])
        with torch.no_grad():
            out = model.generate(
                input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=n,
                min_new_tokens=n,
                do_sample=False,
                pad_token_id=0,
            )
        return out.shape[1] - len(ids)

    tokenizer = AutoTokenizer.from_pretrained(job["model"])
    return generate, lambda text: tokenizer(text)["input_ids"]


def _mtnsails(job: dict):
    """(generate(ids, n) -> new tokens made, tokenize(text) -> ids) with the `ChatInterface` that
    `chat` opens: greedy, no repetition penalty, EOS off."""
    sys.path.insert(0, job["repo"])
    from mtnsails.inference.chat import ChatInterface
    from mtnsails.inference.generation_config import GenerationConfig

    chat = ChatInterface(job["model"], precision=job["precision"], threads=job["threads"])
    chat.eos_token_id = None  # random weights: make every call produce exactly n tokens

    def generate(ids: list[int], n: int) -> int:
        config = GenerationConfig(max_new_tokens=n, temperature=0.0, repetition_penalty=1.0)
        return sum(1 for _ in chat.generate_ids(ids, config))

    return generate, chat.encode


def _load_llama(path: str, threads: int, repack: bool):
    """llama.cpp on `path`; unless `repack`, its extra CPU buffer types (weight repacking, AMX)
    off: a build for a CPU that reports AMX crashes in its repacked Q8_0/Q4_0 kernels (as
    bench/gguf_bench.py says)."""
    import llama_cpp

    defaults = llama_cpp.llama_cpp.llama_model_default_params

    def without_extra_buffers():
        params = defaults()
        params.use_extra_bufts = False
        return params

    if not repack:
        llama_cpp.llama_cpp.llama_model_default_params = without_extra_buffers
    return llama_cpp.Llama(
        path, n_ctx=1024, n_batch=512, n_threads=threads, n_threads_batch=threads, verbose=False, seed=0
    )


def _llamacpp(job: dict):
    """(generate(ids, n) -> new tokens made, tokenize(text) -> ids) with llama.cpp's own
    generator: greedy (top-k 1, temperature 0), no repetition penalty."""
    llm = _load_llama(job["model"], job["threads"], job.get("repack", False))

    def generate(ids: list[int], n: int) -> int:
        llm.reset()  # no reuse of the previous call's cache
        count = 0
        for _ in llm.generate(ids, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0, reset=True):
            count += 1
            if count == n:
                break
        return count

    return generate, lambda text: llm.tokenize(text.encode(), add_bos=False)


def _genai(job: dict):
    """(generate(ids, n) -> new tokens made, tokenize(text) -> ids) with onnxruntime-genai's generator, greedy."""
    import onnxruntime_genai as og

    model = og.Model(job["model"])

    def generate(ids: list[int], n: int) -> int:
        params = og.GeneratorParams(model)
        params.set_search_options(do_sample=False, max_length=len(ids) + n, min_length=len(ids) + n)
        generator = og.Generator(model, params)
        generator.append_tokens(ids)
        count = 0
        while count < n and not generator.is_done():
            generator.generate_next_token()
            count += 1
        return count

    tokenizer = og.Tokenizer(model)
    return generate, lambda text: list(tokenizer.encode(text))


def _ct2(job: dict):
    """(generate(ids, n) -> new tokens made, tokenize(text) -> ids) with CTranslate2's Generator:
    greedy (top-k 1), no repetition penalty. It takes the prompt as token strings."""
    import ctranslate2
    from tokenizers import Tokenizer  # what transformers' fast tokenizer runs, without transformers

    generator = ctranslate2.Generator(job["model"], device="cpu", inter_threads=1, intra_threads=job["threads"])
    tokenizer = Tokenizer.from_file(str(Path(job["source"]) / "tokenizer.json"))

    def generate(ids: list[int], n: int) -> int:
        tokens = [tokenizer.id_to_token(i) for i in ids]
        result = generator.generate_batch(
            [tokens], max_length=n, min_length=n, sampling_topk=1, include_prompt_in_result=False
        )
        return len(result[0].sequences_ids[0])

    return generate, lambda text: tokenizer.encode(text).ids


ENGINES = {"pytorch": _pytorch, "mtnsails": _mtnsails, "llamacpp": _llamacpp, "genai": _genai, "ct2": _ct2}


def timed_worker(job: dict) -> dict:
    """Load the path's model, then time 1 and tokens+1 new tokens after the short prompt and 1
    new token after the 500-token one: the medians of `runs` calls each, in seconds, after one
    untimed call of each that checks the count of new tokens."""
    generate, _ = ENGINES[job["engine"]](job)
    short, long_ = job["prompt_ids"], job["prefill_ids"]
    n = job["tokens"] + 1
    for ids, count in ((short, 1), (short, n), (long_, 1)):
        made = generate(ids, count)
        if made != count:
            raise RuntimeError(f"{job['engine']} made {made} new tokens, not {count}")
    one = _median_time(lambda: generate(short, 1), job["runs"])
    many = _median_time(lambda: generate(short, n), job["runs"])
    ttft = _median_time(lambda: generate(long_, 1), job["runs"])
    return {"one": one, "many": many, "ttft": ttft}


def cold_worker(job: dict) -> dict:
    """What a user's process does: load, tokenize a short prompt with the engine's own tokenizer,
    make one new token (the caller times the whole process)."""
    generate, tokenize = ENGINES[job["engine"]](job)
    return {"tokens": generate(tokenize(COLD_PROMPT), 1)}


def worker_main(job_file: str) -> None:
    """Run the job in `job_file` and print its result as one JSON line."""
    job = json.loads(Path(job_file).read_text())
    os.environ["OMP_NUM_THREADS"] = str(job["threads"])
    result = cold_worker(job) if job["mode"] == "cold" else timed_worker(job)
    print(json.dumps(result), flush=True)


# -- models: built and converted by this interpreter (the repo's) or the peers' own ------------


def build_model(shape: str, directory: Path) -> int:
    """Save a random-weight model of `shape` and a byte-level BPE tokenizer of its vocabulary size
    (learned from Python's standard library, so every engine's tokenizer code has real merges to
    read); returns the parameter count."""
    import glob
    import sysconfig

    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    vocab = SHAPES[shape]["vocab_size"]
    files = sorted(glob.glob(sysconfig.get_paths()["stdlib"] + "/**/*.py", recursive=True))

    def texts():
        for file in files:
            try:
                yield Path(file).read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                pass

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=[EOS],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(texts(), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token=EOS, pad_token=EOS, bos_token=EOS, unk_token=EOS
    )
    torch.manual_seed(0)
    if SHAPES[shape]["arch"] == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel

        config = GPT2Config(
            vocab_size=vocab, n_positions=1024, n_embd=768, n_layer=6, n_head=12, bos_token_id=0, eos_token_id=0
        )
        model = GPT2LMHeadModel(config)
    else:
        from transformers import LlamaConfig, LlamaForCausalLM

        config = LlamaConfig(
            vocab_size=vocab,
            hidden_size=576,
            intermediate_size=1536,
            num_hidden_layers=30,
            num_attention_heads=9,
            num_key_value_heads=3,
            max_position_embeddings=2048,
            rope_theta=100000.0,
            rms_norm_eps=1e-5,
            tie_word_embeddings=True,
            bos_token_id=0,
            eos_token_id=0,
        )
        model = LlamaForCausalLM(config)
    model.save_pretrained(directory)
    fast.save_pretrained(directory)
    return sum(p.numel() for p in model.parameters())


def prompt_ids(directory: Path) -> tuple[list[int], list[int]]:
    """The short prompt's ids and a 500-token prompt's (standard-library source, cut at 500)."""
    import inspect

    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
    long_text = inspect.getsource(argparse)
    long_ids = tokenizer.encode(long_text).ids[:PREFILL_TOKENS]
    assert len(long_ids) == PREFILL_TOKENS, len(long_ids)
    return tokenizer.encode(PROMPT).ids, long_ids


def run_checked(command: list[str], **kwargs) -> str:
    """Run `command`; its stdout, or RuntimeError with the end of its stderr."""
    done = subprocess.run(command, capture_output=True, text=True, **kwargs)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"exit {done.returncode}: {' / '.join(tail)[-400:]}")
    return done.stdout


def convert(key: str, hf: Path, work: Path, pythons: dict[str, str], repo: Path, threads: int) -> Path:
    """The model file or folder `key` runs, converted once (reused when `work` already has it)."""
    path = PATHS[key]
    python = pythons[path.python]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    if path.engine == "pytorch":
        return hf
    if path.engine == "mtnsails":
        out = work / "mtnsails"
        if not (out / "mtnsails.json").exists():
            command = [python, "main.py", "convert", "--model-path", str(hf), "--onnx-output", str(out)]
            run_checked([*command, "--quantize", "all", "--quiet"], cwd=repo, env=env)
        return out
    if path.engine == "llamacpp":
        out = work / f"gguf-{path.precision}"
        if not any(out.glob("*.gguf")):
            command = [python, "main.py", "convert", "--model-path", str(hf), "--format", "gguf"]
            command += ["--gguf-type", path.precision, "--gguf-output", str(out), "--quiet"]
            run_checked(command, cwd=repo, env=env)
        return next(out.glob("*.gguf"))
    if path.engine == "genai":
        out = work / "genai-int4"
        if not (out / "genai_config.json").exists():
            command = [python, "-m", "onnxruntime_genai.models.builder", "-i", str(hf), "-o", str(out)]
            run_checked([*command, "-p", "int4", "-e", "cpu", "-c", str(work / "genai-cache")], env=env)
        config_file = out / "genai_config.json"
        config = json.loads(config_file.read_text())  # the same thread count as every other engine
        config["model"]["decoder"].setdefault("session_options", {})["intra_op_num_threads"] = threads
        config_file.write_text(json.dumps(config, indent=4))
        return out
    out = work / "ct2-int8"
    if not (out / "model.bin").exists():
        command = [python, "-m", "ctranslate2.converters.transformers", "--model", str(hf)]
        run_checked([*command, "--output_dir", str(out), "--quantization", "int8", "--force"], env=env)
    return out


def run_worker(python: str, job: dict, work: Path) -> tuple[dict, float]:
    """Run one job in a fresh process of `python`: its JSON result and the process' wall time."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="job-", dir=work, delete=False) as file:
        json.dump(job, file)  # a file of its own: another run on the same --work cannot swap it
    job_file = Path(file.name)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS=str(job["threads"]))
    start = time.perf_counter()
    try:
        output = run_checked([python, str(Path(__file__).resolve()), "--worker", str(job_file)], env=env)
    finally:
        job_file.unlink()
    return json.loads(output.strip().splitlines()[-1]), time.perf_counter() - start


def cold_start(key: str, python: str, job: dict, work: Path, repo: Path) -> float:
    """Seconds from process start to exit for one new token after a short prompt: mtnsails' is
    `main.py chat --prompt ... --max-tokens 1` itself, a peer's a process doing the same."""
    if PATHS[key].engine != "mtnsails":
        return run_worker(python, {**job, "mode": "cold"}, work)[1]
    command = [python, "main.py", "chat", "--model-path", job["model"], "--precision", job["precision"]]
    command += ["--prompt", COLD_PROMPT, "--max-tokens", "1", "--temperature", "0", "--repetition-penalty", "1"]
    command += ["--threads", str(job["threads"])]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    start = time.perf_counter()
    run_checked(command, cwd=repo, env=env)
    return time.perf_counter() - start


def measure_shape(shape: str, args: argparse.Namespace, work: Path, pythons: dict[str, str], threads: int) -> dict:
    """Build, convert and time every selected path on `shape`; the shape's JSON record."""
    work.mkdir(parents=True, exist_ok=True)
    hf = work / "hf"
    if not (hf / "config.json").exists():
        start = time.perf_counter()
        count = build_model(shape, hf)
        print(f"built {shape}: {count / 1e6:.1f}M parameters in {time.perf_counter() - start:.0f} s", flush=True)
    short, long_ = prompt_ids(hf)
    results: dict[str, Result] = {}
    jobs: dict[str, dict] = {}
    for key in args.paths:
        path = PATHS[key]
        result = results[key] = Result(key, path.label)
        missing = engine_missing(pythons[path.python], path.module)
        if missing:
            result.status = missing
            continue
        if path.engine == "genai" and SHAPES[shape]["arch"] == "gpt2":
            result.status = "no GPT-2 in its model builder"
            continue
        start = time.perf_counter()
        try:
            model = convert(key, hf, work, pythons, args.repo, threads)
        except (RuntimeError, OSError, StopIteration) as error:
            result.status = f"failed: conversion: {str(error)[-160:]}"
            continue
        print(f"{path.label}: {model.name} ready in {time.perf_counter() - start:.0f} s", flush=True)
        jobs[key] = dict(
            engine=path.engine,
            precision=path.precision,
            model=str(model),
            source=str(hf),
            repo=str(args.repo.resolve()),
            threads=threads,
            repack=args.llama_repack,
            runs=args.runs,
            tokens=args.tokens,
            prompt_ids=short,
            prefill_ids=long_,
            mode="timed",
        )
    load = [os.getloadavg()[0]]  # 1-minute load average before the rounds and after each
    for round_ in range(args.rounds):  # the paths take turns, so a burst of load hits them alike
        for key, job in jobs.items():
            result, python = results[key], pythons[PATHS[key].python]
            try:
                timed, _ = run_worker(python, job, work)
                result.per_token.append(per_token_seconds(timed["one"], timed["many"], args.tokens))
                result.ttft.append(timed["ttft"])
                result.cold.append(cold_start(key, python, job, work, args.repo))
                print(
                    f"  {result.label}: {result.per_token[-1] * 1e3:.2f} ms/token, "
                    f"TTFT@{PREFILL_TOKENS} {result.ttft[-1] * 1e3:.0f} ms, cold start {result.cold[-1]:.2f} s",
                    flush=True,
                )
            except (RuntimeError, KeyError, ValueError) as error:
                print(f"{result.label}: round {round_ + 1} failed: {error}", flush=True)
                if not result.per_token:
                    result.status = f"failed: {str(error)[-160:]}"
        load.append(os.getloadavg()[0])
        print(f"round {round_ + 1}/{args.rounds} done; load average {load[-1]:.2f}", flush=True)
    table_rows = rows(list(results.values()))
    return {
        "shape": shape,
        "model": SHAPES[shape]["label"],
        "prompt_tokens": len(short),
        "load_average_1min": load,
        "rows": table_rows,
    }


def host_line() -> str:
    """The CPU model, its vector flags and its physical cores: printed before any figure."""
    from mtnsails.core.cpu import cpu_model, physical_cores, vector_flags

    flags = " ".join(vector_flags()) or "none of avx2/avx512/vnni/amx"
    return f"CPU: {cpu_model()}; vector flags: {flags}; {physical_cores()} physical cores"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker_main(args.worker)
        return 0
    sys.path.insert(0, str(args.repo.resolve()))
    from mtnsails.core.cpu import physical_cores

    threads = args.threads or physical_cores()
    print(host_line(), flush=True)
    print(f"load average (1, 5, 15 min) at the start: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    pythons = {
        "self": sys.executable,
        "llama": args.llama_python or sys.executable,
        "genai": args.genai_python,
        "ct2": args.ct2_python,
    }
    shapes = ["llama", "gpt2"] if args.shape == "both" else [args.shape]
    work = args.work or Path(tempfile.mkdtemp(prefix="peers_bench_"))
    record = {"host": host_line(), "threads": threads, "rounds": args.rounds, "runs": args.runs, "shapes": []}
    try:
        for shape in shapes:
            found = measure_shape(shape, args, work / shape, pythons, threads)
            record["shapes"].append(found)
            plural = "s" if threads > 1 else ""
            print(
                f"\n{found['model']}: batch 1, greedy, {threads} thread{plural} per engine, per token from "
                f"{args.tokens + 1} vs 1 new tokens after a {found['prompt_tokens']}-token prompt; "
                f"median of {args.rounds} rounds x {args.runs} runs\n"
            )
            print(markdown_table(found["rows"]), flush=True)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    record["load_average_end"] = os.getloadavg()
    print(f"\nload average (1, 5, 15 min) at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.json:
        args.json.write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
