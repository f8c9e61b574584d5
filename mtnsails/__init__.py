"""mtnsails: turn question/answer conversations into a small chat model that runs fast on a CPU.

The public classes load lazily, so `import mtnsails` (and the CLI's start-up) stays cheap:
torch and transformers are imported only by the classes that need them.
"""

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "ConversationDataHandler": "mtnsails.data",
    "DataQualityValidator": "mtnsails.quality",
    "QualityConfig": "mtnsails.quality",
    "LLMTrainer": "mtnsails.trainer",
    "TrainingConfig": "mtnsails.training_config",
    "ONNXConverter": "mtnsails.onnx_converter",
    "ChatInterface": "mtnsails.chat",
    "GenerationConfig": "mtnsails.generation_config",
    "ConversationLogger": "mtnsails.logger",
    "LogReview": "mtnsails.log_review",
    "ScrapedContentProcessor": "mtnsails.scraped",
    "ChatTemplate": "mtnsails.template",
    "Evaluator": "mtnsails.evaluator",
    "Promoter": "mtnsails.promoter",
    "RetrainWatcher": "mtnsails.retrain_watcher",
    "MtnsailsError": "mtnsails.errors",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'mtnsails' has no attribute {name!r}")
