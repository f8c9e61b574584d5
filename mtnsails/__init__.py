"""mtnsails: turn question/answer conversations into a small chat model that runs fast on a CPU.

The public classes load lazily, so `import mtnsails` (and the CLI's start-up) stays cheap:
torch and transformers are imported only by the classes that need them.
"""

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "ConversationDataHandler": "mtnsails.data.handler",
    "DataQualityValidator": "mtnsails.quality.validator",
    "QualityConfig": "mtnsails.quality.config",
    "LLMTrainer": "mtnsails.train.trainer",
    "TrainingConfig": "mtnsails.train.config",
    "ONNXConverter": "mtnsails.export.converter",
    "ChatInterface": "mtnsails.inference.chat",
    "GenerationConfig": "mtnsails.inference.generation_config",
    "ConversationLogger": "mtnsails.data.logger",
    "LogReview": "mtnsails.loop.review",
    "ScrapedContentProcessor": "mtnsails.data.scraped",
    "ChatTemplate": "mtnsails.model_dir.template",
    "JinjaTemplate": "mtnsails.model_dir.jinja_template",
    "Evaluator": "mtnsails.loop.evaluator",
    "Promoter": "mtnsails.loop.promoter",
    "RetrainWatcher": "mtnsails.loop.watcher",
    "MtnsailsError": "mtnsails.core.errors",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'mtnsails' has no attribute {name!r}")
