"""Does llama.cpp answer as the trained model does? The GGUF export against the ONNX fp32 model.

    python bench/gguf_bench.py [--model-path TRAINED --onnx-path ONNX] [--tokens 32] [--speed-tokens 64]

Without --model-path it trains the embedded `tiny` model on the packaged example conversations
(its default settings) and exports it to ONNX first, in a temporary folder (--keep DIR keeps it).
Then, for each GGUF type (f16, q8_0, q4_0): export, load in llama.cpp (llama-cpp-python), and
- tokenizer: llama.cpp's own tokenization (special tokens parsed) of every question and answer
  of the data, in the trained template, against the model's tokenizer.json;
- greedy answers: for the first --prompts questions, llama.cpp's greedy tokens (argmax of its
  logits, EOS ends) against the ONNX fp32 model's from mtnsails' chat decoder, the same prompt
  ids fed to both: prompts equal for all --tokens tokens, for the first 16, and where the others
  first differ;
- speed: batch-1 greedy decoding of --speed-tokens new tokens (EOS ignored), one thread, best of
  3, llama.cpp (extra buffer types off unless --extra-buffers) against the ONNX fp32 graph;
- where llama-server is found (--llama-server): the same questions asked through its OpenAI chat
  endpoint (the GGUF's chat template rendered by llama.cpp, greedy): answers equal to the ONNX
  model's, as text.
Installs nothing: without llama-cpp-python it says how to build it and exits 2.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")
REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

DATA = REPO_ROOT / "example_conversations.json"
BUILD_HINT = (
    "llama-cpp-python is not installed; it builds from source (about 20 minutes on 2 cores): "
    'CMAKE_ARGS="-DGGML_NATIVE=ON -DLLAMA_CURL=OFF" pip install llama-cpp-python==0.3.36'
)


def train_tiny(work: Path) -> tuple[Path, Path]:
    """The embedded model trained on the packaged data with its defaults, and its ONNX export."""
    from mtnsails.data.handler import ConversationDataHandler
    from mtnsails.export.converter import ONNXConverter
    from mtnsails.train.config import TrainingConfig
    from mtnsails.train.trainer import LLMTrainer

    model_dir, onnx_dir = work / "model", work / "onnx"
    start = time.perf_counter()
    trainer = LLMTrainer(config=TrainingConfig(model_name="tiny", output_dir=str(model_dir), quiet=True, seed=0))
    trainer.train_conversations(ConversationDataHandler.from_file(DATA).conversations, data_file=DATA)
    trainer.save_model()
    ONNXConverter(model_dir, quiet=True).convert_to_onnx(onnx_dir)
    print(f"trained and exported the tiny model in {time.perf_counter() - start:.0f} s")
    return model_dir, onnx_dir


def load_llama(llama_cpp, path: Path, extra_buffers: bool):
    """llama.cpp on the file, one thread, all logits kept. Its extra CPU buffer types (weight
    repacking, AMX) are off unless asked for: on a host whose CPU reports AMX (a VM here), a
    GGML_NATIVE build crashes decoding any Q8_0/Q4_0 file through them (SIGSEGV in
    llama-cpp-python 0.3.36, SIGILL in its llama-server), llama.cpp's own quantizer's too."""
    if not extra_buffers:
        defaults = llama_cpp.llama_cpp.llama_model_default_params

        def without_extra_buffers():
            params = defaults()
            params.use_extra_bufts = False
            return params

        llama_cpp.llama_cpp.llama_model_default_params = without_extra_buffers
    return llama_cpp.Llama(str(path), n_ctx=512, n_threads=1, n_batch=512, logits_all=True, verbose=False)


def llama_greedy(llm, prompt_ids: list[int], eos: int | None, count: int) -> list[int]:
    """llama.cpp's greedy tokens: argmax of its logits; EOS ends unless `eos` is None."""
    llm.reset()
    llm.eval(prompt_ids)
    tokens = []
    for _ in range(count):
        token = int(llm.scores[llm.n_tokens - 1].argmax())
        tokens.append(token)
        if token == eos:
            break
        llm.eval([token])
    return tokens


def server_answers(binary: str, path: Path, questions: list[str], tokens: int, extra_buffers: bool) -> list[str]:
    """llama-server's greedy answers to `questions`, each asked alone through its OpenAI chat
    endpoint (the GGUF's own chat template, rendered by llama.cpp)."""
    import socket
    import subprocess
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [binary, "-m", str(path), "--port", str(port), "-t", "1", "-c", "512", "--no-webui"]
    command += [] if extra_buffers else ["--no-repack"]  # see load_llama
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        answers = []
        for question in questions:
            body = {
                "messages": [{"role": "user", "content": question}],
                "temperature": 0,
                "top_k": 1,
                "repeat_penalty": 1.0,
                "max_tokens": tokens,
            }
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/v1/chat/completions",
                data=json.dumps(body).encode(),
                headers={"Content-Type": "application/json"},
            )
            reply = json.loads(urllib.request.urlopen(request, timeout=60).read())
            answers.append(reply["choices"][0]["message"]["content"].strip())
        return answers
    finally:
        server.terminate()
        server.wait(timeout=30)


def first_difference(a: list[int], b: list[int]) -> int | None:
    """Where two token lists first differ (None when they are equal)."""
    if a == b:
        return None
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def best_of(run, rounds: int = 3) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-path", help="trained model directory (default: train the tiny model)")
    parser.add_argument("--onnx-path", help="its ONNX export (needed with --model-path)")
    parser.add_argument("--prompts", type=int, default=20)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--speed-tokens", type=int, default=64)
    parser.add_argument("--keep", help="keep the trained model and the exports in this folder")
    parser.add_argument(
        "--extra-buffers", action="store_true", help="let llama.cpp repack weights (AMX etc.; see load_llama)"
    )
    parser.add_argument(
        "--llama-server",
        default=os.environ.get("LLAMA_SERVER") or shutil.which("llama-server"),
        help="llama.cpp's server binary: also ask it the questions through its chat endpoint "
        "(default: $LLAMA_SERVER or llama-server on PATH)",
    )
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
    try:
        import llama_cpp
    except ImportError:
        print(f"error: {BUILD_HINT}", file=sys.stderr)
        return 2
    if bool(args.model_path) != bool(args.onnx_path):
        print("error: give --model-path and --onnx-path together", file=sys.stderr)
        return 2

    from tokenizers import Tokenizer

    from mtnsails.data.handler import ConversationDataHandler
    from mtnsails.export.gguf import GGUF_TYPES, export_gguf
    from mtnsails.inference.generation import OnnxDecoder, generate_tokens
    from mtnsails.inference.generation_config import GenerationConfig
    from mtnsails.model_dir.template import ChatTemplate

    work = Path(args.keep or tempfile.mkdtemp(prefix="gguf-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    model_dir, onnx_dir = (Path(args.model_path), Path(args.onnx_path)) if args.model_path else train_tiny(work)
    meta = json.loads((onnx_dir / "mtnsails.json").read_text())
    eos, template = meta["eos_token_id"], ChatTemplate.from_dict(meta.get("template"))
    tokenizer = Tokenizer.from_file(str(onnx_dir / "tokenizer.json"))
    conversations = ConversationDataHandler.from_file(DATA).conversations
    texts = [template.prompt_text(c["input"]) for c in conversations] + [
        template.response_text(c["output"]) for c in conversations
    ]
    questions = [c["input"] for c in conversations][: args.prompts]
    prompts = [tokenizer.encode(template.prompt_text(q), add_special_tokens=False).ids for q in questions]

    decoder = OnnxDecoder(onnx_dir / "model.onnx", shared_cache=meta.get("kv_cache") == "shared")
    greedy = GenerationConfig(max_new_tokens=args.tokens, do_sample=False, repetition_penalty=1.0)
    reference = [list(generate_tokens(decoder, ids, greedy, eos_token_id=eos)) for ids in prompts]
    reference_texts = [tokenizer.decode([token for token in tokens if token != eos]).strip() for tokens in reference]
    fixed = GenerationConfig(max_new_tokens=args.speed_tokens, do_sample=False, repetition_penalty=1.0)
    results = {"prompts": len(prompts), "tokens": args.tokens, "onnx_tokens_per_s": {}}
    for precision, file in meta["files"].items():  # every graph the ONNX directory holds
        graph = OnnxDecoder(onnx_dir / file, shared_cache=meta.get("kv_cache") == "shared")
        seconds = best_of(lambda graph=graph: list(generate_tokens(graph, prompts[0], fixed, eos_token_id=None)))
        results["onnx_tokens_per_s"][precision] = args.speed_tokens / seconds
    speeds = ", ".join(f"{name} {speed:.0f}" for name, speed in results["onnx_tokens_per_s"].items())
    print(f"cpu: {os.cpu_count()} cores; ONNX (mtnsails' decoder, tokens/s): {speeds}")
    print(
        "| GGUF | size | export | tokenizer equal | all tokens equal | first 16 equal | first differences at "
        "| llama.cpp tokens/s | llama-server answers equal |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for gguf_type in GGUF_TYPES:
        start = time.perf_counter()
        path = export_gguf(model_dir, work / f"gguf-{gguf_type}", gguf_type, quiet=True).gguf_file
        export_seconds = time.perf_counter() - start
        llm = load_llama(llama_cpp, path, args.extra_buffers)
        token_equal = sum(
            llm.tokenize(text.encode(), add_bos=False, special=True)
            == tokenizer.encode(text, add_special_tokens=False).ids
            for text in texts
        )
        answers = [llama_greedy(llm, ids, eos, args.tokens) for ids in prompts]
        row = {
            "size_mb": path.stat().st_size / 1e6,
            "export_s": export_seconds,
            "tokenizer_equal": f"{token_equal}/{len(texts)}",
            "all_equal": sum(a == r for a, r in zip(answers, reference)),
            "first16_equal": sum(a[:16] == r[:16] for a, r in zip(answers, reference)),
            "first_differences": [d for d in map(first_difference, answers, reference) if d is not None],
            "tokens_per_s": args.speed_tokens
            / best_of(lambda llm=llm: llama_greedy(llm, prompts[0], None, args.speed_tokens)),
        }
        if args.llama_server:
            served = server_answers(args.llama_server, path, questions, args.tokens, args.extra_buffers)
            row["server_equal"] = sum(a == b for a, b in zip(served, reference_texts))
        results[gguf_type] = row
        print(
            f"| {gguf_type} | {row['size_mb']:.1f} MB | {row['export_s']:.1f} s | {row['tokenizer_equal']} | "
            f"{row['all_equal']}/{len(prompts)} | {row['first16_equal']}/{len(prompts)} | "
            f"{', '.join(map(str, row['first_differences'])) or '-'} | {row['tokens_per_s']:.0f} | "
            f"{row.get('server_equal', '-')} |"
        )
        del llm
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
