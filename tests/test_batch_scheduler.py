"""BatchScheduler: requests decoded together, each round's events delivered before the round ends."""

from __future__ import annotations

import threading

from conftest import TINY_CONVERSATIONS

from mtnsails.inference.engine import ChatEngine, EngineSettings
from mtnsails.inference.generation_config import GenerationConfig
from mtnsails.serve.scheduler import BatchScheduler, Completion, GenerationJob

GREEDY = GenerationConfig(max_new_tokens=24, temperature=0)


def test_answers_stream_and_each_round_ends_with_on_round(tiny_onnx_dir):
    scheduler = BatchScheduler(lambda: ChatEngine(tiny_onnx_dir, EngineSettings(precision="fp32")), max_batch=4)
    events: list[tuple] = []  # appended by the scheduler thread only
    answered = threading.Semaphore(0)

    def job(question: str) -> GenerationJob:
        def done(result) -> None:
            events.append(("done", question, result))
            answered.release()

        return GenerationJob(
            question, [], None, GREEDY, (), on_text=lambda piece: events.append(("text", question, piece)), on_done=done
        )

    # A server hands a round's events over when on_round comes (ChatServer wakes its loop then).
    scheduler.on_round = lambda: events.append(("round",))
    scheduler.start()
    conversations = [conversation for conversation in TINY_CONVERSATIONS if "history" not in conversation][:4]
    for conversation in conversations:
        scheduler.submit(scheduler.prepare(job(conversation["input"])))
    for _ in conversations:
        assert answered.acquire(timeout=120)
    scheduler.stop()
    assert events[-1] == ("round",)  # nothing is delivered after the last round's end
    for conversation in conversations:
        question = conversation["input"]
        streamed = "".join(event[2] for event in events if event[:2] == ("text", question))
        completion = next(event[2] for event in events if event[:2] == ("done", question))
        assert isinstance(completion, Completion) and completion.text == conversation["output"]
        assert streamed and completion.text.startswith(streamed)
    assert scheduler.load()["served"] == len(conversations)


def test_a_model_that_computes_nan_fails_its_requests_and_the_loop_goes_on(editable_onnx_dir):
    """Weights that break at one position: a request whose prompt reaches it fails at once, one
    whose answer reaches it fails at that step; both get the error, and later requests that stay
    short of the broken position are answered."""
    import json

    import numpy as np
    import onnx
    from onnx import numpy_helper

    from mtnsails.core.errors import MtnsailsError

    meta_file = editable_onnx_dir / "mtnsails.json"
    meta = json.loads(meta_file.read_text())
    meta.pop("optimized", None)  # serve the plain model.onnx broken below
    meta_file.write_text(json.dumps(meta))
    graph = onnx.load(str(editable_onnx_dir / "model.onnx"))
    context = json.loads((editable_onnx_dir / "config.json").read_text())["n_positions"]
    positions = next(
        weights for weights in graph.graph.initializer if len(weights.dims) == 2 and weights.dims[0] == context
    )
    broken = numpy_helper.to_array(positions).copy()
    broken[12] = np.nan  # "Hi" is 7 tokens of prompt, its 10-token answer passes position 12
    positions.CopyFrom(numpy_helper.from_array(broken, positions.name))
    onnx.save(graph, str(editable_onnx_dir / "model.onnx"))

    scheduler = BatchScheduler(lambda: ChatEngine(editable_onnx_dir, EngineSettings(precision="fp32")), max_batch=4)
    results: dict[str, object] = {}
    answered = threading.Semaphore(0)

    def job(question: str, tokens: int) -> GenerationJob:
        def done(result) -> None:
            results[question] = result
            answered.release()

        config = GenerationConfig(max_new_tokens=tokens, temperature=0)
        return scheduler.prepare(GenerationJob(question, [], None, config, ("\n",), lambda piece: None, done))

    scheduler.start()
    long_prompt = "Tell me a long story about a spider who wanted to make honey like the bees " * 3
    short = job("Hi", 24)
    assert len(short.prompt_ids) < 12
    for queued in (short, job(long_prompt, 4)):
        scheduler.submit(queued)
    for _ in range(2):
        assert answered.acquire(timeout=120)
    for question in ("Hi", long_prompt):
        assert isinstance(results[question], MtnsailsError) and "non-finite logits" in str(results[question])
    after = job("Hi there", 2)
    assert len(after.prompt_ids) + 2 <= 12
    scheduler.submit(after)  # the loop is still running
    assert answered.acquire(timeout=120)
    scheduler.stop()
    assert isinstance(results["Hi there"], Completion)
