"""ChatSession over ChatEngine: a reload swaps the whole loaded model and keeps the conversation."""

from __future__ import annotations

import shutil

import pytest
from conftest import OTHER_CONVERSATIONS

from mtnsails.core.errors import MtnsailsError
from mtnsails.data.handler import ConversationDataHandler
from mtnsails.data.logger import ConversationLogger
from mtnsails.inference.engine import ChatEngine, EngineSettings
from mtnsails.inference.generation_config import GenerationConfig
from mtnsails.inference.session import ChatSession

pytestmark = pytest.mark.slow

SETTINGS = EngineSettings(precision="fp32", generation=GenerationConfig(temperature=0))


def model_state(engine: ChatEngine) -> dict:
    """What an engine took from its directory."""
    return {
        "template": engine.template,
        "eos": engine.eos_token_id,
        "context": engine.context_length,
        "generation": engine.generation,
        "history_exchanges": engine.history_exchanges,
        "questions": engine.matcher.questions if engine.matcher else None,
        "system": engine.system,
        "graph": engine.graph_file,
        "vocabulary": engine.tokenizer.get_vocab_size(),
    }


def test_reload_takes_everything_from_the_new_model_and_keeps_the_conversation(tiny_onnx_dir, other_onnx_dir, tmp_path):
    from mtnsails.loop.promoter import Promoter

    live = tmp_path / "live"
    shutil.copytree(tiny_onnx_dir, live)
    with ChatSession(ChatEngine(live, SETTINGS)) as session:
        answer = session.reply("Who wrote Hamlet?")
        old = session.engine
        assert Promoter(live).promote(other_onnx_dir, OTHER_CONVERSATIONS).promoted
        session.reload()
        assert session.engine is not old and session.engine.settings == SETTINGS
        # Nothing stays of the old model: the session's model is the one a fresh open gives.
        assert model_state(session.engine) == model_state(ChatEngine(live, SETTINGS)) != model_state(old)
        assert session.history == [("Who wrote Hamlet?", answer)]
        assert [record["input"] for record in session.conversation_log] == ["Who wrote Hamlet?"]


def test_a_reload_that_fails_keeps_the_loaded_model(editable_onnx_dir):
    session = ChatSession(ChatEngine(editable_onnx_dir, SETTINGS))
    loaded = session.engine
    (editable_onnx_dir / "tokenizer.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(MtnsailsError, match="tokenizer.json cannot be read"):
        session.reload()
    assert session.engine is loaded
    assert session.reply("Who wrote Hamlet?") == "Hamlet was written by William Shakespeare."


def test_the_logger_handed_in_gets_every_exchange_and_closes_with_the_session(tiny_onnx_dir, tmp_path):
    log = tmp_path / "log.jsonl"
    logger = ConversationLogger(log)
    with ChatSession(ChatEngine(tiny_onnx_dir, SETTINGS), logger) as session:
        session.reply("What do bees make?")
        session.feedback("fixed", "Bees make honey.")
    assert session.logger is None
    with pytest.raises(ValueError, match="closed"):
        logger.log("Who wrote Hamlet?", "Shakespeare.")
    assert [(c["input"], c["output"], c["feedback"]) for c in ConversationDataHandler(log).conversations] == [
        ("What do bees make?", "Bees make honey.", "fixed")
    ]


def test_answer_settings_and_system_prompt_set_on_a_session_hold_and_survive_a_reload(tiny_onnx_dir):
    session = ChatSession(ChatEngine(tiny_onnx_dir, SETTINGS))
    session.generation = GenerationConfig(temperature=0, max_new_tokens=3)
    session.reply("What colour is the sky?")
    assert session.last_stats.new_tokens == 3 and session.last_stats.truncated
    session.system = "Be brief."
    brief = session.engine.system_prompt_ids("Be brief.")
    assert session.prompt_ids("Hello!")[: len(brief)] == brief
    session.reload()
    assert session.generation.max_new_tokens == 3 and session.system == "Be brief."
    session.generation = GenerationConfig(temperature=0)  # no limit given: the trained answers' again
    assert session.generation.max_new_tokens == session.engine.default_max_new_tokens > 3
    with pytest.raises(MtnsailsError, match="leaves no room"):
        session.system = "word " * 400
    assert session.system == "Be brief."  # refused: the earlier one stays
