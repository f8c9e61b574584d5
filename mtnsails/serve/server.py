"""`serve`: an OpenAI-compatible chat-completions server on an ONNX model directory.

A Starlette application on uvicorn (the ASGI ecosystem's usual pair; no HTTP is parsed here).
`POST /v1/chat/completions` turns `messages` into the prompt exactly as chat and training build
it (OpenAI's roles become the conversation's: "system" and "developer" the system prompt, "user"
and "assistant" its exchanges; a model's chat template then writes them in its own roles, e.g.
Gemma's "model", or puts the system prompt into the first user turn where it has no system role)
and hands the request to the `BatchScheduler`, whose thread decodes all requests in flight
together; `GET /v1/models` names the model, `GET /health` reports the load. Errors follow
OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, so clients raise their usual
exceptions. Nothing from a request reaches the file system; the API key never reaches the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import math
import signal
import socket
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from mtnsails.core.errors import MtnsailsError
from mtnsails.data.turns import openai_turns, split_turns
from mtnsails.inference.generation_config import GenerationConfig
from mtnsails.serve.scheduler import BatchScheduler, Completion, GenerationJob, QueueFull

MAX_BODY_BYTES = 1 << 20  # a request over 1 MiB is refused (the context holds a few KB of text)
SHUTDOWN_SECONDS = 5  # requests still running this long after SIGTERM are cut
MAX_STOPS = 4  # as OpenAI allows
# Request fields with no counterpart here, and the values that mean "not used".
UNSUPPORTED = {
    "n": (1,),
    "tools": ([],),
    "tool_choice": ("none",),
    "functions": ([],),
    "function_call": ("none",),
    "logprobs": (False,),
    "top_logprobs": (0,),
    "logit_bias": ({},),
    "audio": (),
    "modalities": (["text"],),
    "prediction": (),
    "response_format": ({"type": "text"},),
    "frequency_penalty": (0,),
    "presence_penalty": (0,),
    "parallel_tool_calls": (False, True),
}


class APIError(Exception):
    """A request the server refuses: HTTP status and OpenAI's error fields."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        kind: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def response(self) -> JSONResponse:
        return JSONResponse(
            {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}},
            status_code=self.status,
        )


def _refuse_constant(name: str) -> Any:
    """JSON has no NaN or Infinity; Python's reader would accept them and sample with NaN."""
    raise ValueError(f"{name} is not a JSON number")


def _number(body: dict, name: str, low: float, high: float | None = None, integer: bool = False) -> Any:
    """body[name] checked as a number in [low, high] (None when absent or null)."""
    value = body.get(name)
    if value is None:
        return None
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value):
        raise APIError(400, f"'{name}' must be {'an integer' if integer else 'a finite number'}, got {value!r}", name)
    if value < low or (high is not None and value > high):
        bounds = f"at least {low}" if high is None else f"between {low} and {high}"
        raise APIError(400, f"'{name}' = {value} must be {bounds}", name)
    return value


def _stops(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if (
        not isinstance(stops, list)
        or len(stops) > MAX_STOPS
        or not all(isinstance(stop, str) and stop for stop in stops)
    ):
        raise APIError(400, f"'stop' must be a non-empty string or a list of at most {MAX_STOPS}", "stop")
    return tuple(stops)


def parse_request(body: Any, defaults: GenerationConfig) -> tuple[GenerationJob, bool, bool]:
    """A chat-completions request body -> (job without callbacks, stream?, include usage in the stream?)."""
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    for name, neutral in UNSUPPORTED.items():
        if body.get(name) is not None and body[name] not in neutral:
            raise APIError(400, f"'{name}' is not supported by this server", name, "unsupported_parameter")
    if "messages" not in body:
        raise APIError(400, "'messages' is required", "messages")
    try:
        system, history, question = split_turns(openai_turns(body["messages"], "request body"))
    except MtnsailsError as error:
        raise APIError(400, str(error), "messages") from None
    if question is None:
        raise APIError(400, "'messages' must end with a user message (the question to answer)", "messages")
    if not question.strip():
        raise APIError(400, "the last user message is empty", "messages")
    settings = {
        "temperature": _number(body, "temperature", 0, 2),
        "top_p": _number(body, "top_p", 0, 1),
        "seed": _number(body, "seed", -(2**63), 2**63 - 1, integer=True),
    }
    settings["max_new_tokens"] = _number(body, "max_completion_tokens", 1, integer=True)  # the newer name
    if settings["max_new_tokens"] is None:
        settings["max_new_tokens"] = _number(body, "max_tokens", 1, integer=True)
    if settings["top_p"] == 0:
        raise APIError(400, "'top_p' must be above 0", "top_p")
    if settings["seed"] is not None:
        settings["seed"] %= 2**63  # numpy seeds are non-negative
    config = replace(defaults, **{name: value for name, value in settings.items() if value is not None})
    stream = body.get("stream")
    stream = False if stream is None else stream  # OpenAI's API takes null for every optional field
    if not isinstance(stream, bool):
        raise APIError(400, f"'stream' must be true or false, got {stream!r}", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise APIError(400, "'stream_options' must be an object", "stream_options")
    job = GenerationJob(
        question,
        history,
        system,
        config,
        _stops(body.get("stop")),
        on_text=lambda piece: None,
        on_done=lambda result: None,
    )
    return job, stream, bool(options.get("include_usage"))


class ChatServer:
    """The ASGI application of `serve` around a `BatchScheduler`.

    >>> server = ChatServer(scheduler, defaults=GenerationConfig(), api_key="secret")   # doctest: +SKIP
    >>> server.run("127.0.0.1", 8000)   # until SIGTERM or Ctrl-C
    """

    def __init__(
        self,
        scheduler: BatchScheduler,
        defaults: GenerationConfig,
        api_key: str | None = None,
        logger=None,
        model_name: str | None = None,
    ) -> None:
        """`logger`: a ConversationLogger that gets every answered exchange (None: no log)."""
        self.scheduler = scheduler
        self.defaults = defaults
        self.api_key = api_key
        self.logger = logger
        self.model_name = model_name or scheduler.model.path.resolve().name
        # Events from the scheduler thread wait here until its round ends, then go over together.
        self._outbox: deque[tuple[asyncio.Queue, Any]] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._round_ended = threading.Event()
        self._closing = False
        scheduler.on_round = self._round_ended.set
        routes = [
            Route("/v1/chat/completions", self.chat_completions, methods=["POST"]),
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/health", self.health, methods=["GET"]),
        ]
        self.app = Starlette(
            routes=routes,
            lifespan=self._lifespan,
            exception_handlers={HTTPException: self._http_error, Exception: self._crash},
        )

    # -- endpoints -----------------------------------------------------------------------------

    async def chat_completions(self, request: Request) -> Response:
        try:
            self._authorize(request)
            job, stream, include_usage = parse_request(await self._json_body(request), self.defaults)
            try:
                self.scheduler.prepare(job)
            except MtnsailsError as error:
                raise APIError(400, str(error), "messages", "context_length_exceeded") from None
            events: asyncio.Queue = asyncio.Queue()

            def deliver(item) -> None:  # called from the scheduler thread
                self._outbox.append((events, item))

            job.on_text = deliver
            job.on_done = deliver
            try:
                self.scheduler.submit(job)
            except QueueFull as error:
                raise APIError(503, str(error), None, "server_busy", "server_error") from None
        except APIError as error:
            return error.response()
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        if stream:
            return _CancellingStream(
                job,
                self._stream(job, events, completion_id, include_usage),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        try:
            completion = await self._wait(request, events)
        finally:
            job.cancel()  # no effect once answered; frees the slot if the client left
        if completion is None:
            return Response(status_code=499)  # nobody is listening any more
        if isinstance(completion, MtnsailsError):
            return APIError(503, str(completion), None, "server_unavailable", "server_error").response()
        return JSONResponse(
            {
                "id": completion_id,
                "object": "chat.completion",
                "created": int(time.time()),
                "model": self.model_name,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": completion.text},
                        "logprobs": None,
                        "finish_reason": completion.finish_reason,
                    }
                ],
                "usage": _usage(completion),
            },
            background=BackgroundTask(self._log, job, completion),
        )  # logged after the reply is sent

    async def models(self, request: Request) -> Response:
        try:
            self._authorize(request)
        except APIError as error:
            return error.response()
        created = int(self.scheduler.model.path.stat().st_mtime)
        return JSONResponse(
            {
                "object": "list",
                "data": [{"id": self.model_name, "object": "model", "created": created, "owned_by": "mtnsails"}],
            }
        )

    async def health(self, request: Request) -> Response:
        """Liveness and load; open without the API key (it tells nothing about conversations)."""
        return JSONResponse(
            {
                "status": "ok",
                "model": self.model_name,
                "precision": self.scheduler.model.precision,
                **self.scheduler.load(),
            }
        )

    # -- pieces ----------------------------------------------------------------------------------

    def _authorize(self, request: Request) -> None:
        if self.api_key is None:
            return
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(key.strip().encode(), self.api_key.encode()):
            raise APIError(
                401, "missing or wrong API key (send 'Authorization: Bearer <key>')", None, "invalid_api_key"
            )

    async def _json_body(self, request: Request) -> Any:
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            raise APIError(413, f"the request body is over {MAX_BODY_BYTES} bytes", None, "request_too_large")
        chunks, size = [], 0
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size > MAX_BODY_BYTES:
                    raise APIError(413, f"the request body is over {MAX_BODY_BYTES} bytes", None, "request_too_large")
                chunks.append(chunk)
        except ClientDisconnect:  # the body broke off (bad chunking, a client gone): uvicorn answered it
            raise APIError(400, "the request body ended before it was complete", None, "incomplete_body") from None
        try:
            return json.loads(b"".join(chunks), parse_constant=_refuse_constant)
        except (ValueError, RecursionError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise APIError(400, f"the request body is not valid JSON: {error}", None, "invalid_json") from None

    @staticmethod
    async def _wait(request: Request, events: asyncio.Queue) -> Completion | MtnsailsError | None:
        """The job's final event, skipping text pieces; None when the client leaves first."""

        async def disconnected() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass

        watcher = asyncio.ensure_future(disconnected())
        try:
            while True:
                getter = asyncio.ensure_future(events.get())
                done, _ = await asyncio.wait({getter, watcher}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    return None
                item = getter.result()
                if not isinstance(item, str):
                    return item
        finally:
            watcher.cancel()

    async def _stream(
        self, job: GenerationJob, events: asyncio.Queue, completion_id: str, include_usage: bool
    ) -> AsyncIterator[str]:
        created = int(time.time())

        def chunk(delta: dict | None, finish_reason: str | None = None, **extra) -> str:
            choices = (
                []
                if delta is None
                else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]
            )
            data = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": self.model_name,
                "choices": choices,
                **extra,
            }
            return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"

        yield chunk({"role": "assistant", "content": ""})
        sent = 0
        while True:
            items = [await events.get()]
            while not events.empty():  # events that came while this stream waited: one write
                items.append(events.get_nowait())
            pieces = [item for item in items if isinstance(item, str)]
            sent += sum(map(len, pieces))
            out = "".join(chunk({"content": piece}) for piece in pieces)
            end = items[-1]  # on_done comes last
            if isinstance(end, str):
                yield out
                continue
            if isinstance(end, MtnsailsError):
                error = {"message": str(end), "type": "server_error", "param": None, "code": "server_unavailable"}
                yield out + f"data: {json.dumps({'error': error})}\n\n"
                return
            if len(end.text) > sent:  # what streaming held back until the answer ended
                out += chunk({"content": end.text[sent:]})
            out += chunk({}, end.finish_reason)
            if include_usage:
                out += chunk(None, usage=_usage(end))
            yield out + "data: [DONE]\n\n"
            await self._log(job, end)
            return

    def _wake_loop(self) -> None:
        """Hand each scheduler round's events to the event loop in one wake-up (its own thread).

        Waking the loop is a system call that lets go of the GIL, and the decoding thread that
        made it would then wait while the loop holds the GIL, for milliseconds a token on a busy
        CPU. This thread makes that call instead, once per round: it gets the GIL
        when the decoding thread enters onnxruntime, so the streams are written during the step.
        """
        while True:
            self._round_ended.wait()
            self._round_ended.clear()  # a round ending from here on sets it again
            if self._closing:
                return
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody is waiting
                self._loop.call_soon_threadsafe(self._hand_over)

    def _hand_over(self) -> None:
        while self._outbox:
            events, item = self._outbox.popleft()
            events.put_nowait(item)

    async def _log(self, job: GenerationJob, completion: Completion) -> None:
        """Log the exchange like chat does, with the conversation's history and system prompt."""
        if self.logger is None:
            return
        extra: dict = {}
        if job.history:
            extra["history"] = [{"input": question, "output": answer} for question, answer in job.history]
        if job.system:
            extra["system"] = job.system
        await asyncio.to_thread(self.logger.log, job.question, completion.answer, **extra)

    async def _http_error(self, request: Request, error: HTTPException) -> Response:
        return APIError(
            error.status_code, str(error.detail), None, "not_found" if error.status_code == 404 else None
        ).response()

    async def _crash(self, request: Request, error: Exception) -> Response:
        return APIError(500, f"internal error: {type(error).__name__}", None, None, "server_error").response()

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        loop = self._loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, AttributeError):  # no SIGHUP on Windows
            loop.add_signal_handler(signal.SIGHUP, self.scheduler.reload)
        waker = threading.Thread(target=self._wake_loop, name="stream-waker", daemon=True)
        waker.start()
        self.scheduler.start()
        try:
            yield
        finally:
            await asyncio.to_thread(self.scheduler.stop, SHUTDOWN_SECONDS)
            self._hand_over()  # the scheduler's last words (requests cut at shutdown)
            self._closing = True
            self._round_ended.set()
            waker.join()
            if self.logger is not None:
                await asyncio.to_thread(self.logger.close)

    # -- running -----------------------------------------------------------------------------------

    def run(self, host: str = "127.0.0.1", port: int = 8000, quiet: bool = False) -> None:
        """Serve until SIGTERM or Ctrl-C: then stop accepting, let requests in flight finish for up
        to SHUTDOWN_SECONDS (the rest are cut), flush the log and return."""
        import uvicorn

        try:
            listener = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
        except OSError as error:
            raise MtnsailsError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
        port = listener.getsockname()[1]  # the one the system chose for --port 0
        config = uvicorn.Config(
            self.app,
            host=host,
            port=port,
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=SHUTDOWN_SECONDS,
            lifespan="on",
        )
        server = uvicorn.Server(config)
        # uvicorn re-raises the stop signal once it has shut down; it then meets these handlers
        # instead of the defaults (which would kill the process or raise KeyboardInterrupt).
        for stop in (signal.SIGINT, signal.SIGTERM):
            signal.signal(stop, lambda *_: None)
        if not quiet:
            model = self.scheduler.model
            print(
                f"serving {model.path} ({model.precision}) on http://{host}:{port}/v1 "
                f"(batch up to {self.scheduler.max_batch})"
                + (f", logging exchanges to {self.logger.path}" if self.logger is not None else "")
                + "; Ctrl-C stops",
                file=sys.stderr,
                flush=True,
            )
        server.run(sockets=[listener])


class _CancellingStream(StreamingResponse):
    """A streamed answer whose job is cancelled when the response ends, however it ends
    (a client that disconnects mid-stream frees its batch slot at the next step)."""

    def __init__(self, job: GenerationJob, content, **kwargs) -> None:
        super().__init__(content, **kwargs)
        self.job = job

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.job.cancel()


def _usage(completion: Completion) -> dict:
    return {
        "prompt_tokens": completion.prompt_tokens,
        "completion_tokens": completion.completion_tokens,
        "total_tokens": completion.prompt_tokens + completion.completion_tokens,
    }
