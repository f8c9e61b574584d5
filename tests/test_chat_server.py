"""`main.py serve` as clients use it: a real server process driven by the official `openai` client."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
from conftest import REPO_ROOT, TINY_CONVERSATIONS, assert_one_line_error, run_cli

from mtnsails.inference.chat import ChatInterface
from mtnsails.inference.generation_config import GenerationConfig
from mtnsails.serve.server import APIError, parse_request

pytestmark = pytest.mark.slow
KEY = "test-key-123"
SINGLE = [c for c in TINY_CONVERSATIONS if "history" not in c]


class Server:
    """`main.py serve ... --port 0` in a subprocess that cannot import torch or transformers."""

    def __init__(self, model: Path, tmp_path: Path, *flags: str) -> None:
        blocked = tmp_path / "blocked_modules"
        for name in ("torch", "transformers"):
            (blocked / name).mkdir(parents=True, exist_ok=True)
            (blocked / name / "__init__.py").write_text(f"raise ImportError('serve imported {name}')\n")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocked), str(REPO_ROOT)])}
        self.process = subprocess.Popen(
            [sys.executable, str(REPO_ROOT / "main.py"), "serve", "--model-path", str(model), "--port", "0", *flags],
            cwd=REPO_ROOT,
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        line = self.process.stderr.readline()
        match = re.search(r"on (http://127\.0\.0\.1:\d+)/v1", line)
        if not match:
            self.process.kill()
            raise AssertionError(f"serve did not start: {line}{self.process.stderr.read()}")
        self.url = match.group(1)
        self.start_line = line
        self.stderr: list[str] = []
        self.reader = threading.Thread(target=lambda: self.stderr.extend(self.process.stderr), daemon=True)
        self.reader.start()

    def client(self, api_key: str = KEY) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=api_key, max_retries=0, timeout=60)

    def health(self) -> dict:
        return httpx.get(self.url + "/health").json()

    def wait_until(self, condition, what: str) -> dict:
        """Poll /health until `condition(health)` holds (bounded: the test fails, never hangs)."""
        for _ in range(600):
            health = self.health()
            if condition(health):
                return health
            time.sleep(0.05)
        raise AssertionError(f"server never reached: {what} ({health})")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        returncode = self.process.wait(timeout=30)
        self.reader.join(timeout=10)
        return returncode


@pytest.fixture(scope="module")
def server(tiny_onnx_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    running = Server(
        tiny_onnx_dir,
        tmp,
        "--precision",
        "fp32",
        "--api-key",
        KEY,
        "--log-conversations",
        "--log-file",
        str(tmp / "log.jsonl"),
        "--max-batch",
        "8",
    )
    running.log = tmp / "log.jsonl"
    yield running
    assert running.stop() == 0


def ask(client: openai.OpenAI, question: str, **settings):
    return client.chat.completions.create(
        model="onnx", messages=[{"role": "user", "content": question}], temperature=0, **settings
    )


def test_lists_the_model_and_reports_health(server, tiny_onnx_dir):
    assert [model.id for model in server.client().models.list()] == [tiny_onnx_dir.name]
    assert server.health()["status"] == "ok" and server.health()["precision"] == "fp32"


def test_greedy_answers_equal_chat(server, tiny_onnx_dir):
    question = SINGLE[3]["input"]
    chat = run_cli(
        "chat", "--model-path", str(tiny_onnx_dir), "--prompt", question, "--temperature", "0", "--precision", "fp32"
    )
    response = ask(server.client(), question)
    assert response.choices[0].message.content + "\n" == chat.stdout
    assert response.choices[0].finish_reason == "stop"
    usage = response.usage
    assert usage.prompt_tokens == len(ChatInterface(tiny_onnx_dir).prompt_ids(question))
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    for conversation in SINGLE:
        assert ask(server.client(), conversation["input"]).choices[0].message.content == conversation["output"]


def test_streaming_equals_the_answer(server):
    stream = ask(server.client(), "Hello!", stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    pieces = [chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices]
    assert len([piece for piece in pieces if piece]) > 3  # streamed piece by piece
    assert "".join(pieces) == ask(server.client(), "Hello!").choices[0].message.content
    assert [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices][-1] == "stop"
    assert chunks[-1].usage.completion_tokens > 3  # include_usage: a last chunk with the counts


def test_history_and_system_prompt_build_the_chat_prompt(server, tiny_onnx_dir):
    client = server.client()
    history = [
        {"role": "user", "content": "Which country is Paris in?"},
        {"role": "assistant", "content": "Paris is in France."},
        {"role": "user", "content": "And what is its largest river?"},
    ]
    answer = client.chat.completions.create(model="onnx", messages=history, temperature=0)
    assert answer.choices[0].message.content == "Its longest river is the Loire."
    system = "You answer questions about geography."
    with_system = client.chat.completions.create(
        model="onnx", messages=[{"role": "system", "content": system}, *history], temperature=0
    )
    chat = ChatInterface(tiny_onnx_dir, precision="fp32", system=system, generation=GenerationConfig(temperature=0))
    chat.history = [("Which country is Paris in?", "Paris is in France.")]
    assert with_system.choices[0].message.content == chat.reply("And what is its largest river?")
    assert with_system.usage.prompt_tokens == chat.last_stats.prompt_tokens > answer.usage.prompt_tokens
    expected = {
        "input": "And what is its largest river?",
        "output": with_system.choices[0].message.content,
        "history": [{"input": "Which country is Paris in?", "output": "Paris is in France."}],
        "system": system,
    }
    for _ in range(100):  # the exchange is logged just after the reply is sent
        records = [json.loads(line) for line in server.log.read_text().splitlines()]
        if any(expected.items() <= record.items() for record in records):
            break
        time.sleep(0.05)
    assert any(expected.items() <= record.items() for record in records), records[-3:]
    assert KEY not in server.log.read_text()


def test_max_tokens_and_stop_texts(server):
    cut = ask(server.client(), "Hello!", max_tokens=3)
    assert cut.choices[0].finish_reason == "length" and cut.usage.completion_tokens == 3
    assert cut.choices[0].message.content == "Hello! How"  # the client gets what was generated
    stopped = ask(server.client(), "What is the capital of France?", stop=["Paris", "zzz"])
    assert stopped.choices[0].message.content == "The capital of France is"
    assert stopped.choices[0].finish_reason == "stop"


def post(server, body, headers=None) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(
        server.url + "/v1/chat/completions",
        content=content,
        headers={"Authorization": f"Bearer {KEY}", **(headers or {})},
    )


QUESTION = [{"role": "user", "content": "Hello!"}]


@pytest.mark.parametrize(
    "body, status, param",
    [
        (b"{not json", 400, None),
        ([1, 2], 400, None),
        ({"model": "onnx"}, 400, "messages"),
        ({"messages": QUESTION, "n": 2}, 400, "n"),
        ({"messages": QUESTION, "tools": [{"type": "function", "function": {"name": "f"}}]}, 400, "tools"),
        ({"messages": QUESTION, "frequency_penalty": 0.5}, 400, "frequency_penalty"),
        ({"messages": QUESTION, "temperature": "hot"}, 400, "temperature"),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}, 400, "messages"),
        (b'{"messages": [{"role": "user", "content": "Hello!"}], "temperature": NaN}', 400, None),  # not JSON
        (b'{"messages": [{"role": "user", "content": "Hello!"}], "top_p": Infinity}', 400, None),
        ({"messages": QUESTION, "top_p": 0}, 400, "top_p"),
        ({"messages": QUESTION, "max_tokens": 100000}, 400, "messages"),  # beyond the context
        ({"messages": QUESTION, "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
        ({"messages": [{"role": "tool", "content": "x"}]}, 400, "messages"),
        ({"messages": [*QUESTION, {"role": "assistant", "content": "Hi"}]}, 400, "messages"),
        (b"{" + b" " * (1 << 20) + b"}", 413, None),
    ],
)
def test_bad_requests_get_openai_errors(server, body, status, param):
    response = post(server, body)
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["param"] == param
    assert error["message"] and error["type"] == "invalid_request_error"


def test_parse_request_refuses_non_finite_numbers_given_as_python_values():
    for name in ("temperature", "top_p"):
        with pytest.raises(APIError, match=f"'{name}' must be a finite number"):
            parse_request({"messages": QUESTION, name: float("nan")}, GenerationConfig())


def test_null_stream_and_the_developer_role_are_taken_as_openai_clients_send_them(server):
    body = {
        "messages": [{"role": "developer", "content": "Be brief."}, *QUESTION],
        "stream": None,
        "temperature": 0,
        "stream_options": None,
        "stop": None,
        "max_tokens": None,
    }
    response = post(server, body)
    assert response.status_code == 200, response.text
    job, stream, _ = parse_request(body, GenerationConfig())
    assert job.system == "Be brief." and stream is False


def test_a_body_whose_chunking_breaks_gets_400_and_leaves_no_traceback_in_the_log(server):
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        connection.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            + KEY.encode()
            + b'\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{"mes\r\nzz\r\n'
        )
        reply = connection.recv(4096)
    assert reply.startswith(b"HTTP/1.1 400")
    assert ask(server.client(), "Hello!").choices[0].message.content  # still serving
    time.sleep(0.2)  # the reader thread copies the log
    assert not any("Traceback" in line or "ClientDisconnect" in line for line in server.stderr), server.stderr


@pytest.mark.parametrize("port", ["70000", "-1"])
def test_a_port_out_of_range_is_a_one_line_error(tiny_onnx_dir, port):
    assert_one_line_error(
        run_cli("serve", "--model-path", str(tiny_onnx_dir), "--port", port), f"--port {port} is not a port"
    )


def test_unknown_routes_and_methods(server):
    assert httpx.get(server.url + "/v1/nothing").status_code == 404
    response = httpx.get(server.url + "/v1/chat/completions")
    assert response.status_code == 405 and response.json()["error"]["message"]


def test_api_key_is_required(server):
    with pytest.raises(openai.AuthenticationError) as refused:
        ask(server.client(api_key="wrong"), "Hello!")
    assert refused.value.status_code == 401 and refused.value.body["code"] == "invalid_api_key"
    assert httpx.get(server.url + "/v1/models").status_code == 401  # no key at all
    assert post(server, {"messages": QUESTION}, {"Authorization": "Bearer wrong"}).status_code == 401


def test_load_of_8_clients_is_answered_in_full(server):
    """8 concurrent clients x 25 requests: every answer arrives and is the trained one."""
    before = server.health()["served"]

    def client_run(number: int) -> list[bool]:
        client = server.client()
        results = []
        for index in range(25):
            conversation = SINGLE[(number + index) % len(SINGLE)]
            response = ask(client, conversation["input"], stream=index % 5 == 0)
            text = (
                "".join(chunk.choices[0].delta.content or "" for chunk in response if chunk.choices)
                if index % 5 == 0
                else response.choices[0].message.content
            )
            results.append(text == conversation["output"])
        return results

    with ThreadPoolExecutor(8) as pool:
        results = [ok for run in pool.map(client_run, range(8)) for ok in run]
    assert len(results) == 200 and all(results)
    assert server.health()["served"] - before == 200


# With these server defaults this request samples wildly and runs to its token limit (no EOS,
# no "User:"; the seed makes it reproducible), so it holds its batch slot for a while.
WILD = ("--temperature", "5", "--top-k", "0", "--top-p", "1")
LONG = {"messages": [{"role": "user", "content": "Tell me everything."}], "seed": 1, "max_tokens": 300}


def test_a_full_server_refuses_at_once_and_a_gone_client_frees_its_slot(tiny_onnx_dir, tmp_path):
    server = Server(tiny_onnx_dir, tmp_path, "--max-batch", "1", "--max-queue", "0", *WILD)
    try:
        client = server.client()
        with httpx.stream("POST", server.url + "/v1/chat/completions", json={**LONG, "stream": True}) as held:
            lines = held.iter_lines()  # (kept: a dropped line iterator closes the connection)
            next(lines)  # the answer has started: the only slot is taken
            with pytest.raises(openai.APIStatusError) as refused:
                ask(client, "Hello!")
            assert refused.value.status_code == 503 and refused.value.body["code"] == "server_busy"
        # The client left mid-answer: the slot is freed without waiting for the 300 tokens.
        health = server.wait_until(lambda health: health["active"] == 0, "the slot freed")
        assert health["cancelled"] == 1 and health["served"] == 0
        assert ask(client, "Hello!").choices[0].message.content == "Hello! How can I help you today?"
    finally:
        assert server.stop() == 0


def test_the_start_line_names_the_log(server):
    assert f"logging exchanges to {server.log}" in server.start_line


def test_the_servers_log_defaults_to_json_lines():
    from mtnsails.cli import build_parser

    args = build_parser("serve").parse_args(["serve", "--model-path", "m", "--log-conversations"])
    assert args.log_file.endswith(".jsonl")


def test_sigterm_finishes_requests_in_flight_and_keeps_the_log(tiny_onnx_dir, tmp_path):
    log = tmp_path / "log.json"
    server = Server(tiny_onnx_dir, tmp_path, "--log-conversations", "--log-file", str(log))
    client = server.client()
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(ask, client, conversation["input"]) for conversation in SINGLE[:4]]
        server.wait_until(
            lambda health: health["active"] + health["waiting"] + health["served"] >= 4, "all requests received"
        )
        returncode = server.stop()
        answers = [future.result().choices[0].message.content for future in futures]
    assert returncode == 0 and "Traceback" not in "".join(server.stderr)
    assert answers == [conversation["output"] for conversation in SINGLE[:4]]
    records = json.loads(log.read_text())  # a complete JSON array
    assert sorted(record["output"] for record in records) == sorted(answers)
    with pytest.raises(httpx.ConnectError):
        httpx.get(server.url + "/health")


def test_replacing_the_model_directory_reloads_between_requests(tiny_onnx_dir, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_onnx_dir, model)
    server = Server(model, tmp_path, "--precision", "fp32", *WILD)
    try:
        client = server.client()
        before = ask(client, "Who wrote Hamlet?")
        # Retrained elsewhere, swapped in by renames (as convert does): it now records a system prompt.
        staging = tmp_path / "staging"
        shutil.copytree(tiny_onnx_dir, staging)
        meta = json.loads((staging / "mtnsails.json").read_text())
        (staging / "mtnsails.json").write_text(json.dumps({**meta, "system": "Be brief."}))
        in_flight = {**LONG, "max_tokens": 100, "stream": True}
        with httpx.stream("POST", server.url + "/v1/chat/completions", json=in_flight) as flight:
            lines = flight.iter_lines()
            next(lines)
            model.rename(tmp_path / "previous")
            staging.rename(model)
            after = ask(client, "Who wrote Hamlet?")  # waits for the request in flight, then reloads
            rest = [line for line in lines if line]
        assert rest[-1] == "data: [DONE]"  # the request in flight finished on the old model
        expected = len(ChatInterface(model, precision="fp32").prompt_ids("Who wrote Hamlet?"))
        assert after.usage.prompt_tokens == expected > before.usage.prompt_tokens
    finally:
        assert server.stop() == 0
    assert any("reloaded the model" in line for line in server.stderr)
