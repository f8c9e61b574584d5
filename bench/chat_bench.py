"""Chat speed on a distilgpt2-sized model (random weights, no download): tokens/second at batch 1.

    python bench/chat_bench.py [--tokens 64] [--runs 3] [--rounds 2]

Builds GPT2Config(n_layer=6, n_embd=768, n_head=12, vocab_size=50257) with random weights and the
embedded byte-level tokenizer, exports it with mtnsails' converter (fp32 + int8), then times 64
greedy new tokens (EOS disabled, so every path makes exactly 64) for PyTorch `generate`, optimum's
`ORTModelForCausalLM.generate`, and `ChatInterface` fp32 and int8; finally the wall time of a cold
`main.py chat --prompt ... --max-tokens 1` process with the embedded model (an upper bound of the
time to the first token). Each path runs in its own process (--rounds processes per path, taking
turns); each process reports its best of --runs after one warm-up run.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

PROMPT = "How do I make a small chat model answer quickly on an ordinary CPU?"


def build_distilgpt2_sized(directory: Path) -> None:
    """Save a random-weight GPT-2 the size of distilgpt2 (81.9M parameters) with a tokenizer."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from mtnsails.models import build_embedded_tokenizer

    tokenizer = build_embedded_tokenizer([PROMPT])
    eos = tokenizer.eos_token_id
    config = GPT2Config(n_layer=6, n_embd=768, n_head=12, vocab_size=50257, n_positions=1024,
                        bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)


def best_time(run, runs: int) -> float:
    """Fastest of `runs` calls after one warm-up call (the run least disturbed by other processes)."""
    run()
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def pytorch_runner(model_dir: Path, ids: list[int], tokens: int):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    input_ids = torch.tensor([ids])
    kwargs = dict(attention_mask=torch.ones_like(input_ids), do_sample=False, max_new_tokens=tokens,
                  min_new_tokens=tokens, pad_token_id=0)

    def run():
        with torch.no_grad():
            assert model.generate(input_ids, **kwargs).shape[1] == len(ids) + tokens

    return run


def optimum_runner(onnx_dir: Path, ids: list[int], tokens: int):
    import torch
    from optimum.onnxruntime import ORTModelForCausalLM

    model = ORTModelForCausalLM.from_pretrained(onnx_dir, file_name="model.onnx")
    input_ids = torch.tensor([ids])
    kwargs = dict(attention_mask=torch.ones_like(input_ids), do_sample=False, max_new_tokens=tokens,
                  min_new_tokens=tokens, pad_token_id=0)

    def run():
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # otherwise torch's and onnxruntime's thread pools fight (measured: 43.8 vs 77.9 tok/s)
        try:
            assert model.generate(input_ids, **kwargs).shape[1] == len(ids) + tokens
        finally:
            torch.set_num_threads(threads)

    return run


def chat_runner(onnx_dir: Path, setting: tuple[str, int | None], tokens: int):
    from mtnsails.chat import ChatInterface

    precision, threads = setting
    chat = ChatInterface(onnx_dir, precision=precision, threads=threads)
    chat.eos_token_id = None  # random weights: make every run produce exactly `tokens` tokens

    def run():
        chat.generate_response(PROMPT, max_new_tokens=tokens, do_sample=False, repetition_penalty=1.0)
        assert chat.last_stats.new_tokens == tokens, chat.last_stats

    return run


def bench_cold_start(workdir: Path, runs: int) -> float:
    """Seconds from process start to exit of `main.py chat --prompt` with 1 new token."""
    from mtnsails.models import build_embedded_model
    from mtnsails.onnx_converter import ONNXConverter

    model, tokenizer = build_embedded_model([PROMPT])
    model.save_pretrained(workdir / "tiny")
    tokenizer.save_pretrained(workdir / "tiny")
    ONNXConverter(workdir / "tiny", quiet=True).convert_to_onnx(workdir / "tiny_onnx")
    command = [sys.executable, str(REPO_ROOT / "main.py"), "chat", "--model-path", str(workdir / "tiny_onnx"),
               "--prompt", "Hello!", "--max-tokens", "1", "--temperature", "0"]

    def run():
        subprocess.run(command, check=True, capture_output=True, cwd=REPO_ROOT)

    return best_time(run, runs)


PATHS = {  # name: (runner factory, model sub-directory, extra argument)
    "PyTorch generate": (pytorch_runner, "model", None),
    "ORTModelForCausalLM.generate (torch 1 thread)": (optimum_runner, "onnx", None),
    "ChatInterface fp32": (chat_runner, "onnx", ("fp32", None)),
    "ChatInterface int8": (chat_runner, "onnx", ("int8", None)),
    # One thread: what a machine busy with other work gets (spinning threads wait on preempted ones).
    "ChatInterface fp32, 1 thread": (chat_runner, "onnx", ("fp32", 1)),
    "ChatInterface int8, 1 thread": (chat_runner, "onnx", ("int8", 1)),
}


def worker(name: str, work: Path, tokens: int, runs: int) -> None:
    """Time one path in this process and print its tokens/s (each path gets a clean process:
    torch's spinning OpenMP threads would otherwise slow down whatever runs after it)."""
    factory, subdirectory, extra = PATHS[name]
    if factory is chat_runner:
        run = chat_runner(work / subdirectory, extra, tokens)
    else:
        from mtnsails.chat import ChatInterface

        ids = ChatInterface(work / "onnx", precision="fp32").prompt_ids(PROMPT)
        run = factory(work / subdirectory, ids, tokens)
    print(tokens / best_time(run, runs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3, help="timed runs per process")
    parser.add_argument("--rounds", type=int, default=2, help="processes per path, taking turns")
    parser.add_argument("--worker", choices=PATHS, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.work, args.tokens, args.runs)
        return
    from mtnsails.cpu import physical_cores
    from mtnsails.onnx_converter import ONNXConverter

    with tempfile.TemporaryDirectory(prefix="chat_bench_") as tmp:
        work = Path(tmp)
        build_distilgpt2_sized(work / "model")
        start = time.perf_counter()
        ONNXConverter(work / "model").convert_to_onnx(work / "onnx", quantize="int8")
        print(f"export + int8 quantization: {time.perf_counter() - start:.1f} s")
        print(f"{physical_cores()} physical cores, {args.tokens} new tokens, best of "
              f"{args.rounds} processes x {args.runs} runs per path")
        results = {name: 0.0 for name in PATHS}
        for _ in range(args.rounds):  # the paths take turns, so a burst of load hits them alike
            for name in PATHS:
                command = [sys.executable, __file__, "--worker", name, "--work", str(work),
                           "--tokens", str(args.tokens), "--runs", str(args.runs)]
                output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
                results[name] = max(results[name], float(output.split()[-1]))
        baseline = results["PyTorch generate"]
        print("| path | tokens/s | vs PyTorch |\n|---|---|---|")
        for name, speed in results.items():
            print(f"| {name} | {speed:.1f} | {speed / baseline:.2f}x |")
        cold = bench_cold_start(work, args.runs)
        print(f"cold `main.py chat --prompt` (embedded model, 1 new token), process start to exit: {cold:.2f} s")
        print("load average (1, 5, 15 min): " + ", ".join(f"{load:.1f}" for load in os.getloadavg()))


if __name__ == "__main__":
    main()
