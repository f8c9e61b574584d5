"""Model resolution, and the embedded default model that works with no network.

The embedded default ("tiny") is a small GPT-2 (`GPT2LMHeadModel`, the same code path as
distilgpt2) with a byte-level BPE tokenizer trained on the user's data plus a small corpus that
ships in the package. It is built deterministically from a fixed seed in well under a second.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mtnsails.core.errors import MtnsailsError, first_line
from mtnsails.core.files import is_torch_save_file
from mtnsails.model_dir.metadata import read_metadata

if TYPE_CHECKING:  # only for annotations: importing this module must not import transformers
    from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast

EMBEDDED_MODEL_NAME = "tiny"
EOS_TOKEN = "<|endoftext|>"


@dataclass(frozen=True)
class EmbeddedModelSpec:
    """Size of the embedded default model; small enough to train from scratch on a CPU."""

    n_layer: int = 4
    n_embd: int = 256
    n_head: int = 4
    n_positions: int = 512
    vocab_size: int = 4096
    seed: int = 0


def packaged_corpus() -> list[str]:
    """The small English corpus shipped with mtnsails (tokenizer coverage beyond your data)."""
    # Beside this file, not importlib.resources: an editable install can register mtnsails as a
    # namespace package, whose resources.files() fails ("MultiplexedPath only supports directories").
    text = (Path(__file__).resolve().parent / "resources" / "corpus.txt").read_text("utf-8")
    return [line for line in text.splitlines() if line.strip()]


TOKENIZER_TEXT_CHARS = 100_000  # of each text, what the embedded tokenizer is trained on


def build_embedded_tokenizer(
    texts: Iterable[str], vocab_size: int = EmbeddedModelSpec.vocab_size
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on `texts` plus the packaged corpus.

    Byte-level BPE can encode any text, so chat never meets an unknown character. The returned
    tokenizer has EOS as pad token and no `token_type_ids` (GPT-2 would add them to its
    embeddings, and ONNX Runtime's generate refuses them).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # BPE learns its merges from word counts, which a text's start shows as well as all of it:
    # a 50 MB answer would otherwise cost gigabytes in the trainer.
    bpe.train_from_iterator([*(text[:TOKENIZER_TEXT_CHARS] for text in texts), *packaged_corpus()], trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        model_input_names=["input_ids", "attention_mask"],
        model_max_length=EmbeddedModelSpec.n_positions,
    )


def build_embedded_model(
    texts: Iterable[str], spec: EmbeddedModelSpec = EmbeddedModelSpec()
) -> tuple[GPT2LMHeadModel, PreTrainedTokenizerFast]:
    """Return (model, tokenizer) of the embedded default, randomly initialised from `spec.seed`."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = build_embedded_tokenizer(texts, spec.vocab_size)
    eos_id = tokenizer.eos_token_id
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=spec.n_positions,
        n_embd=spec.n_embd,
        n_layer=spec.n_layer,
        n_head=spec.n_head,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
    )
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(spec.seed)
    try:
        model = GPT2LMHeadModel(config)
    finally:
        torch.random.set_rng_state(generator_state)
    model.config.mtnsails_embedded = asdict(spec)
    return model, tokenizer


# -- resolution ---------------------------------------------------------------------------------

DEFAULT_MODEL_NAME = "distilgpt2"
HUB_CHECK_TIMEOUT = 3.0  # seconds: never sit in huggingface_hub's retry loop (about 46 s offline)


@dataclass(frozen=True)
class EmbeddedTrainingDefaults:
    """Settings the embedded model trains with unless the user sets them.

    It learns from scratch, so it needs a far higher learning rate and more epochs than a
    pretrained model's fine-tuning defaults (5e-5, 3 epochs). 40 epochs are what it takes to
    reproduce every packaged example answer greedily.

    Its matrices are too small to gain from several CPU threads, and on a busy CPU threads that
    wait for each other thrash, so it trains with one (figures: docs/performance.md).
    `OMP_NUM_THREADS` overrides this.
    """

    learning_rate: float = 1e-3
    num_epochs: int = 40
    cpu_threads: int = 1


@dataclass(frozen=True)
class ContinuedTrainingDefaults:
    """Settings for continuing an mtnsails model (`--model-name ./trained_model`) unless the
    user sets them; its earlier training data is mixed back in (replay) by default.

    Pretrained models continue with a fifth of their fine-tuning learning rate, as upstream did.
    The embedded model keeps its own learning rate: replay, not a lower rate, is what prevents
    forgetting, and a lower rate or fewer epochs do not teach it the new answers; 30 epochs
    leave a margin above the 20 that sufficed (bench/retrain_bench.py, docs/retraining-loop.md).
    """

    learning_rate: float = 1e-5
    num_epochs: int = 3
    embedded_learning_rate: float = 1e-3
    embedded_num_epochs: int = 30


@dataclass
class ResolvedModel:
    """A model and tokenizer ready to train, and what they are."""

    model: object
    tokenizer: object
    name: str  # what the user asked for
    embedded: bool
    metadata: dict  # an earlier mtnsails model's mtnsails.json ({} otherwise)
    notice: str | None = None  # one line to show the user (the embedded fallback says why)


@dataclass
class ModelChoice:
    """Which model a `--model-name` trains, known before the data is read: the pipeline names it
    in its first stage header, and `resolve_model` finishes it (the embedded model is built on
    the data, so only then)."""

    name: str  # what the user asked for
    fallback: str | None = None  # why the default name falls back to the embedded model
    resolved: ResolvedModel | None = None  # already loaded (a directory, the cache, the hub)

    def describe(self) -> str:
        """The model as a stage header names it, e.g. "distilgpt2", "tiny (embedded)" or
        "tiny (embedded; distilgpt2 needs the network)"."""
        if self.fallback:
            return f"{EMBEDDED_MODEL_NAME} (embedded; {self.name} needs the network)"
        return f"{self.name} (embedded)" if self.resolved is None else self.name


def choose_model(name: str, trust_remote_code: bool = False) -> ModelChoice:
    """Decide what `--model-name` trains, trying in order:

    1. `tiny`: the embedded model, always (built later, on the data, by `resolve_model`);
    2. a local directory: an earlier mtnsails model or any saved Hugging Face causal LM;
    3. the local Hugging Face cache (no network);
    4. the hub, after a reachability check of a few seconds (skipped when `HF_HUB_OFFLINE=1`);
    5. the embedded model, only for the default name `distilgpt2`, saying why.

    A model found is loaded now. An explicitly named model that cannot be had raises
    `MtnsailsError` with a hint.
    """
    if name == EMBEDDED_MODEL_NAME:
        return ModelChoice(name)
    path = Path(name).expanduser()
    if path.is_dir():
        return ModelChoice(name, resolved=_from_directory(path, name, trust_remote_code))
    if _looks_like_path(name):
        raise MtnsailsError(f"--model-name {name}: no such directory")
    _check_hub_name(name)
    offline = _hub_offline()
    loaded = _from_hub(name, trust_remote_code, local_files_only=True)
    if loaded is not None:
        return ModelChoice(name, resolved=ResolvedModel(*loaded, name=name, embedded=False, metadata={}))
    reason = "HF_HUB_OFFLINE is set" if offline else _hub_unreachable(name)
    if reason is None:
        loaded = _from_hub(name, trust_remote_code, local_files_only=False)
        if loaded is not None:
            return ModelChoice(name, resolved=ResolvedModel(*loaded, name=name, embedded=False, metadata={}))
        reason = "the download failed"
    if name == DEFAULT_MODEL_NAME:
        return ModelChoice(name, fallback=reason)
    raise MtnsailsError(
        f"--model-name {name}: not a local directory, not in the local Hugging Face cache, and "
        f"{reason}; check the name, download it once with network access, or use "
        f"--model-name {EMBEDDED_MODEL_NAME}"
    )


def resolve_model(
    name: str,
    texts: Iterable[str] = (),
    trust_remote_code: bool = False,
    choice: ModelChoice | None = None,
) -> ResolvedModel:
    """Turn a `--model-name` into a model and tokenizer, as `choose_model` decides (or decided:
    `choice`); the embedded model's tokenizer is trained on `texts`, and its fallback for the
    default name carries a notice saying why."""
    choice = choice or choose_model(name, trust_remote_code)
    if choice.resolved is not None:
        return choice.resolved
    resolved = _embedded(name, texts)
    if choice.fallback:
        resolved.notice = (
            f"note: {name} is not in the local cache and cannot be downloaded ({choice.fallback}); "
            f"training the embedded '{EMBEDDED_MODEL_NAME}' model instead, which learns only from "
            "your data: for real quality, run once with network access so a hub model is "
            "downloaded and cached"
        )
    return resolved


def _embedded(name: str, texts: Iterable[str]) -> ResolvedModel:
    model, tokenizer = build_embedded_model(texts)
    return ResolvedModel(model, tokenizer, name=name, embedded=True, metadata={})


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "~", os.sep)) or name.count("/") > 1 or os.sep != "/" and os.sep in name


def _hub_offline() -> bool:
    from huggingface_hub import constants

    value = os.environ.get("HF_HUB_OFFLINE", "") or os.environ.get("TRANSFORMERS_OFFLINE", "")
    return constants.HF_HUB_OFFLINE or value.upper() in {"1", "ON", "YES", "TRUE"}


def _hub_unreachable(name: str) -> str | None:
    """None when the hub answers and has `name`; otherwise why not, in a few words."""
    from huggingface_hub import model_info
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        model_info(name, timeout=HUB_CHECK_TIMEOUT)
    except GatedRepoError:
        return "the hub says it is gated (log in with `huggingface-cli login` first)"
    except RepositoryNotFoundError:
        return "the hub has no model of that name"
    except Exception as error:  # any network failure means: not reachable now
        return f"the Hugging Face hub is not reachable ({type(error).__name__})"
    return None


def _load(source: str, trust_remote_code: bool, local_files_only: bool) -> tuple:
    """(model, tokenizer) from a directory or hub name; raises what transformers' loaders raise."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(
            source, local_files_only=local_files_only, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError, TypeError):
        raise
    except Exception as error:  # the tokenizers library raises a bare Exception for a corrupt file
        raise ValueError(f"cannot read its tokenizer ({first_line(error)})") from error
    try:
        model = AutoModelForCausalLM.from_pretrained(
            source,
            local_files_only=local_files_only,
            trust_remote_code=trust_remote_code,
            use_safetensors=_has_safetensors(source) or None,
        )
    except RuntimeError as error:
        mismatch = [line.strip() for line in str(error).splitlines() if "size mismatch" in line]
        if not mismatch:
            raise
        raise ValueError(f"its weights do not fit the sizes in config.json ({mismatch[0]})") from error
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # labels are masked by attention mask, not pad id
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.eos_token_id
    return model, tokenizer


def _from_hub(name: str, trust_remote_code: bool, local_files_only: bool) -> tuple | None:
    """(model, tokenizer), or None when `name` is not in the cache (nor, online, downloadable)."""
    from safetensors import SafetensorError

    try:
        return _load(name, trust_remote_code, local_files_only)
    except OSError:  # transformers' "not found": not cached, not on the hub, no network
        return None
    except (ValueError, TypeError, SafetensorError) as error:  # there, but unusable
        raise MtnsailsError(f"--model-name {name}: cannot load it: {first_line(error)}") from None


def _check_hub_name(name: str) -> None:
    """Refuse a name no hub model can have (a typo, a mistyped path) before any lookup."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        raise MtnsailsError(
            f"--model-name {name}: no such directory, and not a valid Hugging Face model name "
            "('name' or 'owner/name' of letters, digits, '-', '_' and '.')"
        ) from None


def _has_safetensors(source: str) -> bool:
    path = Path(source)
    return path.is_dir() and any(path.glob("*.safetensors"))


# What a model directory's weights may be: .bin files are read by torch.load(weights_only=True),
# which transformers uses, so they cannot run code either.
WEIGHT_FILES = "*.safetensors, or *.bin read with weights_only"

# Files of which a saved tokenizer has at least one: fast (tokenizer.json), byte-level BPE
# (vocab.json + merges.txt, GPT-2), SentencePiece, WordPiece.
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer.model", "spiece.model", "vocab.txt")


def _from_directory(path: Path, name: str, trust_remote_code: bool) -> ResolvedModel:
    """Load a saved model directory; anything missing or unreadable is a one-line MtnsailsError."""
    from safetensors import SafetensorError

    if not (path / "config.json").is_file():
        raise MtnsailsError(
            f"--model-name {name}: directory has no config.json, so it is not a "
            "saved model (expected an mtnsails trained model or a Hugging Face model)"
        )
    weights = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin"))
    if not weights:
        raise MtnsailsError(f"--model-name {name}: directory has no model weights ({WEIGHT_FILES})")
    for file in weights:
        if file.suffix == ".bin" and not is_torch_save_file(file):
            raise MtnsailsError(
                f"--model-name {name}: {file.name} is not a PyTorch weights file "
                f"({WEIGHT_FILES}); it is never unpickled"
            )
    if not any((path / file).is_file() for file in TOKENIZER_FILES):
        raise MtnsailsError(
            f"--model-name {name}: directory has no tokenizer files (tokenizer.json "
            "or vocab.json + merges.txt); save the tokenizer beside the model"
        )
    metadata = read_metadata(path)
    try:
        model, tokenizer = _load(str(path), trust_remote_code, local_files_only=True)
    except SafetensorError as error:
        files = ", ".join(file.name for file in weights)
        raise MtnsailsError(f"--model-name {name}: cannot read the weights in {files} ({first_line(error)})") from None
    except (OSError, ValueError, TypeError) as error:  # e.g. a corrupt config.json, or an
        # architecture that needs --trust-remote-code
        raise MtnsailsError(f"--model-name {name}: cannot load it: {first_line(error)}") from None
    embedded = bool(metadata.get("embedded") or getattr(model.config, "mtnsails_embedded", None))
    return ResolvedModel(model, tokenizer, name=name, embedded=embedded, metadata=metadata)
