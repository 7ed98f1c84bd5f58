"""The paper's published table and how our names map onto it.

``paper_results.csv`` is a copy of the benchmark's results (DeepMicroscopy/AMi-Br_Benchmark; the
team's reference copy is ``shared/reference/paper_results.csv``): one row per (model, family, test set)
with balanced accuracy and AUROC, mean and std over the five fold models.
"""

from __future__ import annotations

import io
from importlib import resources

import pandas as pd

# our recipe names -> the paper's model names (paper_results.csv)
PAPER_MODEL_NAMES = {"virchow.hf": "Virchow", "virchow2.hf": "Virchow2", "hoptimus0.hf": "h-optimus-0",
                     "hoptimus1.hf": "h-optimus-1", "gigapath.hf": "prov-gigapath", "uni.hf": "uni",
                     "uni2_h.hf": "uni2-h", "efficientnetv2_m.random": "efficientnetv2_m",
                     "swin_base.hf": "swin_base_patch4_window7_224", "vit_large.hf": "vit_large_patch16_224"}
PAPER_FAMILY = {"probe": "linear_probe", "finetune": "lora"}
# our family -> the paper families its Δ is taken against: Δ vs paper is our mean balanced accuracy minus
# the best of these published rows on the same test set (any model; a fusion mixes probes and networks)
PAPER_COMPARABLE = {"probe": ("linear_probe",), "finetune": ("lora", "end_to_end"),
                    "fusion": ("linear_probe", "lora", "end_to_end")}
PAPER_HEADS = {"linear_probe": "torch linear (paper)", "lora": "LoRA (paper)", "end_to_end": "full fine-tune (paper)"}


def paper_results() -> pd.DataFrame:
    """The paper's published table (shipped in this package, beside this module)."""
    text = resources.files(__package__).joinpath("paper_results.csv").read_text()
    return pd.read_csv(io.StringIO(text))
