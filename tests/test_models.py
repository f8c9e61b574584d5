"""Model resolution: `--model-name` to (model, tokenizer), offline, in a fixed order."""

from __future__ import annotations

import json
import pickle
import shutil

import pytest
from conftest import TINY_CONVERSATIONS

from mtnsails.core.errors import MtnsailsError
from mtnsails.train.models import build_embedded_model, resolve_model

TEXTS = [f"User: {c['input']}\nAssistant: {c['output']}" for c in TINY_CONVERSATIONS]


def test_tiny_is_the_embedded_model_with_a_tokenizer_trained_on_the_data():
    resolved = resolve_model("tiny", TEXTS)
    assert resolved.embedded and resolved.notice is None
    tokenizer = resolved.tokenizer
    assert tokenizer.eos_token == tokenizer.pad_token == "<|endoftext|>"
    assert "token_type_ids" not in tokenizer("hello")
    # words of the data are whole tokens, so the model learns them in few steps
    assert len(tokenizer(" Shakespeare", add_special_tokens=False)["input_ids"]) == 1


def test_embedded_model_is_built_identically_every_time():
    # every rank of a distributed run builds it on its own: they must agree bit for bit
    model_a, tokenizer_a = build_embedded_model(TEXTS)
    model_b, tokenizer_b = build_embedded_model(TEXTS)
    assert tokenizer_a.get_vocab() == tokenizer_b.get_vocab()
    for (name, a), (_, b) in zip(model_a.state_dict().items(), model_b.state_dict().items()):
        assert a.equal(b), name


def test_a_local_model_directory_comes_first(untrained_tiny_model_dir):
    resolved = resolve_model(str(untrained_tiny_model_dir))
    assert resolved.name == str(untrained_tiny_model_dir) and resolved.metadata == {}
    assert resolved.model.config.model_type == "gpt2"


def test_an_earlier_mtnsails_model_keeps_its_metadata(trained_tiny_model_dir):
    resolved = resolve_model(str(trained_tiny_model_dir))
    assert resolved.embedded and resolved.metadata["format"] == "mtnsails-model"
    assert resolved.metadata["template"]["template"] == "User: {input}\nAssistant: {output}"


def test_a_directory_that_is_not_a_model_is_an_error(tmp_path):
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(MtnsailsError, match="no config.json"):
        resolve_model(str(tmp_path))
    with pytest.raises(MtnsailsError, match="no such directory"):
        resolve_model(str(tmp_path / "missing") + "/")


def test_an_unknown_name_offline_is_an_error_with_a_hint_never_a_substitute():
    # conftest sets HF_HUB_OFFLINE=1: this fails at once instead of retrying the network
    with pytest.raises(MtnsailsError, match="--model-name tiny") as error:
        resolve_model("someone/no-such-model")
    assert "HF_HUB_OFFLINE" in str(error.value) and "\n" not in str(error.value)


def test_the_default_distilgpt2_falls_back_to_the_embedded_model_offline():
    resolved = resolve_model("distilgpt2", TEXTS)
    assert resolved.embedded and resolved.name == "distilgpt2"
    assert resolved.notice.startswith("note: distilgpt2 is not in the local cache")
    assert "learns only from your data" in resolved.notice and "\n" not in resolved.notice


def without_tokenizer(path):
    for file in path.iterdir():
        if file.name.startswith(("tokenizer", "special_tokens")):
            file.unlink()


def without_weights(path):
    (path / "model.safetensors").unlink()


def with_corrupt_weights(path):
    (path / "model.safetensors").write_bytes(b"not a safetensors file")


def with_corrupt_config(path):
    (path / "config.json").write_text("{not json")


def with_corrupt_tokenizer(path):
    (path / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "BPE", "vocab": 5}}')


def with_a_plain_pickle_as_weights(path):
    (path / "model.safetensors").unlink()
    (path / "pytorch_model.bin").write_bytes(pickle.dumps({"not": "weights"}))


def with_sizes_not_matching_the_weights(path):
    config = json.loads((path / "config.json").read_text())
    config["n_embd"] *= 2
    (path / "config.json").write_text(json.dumps(config))


# A saved model damaged in each way a user's directory can be, and what the error must say.
BROKEN_MODEL_DIRECTORIES = [
    (without_tokenizer, "directory has no tokenizer files"),
    (without_weights, "directory has no model weights (*.safetensors, or *.bin read with weights_only)"),
    (with_corrupt_weights, "cannot read the weights in model.safetensors"),
    (with_corrupt_config, "config.json' is not a valid JSON file"),
    (with_a_plain_pickle_as_weights, "pytorch_model.bin is not a PyTorch weights file"),
    (with_corrupt_tokenizer, "cannot load it: cannot read its tokenizer (invalid type: integer"),
    (with_sizes_not_matching_the_weights, "its weights do not fit the sizes in config.json (size mismatch for "),
]


def broken_copy(model_dir, tmp_path, damage):
    """A copy of `model_dir` damaged by `damage` (one of BROKEN_MODEL_DIRECTORIES)."""
    path = tmp_path / damage.__name__
    shutil.copytree(model_dir, path)
    damage(path)
    return path


@pytest.mark.parametrize("damage, problem", BROKEN_MODEL_DIRECTORIES)
def test_a_broken_model_directory_is_a_one_line_error_naming_it(damage, problem, untrained_tiny_model_dir, tmp_path):
    path = broken_copy(untrained_tiny_model_dir, tmp_path, damage)
    with pytest.raises(MtnsailsError) as error:
        resolve_model(str(path))
    message = str(error.value)
    assert message.startswith(f"--model-name {path}: ") and problem in message
    assert "\n" not in message


def test_a_name_no_hub_model_can_have_is_refused_at_once():
    with pytest.raises(MtnsailsError) as error:
        resolve_model("bad name!!")
    assert str(error.value).startswith(
        "--model-name bad name!!: no such directory, and not a valid Hugging Face model name"
    )


def test_the_embedded_tokenizer_learns_from_a_bounded_start_of_each_text():
    from mtnsails.train.models import TOKENIZER_TEXT_CHARS, build_embedded_tokenizer

    huge = "Pack a warm layer and a rain shell before the trail. " * 40_000  # 2 MB
    whole = build_embedded_tokenizer([huge])
    start = build_embedded_tokenizer([huge[:TOKENIZER_TEXT_CHARS]])
    assert whole.get_vocab() == start.get_vocab()
