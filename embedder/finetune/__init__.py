"""LoRA and full fine-tuning of the embedder's backbones under the paper's protocol.

One more job that touches pixels with torch: models come from ``embedder.build`` (recipes), folds,
metrics and result rows from ``classifiers``, images from the store. ``import embedder.finetune`` is
torch-free; training imports torch when called.

Example::

    from embedder.finetune import FinetuneConfig, finetune
    finetune("mitoprobe-store", FinetuneConfig.paper("virchow2.hf", "lora"), folds="0")
"""

from .config import FinetuneConfig
from .job import FinetuneSummary, finetune, parse_folds
from .registry import FinetunedRecipe, finetuned_recipe

__all__ = ["FinetuneConfig", "FinetuneSummary", "FinetunedRecipe", "finetune", "finetuned_recipe", "parse_folds"]
