"""`serve` throughput on a distilgpt2-sized model (random weights, no download): continuous batching.

    flock /tmp/mtnsails-big.lock python bench/serve_bench.py [--tokens 64] [--requests 4] [--clients 1 4 8] [--rounds 3]

Builds the random-weight distilgpt2-sized model of bench/chat_bench.py (its embedding rows of ids
the small tokenizer lacks zeroed, so every sampled token is text the server can stream), exports
it (fp32 + int8), starts `main.py serve` on it (int8), then for each number of concurrent clients
runs that many streaming clients at once, each asking --requests answers of --tokens new tokens
one after the other. The clients are the standard library's HTTP client in threads (one
`json.loads` per event), so that they take as little as possible of the CPU they share with the
server. The numbers of clients take turns, --rounds times, and the best round of each is reported (the one
other jobs on the machine disturbed least): the aggregate generated tokens/s (all clients'
tokens over the wall time), its ratio to one client, and the p50/p95 time to the first token
(request sent -> first text received).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from chat_bench import PROMPT, build_distilgpt2_sized  # noqa: E402  (bench/ is this script's directory)


def known_tokens_only(directory: Path) -> None:
    """Zero the (tied) embedding rows of ids the tokenizer lacks: their logits become 0 while
    known tokens' spread around it, so sampling picks tokens that decode to text."""
    import torch
    from transformers import AutoTokenizer, GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(directory)
    with torch.no_grad():
        model.transformer.wte.weight[len(AutoTokenizer.from_pretrained(directory)) :] = 0
    model.save_pretrained(directory)


def start_server(onnx_dir: Path, max_batch: int, threads: int | None) -> tuple[subprocess.Popen, str]:
    """`main.py serve` on a free port; returns the process and its base URL once it listens."""
    command = [
        sys.executable,
        str(REPO_ROOT / "main.py"),
        "serve",
        "--model-path",
        str(onnx_dir),
        "--port",
        "0",
        "--precision",
        "int8",
        "--max-batch",
        str(max_batch),
    ]
    process = subprocess.Popen(
        command + (["--threads", str(threads)] if threads else []), cwd=REPO_ROOT, stderr=subprocess.PIPE, text=True
    )
    line = process.stderr.readline()
    match = re.search(r"on (http://\S+)/v1", line)
    if not match:
        process.kill()
        raise SystemExit(f"serve did not start: {line}{process.stderr.read()}")
    threading.Thread(target=process.stderr.read, daemon=True).start()  # keep the pipe drained
    return process, match.group(1)


def one_request(connection: http.client.HTTPConnection, tokens: int, seed: int) -> tuple[float, int]:
    """Stream one answer; return (seconds to the first text, completion tokens).

    The standard library's HTTP client and one `json.loads` per event: the clients share the
    server's two cores, and httpx's asynchronous streams took 4x the CPU per event (0.45 against
    0.12 ms), time the server's threads then lost.
    """
    body = json.dumps(
        {
            "model": "bench",
            "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": tokens,
            "seed": seed,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    )
    start = time.perf_counter()
    first = None
    usage = 0
    connection.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    response = connection.getresponse()
    if response.status != 200:
        raise RuntimeError(f"serve answered {response.status}: {response.read()[:300]!r}")
    for line in response:  # lines of the event stream, the chunked transfer encoding undone
        if not line.startswith(b"data: {"):
            continue
        event = json.loads(line[6:])
        if first is None and event["choices"] and event["choices"][0]["delta"].get("content"):
            first = time.perf_counter() - start
        if event.get("usage"):
            usage = event["usage"]["completion_tokens"]
    return (first if first is not None else time.perf_counter() - start), usage


def run_clients(url: str, clients: int, requests: int, tokens: int) -> tuple[float, list[float]]:
    """`clients` concurrent clients (a thread and a keep-alive connection each) x `requests`
    answers each: (aggregate tokens/s, first-token times)."""
    address = urlsplit(url)
    results: list[tuple[float, int]] = []
    errors: list[Exception] = []  # a thread's exception would only be printed, not raised

    def client(number: int) -> None:
        connection = http.client.HTTPConnection(address.hostname, address.port, timeout=600)
        try:
            for index in range(requests):
                results.append(one_request(connection, tokens, seed=number * 1000 + index))
        except Exception as error:
            errors.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=client, args=(number,)) for number in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - start
    if errors:
        raise SystemExit(f"{len(errors)} of {clients} clients failed; the first: {errors[0]}")
    return sum(count for _, count in results) / seconds, [first for first, _ in results]


def cpu_description() -> str:
    from mtnsails.core.cpu import cpu_model, physical_cores, vector_flags

    return (
        f"{cpu_model()}, {physical_cores()} physical cores, "
        f"flags: {' '.join(vector_flags()) or 'none of avx2/avx512/amx'}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=64, help="new tokens per answer")
    parser.add_argument("--requests", type=int, default=4, help="answers per client, one after the other")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--rounds", type=int, default=3, help="times each number of clients runs (best kept)")
    parser.add_argument("--threads", type=int, help="serve --threads (default: physical cores)")
    parser.add_argument("--model", type=Path, help="reuse this ONNX directory (default: build one)")
    args = parser.parse_args()
    from mtnsails.export.converter import ONNXConverter

    with tempfile.TemporaryDirectory(prefix="serve_bench_") as tmp:
        work = Path(tmp)
        onnx_dir = args.model or work / "onnx"
        if args.model is None:
            build_distilgpt2_sized(work / "model")
            known_tokens_only(work / "model")
            ONNXConverter(work / "model", quiet=True).convert_to_onnx(onnx_dir, quantize="int8")
        print(cpu_description())
        print(
            f"int8, {args.tokens} new tokens per answer, {args.requests} answers per client, "
            f"--max-batch {max(args.clients)}, --threads {args.threads or 'physical cores'}"
        )
        process, url = start_server(onnx_dir, max(args.clients), args.threads)
        try:
            run_clients(url, 1, 1, 8)  # warm-up: first-run allocations
            # Client counts take turns, --rounds times: other jobs' load comes and goes, and the
            # best round of each count is the one it disturbed least (as chat_bench's best_time).
            best: dict[int, tuple[float, list[float]]] = {}
            for _ in range(args.rounds):
                for clients in args.clients:
                    speed, firsts = run_clients(url, clients, args.requests, args.tokens)
                    print(f"  {clients} clients: {speed:.1f} tokens/s", file=sys.stderr, flush=True)
                    if speed > best.get(clients, (0.0,))[0]:
                        best[clients] = speed, firsts
            print(f"best of {args.rounds} rounds per number of clients, TTFT from that round")
            print("| clients | aggregate tokens/s | vs 1 client | TTFT p50 | TTFT p95 |\n|---|---|---|---|---|")
            baseline = best[args.clients[0]][0]
            for clients in args.clients:
                speed, firsts = best[clients]
                print(
                    f"| {clients} | {speed:.1f} | {speed / baseline:.2f}x | {np.percentile(firsts, 50):.3f} s "
                    f"| {np.percentile(firsts, 95):.3f} s |",
                    flush=True,
                )
        finally:
            process.terminate()
            process.wait(timeout=30)
        print("load average (1, 5, 15 min): " + ", ".join(f"{load:.1f}" for load in os.getloadavg()))


if __name__ == "__main__":
    main()
