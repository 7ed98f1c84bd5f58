"""The paper (Banerjee, Bertram et al. 2025, AMi-Br) as data: the lowest layer, importing nothing of mitoprobe.

Its published table (``results``), its fine-tuning and linear-probe settings with the script line of each
value (``finetune``, ``probe``), the models it benchmarks (``models``) and the name of a fine-tuned fold's
embedding set (``naming``). Every layer above reads the paper here, so it is written down once.
"""

from .models import END_TO_END, FOUNDATION
from .naming import FINETUNED_SET, finetuned_set_name, is_finetuned_set, pooled_model_name
from .probe import PAPER_PROBE_PARAMS, PAPER_SCRIPT_OVERRIDES, paper_probe_params
from .results import PAPER_COMPARABLE, PAPER_FAMILY, PAPER_HEADS, PAPER_MODEL_NAMES, paper_results
from .source import REPO, SCRIPTS_AT, Setting

__all__ = ["END_TO_END", "FINETUNED_SET", "FOUNDATION", "PAPER_COMPARABLE", "PAPER_FAMILY", "PAPER_HEADS",
           "PAPER_MODEL_NAMES", "PAPER_PROBE_PARAMS", "PAPER_SCRIPT_OVERRIDES", "REPO", "SCRIPTS_AT", "Setting",
           "finetuned_set_name", "is_finetuned_set", "paper_probe_params", "paper_results", "pooled_model_name"]
