"""Chat speed on a distilgpt2-sized model (random weights, no download): tokens/second at batch 1.

    python bench/chat_bench.py [--tokens 64] [--runs 3]

Builds GPT2Config(n_layer=6, n_embd=768, n_head=12, vocab_size=50257) with random weights and the
embedded byte-level tokenizer, exports it with mtnsails' converter (fp32 + int8), then times 64
greedy new tokens (EOS disabled, so every path makes exactly 64) for PyTorch `generate`, optimum's
`ORTModelForCausalLM.generate`, and `ChatInterface` fp32 and int8; finally the wall time of a cold
`main.py chat --prompt ... --max-tokens 1` process with the embedded model (an upper bound of the
time to the first token). Timings are the median of --runs after one warm-up run.
"""

from __future__ import annotations

import argparse
import os
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

PROMPT = "How do I make a small chat model answer quickly on an ordinary CPU?"
PYTORCH_BASELINE = 32.6  # tokens/s of PyTorch generate measured in shared/README.md §3


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


def timed(function, runs: int) -> float:
    """Median seconds of `runs` calls after one warm-up call."""
    function()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        function()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def bench_pytorch(model_dir: Path, ids: list[int], tokens: int, runs: int) -> float:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    input_ids = torch.tensor([ids])
    kwargs = dict(attention_mask=torch.ones_like(input_ids), do_sample=False, max_new_tokens=tokens,
                  min_new_tokens=tokens, pad_token_id=0)

    def run():
        with torch.no_grad():
            assert model.generate(input_ids, **kwargs).shape[1] == len(ids) + tokens

    return tokens / timed(run, runs)


def bench_optimum(onnx_dir: Path, ids: list[int], tokens: int, runs: int) -> float:
    import torch
    from optimum.onnxruntime import ORTModelForCausalLM

    torch.set_num_threads(1)  # otherwise torch's and onnxruntime's thread pools fight (shared §3)
    model = ORTModelForCausalLM.from_pretrained(onnx_dir, file_name="model.onnx")
    input_ids = torch.tensor([ids])
    kwargs = dict(attention_mask=torch.ones_like(input_ids), do_sample=False, max_new_tokens=tokens,
                  min_new_tokens=tokens, pad_token_id=0)

    def run():
        assert model.generate(input_ids, **kwargs).shape[1] == len(ids) + tokens

    speed = tokens / timed(run, runs)
    torch.set_num_threads(os.cpu_count() or 1)
    return speed


def bench_chat(onnx_dir: Path, precision: str, tokens: int, runs: int) -> float:
    from mtnsails.chat import ChatInterface

    chat = ChatInterface(onnx_dir, precision=precision)
    chat.eos_token_id = None  # random weights: make every run produce exactly `tokens` tokens

    def run():
        chat.generate_response(PROMPT, max_new_tokens=tokens, do_sample=False, repetition_penalty=1.0)
        assert chat.last_stats.new_tokens == tokens, chat.last_stats

    return tokens / timed(run, runs)


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

    return timed(run, runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    from mtnsails.generation import physical_cores
    from mtnsails.onnx_converter import ONNXConverter

    with tempfile.TemporaryDirectory(prefix="chat_bench_") as tmp:
        work = Path(tmp)
        build_distilgpt2_sized(work / "model")
        start = time.perf_counter()
        ONNXConverter(work / "model").convert_to_onnx(work / "onnx", quantize="int8")
        print(f"export + int8 quantization: {time.perf_counter() - start:.1f} s")
        from mtnsails.chat import ChatInterface

        ids = ChatInterface(work / "onnx", precision="fp32").prompt_ids(PROMPT)
        print(f"{physical_cores()} physical cores, prompt {len(ids)} tokens, {args.tokens} new tokens, "
              f"median of {args.runs}")
        results = {
            "PyTorch generate": bench_pytorch(work / "model", ids, args.tokens, args.runs),
            "ORTModelForCausalLM.generate (torch 1 thread)": bench_optimum(work / "onnx", ids, args.tokens,
                                                                          args.runs),
            "ChatInterface fp32": bench_chat(work / "onnx", "fp32", args.tokens, args.runs),
            "ChatInterface int8": bench_chat(work / "onnx", "int8", args.tokens, args.runs),
        }
        baseline = results["PyTorch generate"]
        print("| path | tokens/s | vs PyTorch |\n|---|---|---|")
        for name, speed in results.items():
            print(f"| {name} | {speed:.1f} | {speed / baseline:.2f}x |")
        cold = bench_cold_start(work, args.runs)
        print(f"cold `main.py chat --prompt` (embedded model, 1 new token), process start to exit: {cold:.2f} s")


if __name__ == "__main__":
    main()
