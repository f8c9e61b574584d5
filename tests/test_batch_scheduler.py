"""BatchScheduler: requests decoded together, each round's events delivered before the round ends."""

from __future__ import annotations

import threading

from conftest import TINY_CONVERSATIONS

from mtnsails.batch_scheduler import BatchScheduler, Completion, GenerationJob
from mtnsails.chat import ChatInterface
from mtnsails.generation import GenerationConfig

GREEDY = GenerationConfig(max_new_tokens=24, temperature=0)


def test_answers_stream_and_each_round_ends_with_on_round(tiny_onnx_dir):
    scheduler = BatchScheduler(lambda: ChatInterface(tiny_onnx_dir, precision="fp32"), max_batch=4)
    events: list[tuple] = []  # appended by the scheduler thread only
    answered = threading.Semaphore(0)

    def job(question: str) -> GenerationJob:
        def done(result) -> None:
            events.append(("done", question, result))
            answered.release()

        return GenerationJob(question, [], None, GREEDY, (), on_text=lambda piece: events.append(("text", question, piece)),
                             on_done=done)

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
