"""LoRA and full fine-tuning of the embedder's backbones under the paper's protocol: the design's
separate fine-tuning job, reporting into the same ``runs``/``predictions`` tables as the probes.

It sits above ``classifiers`` (folds, scoring, result rows) and ``embedder`` (``embedder.build``).
Importing it registers its recipe resolver with the embedder's registry, so a fold checkpoint is an
embedder (``ft:<run>/fold<k>``) without the embedder ever importing this package; in a fresh process
the ``mitoprobe.recipe_resolvers`` entry point finds the same resolver. Torch-free on import.

Example::

    from mitoprobe.finetune import FinetuneConfig, finetune
    finetune("mitoprobe-store", FinetuneConfig.paper("virchow2.hf", "lora"), folds="0")
"""

from mitoprobe.embedder.recipes import register_resolver

from .config import FinetuneConfig
from .job import FinetuneSummary, finetune, parse_folds
from .registry import FinetunedRecipe, finetuned_recipe, resolve_finetuned, runs_root

register_resolver("finetune", resolve_finetuned)

__all__ = ["FinetuneConfig", "FinetuneSummary", "FinetunedRecipe", "finetune", "finetuned_recipe", "parse_folds",
           "resolve_finetuned", "runs_root"]
