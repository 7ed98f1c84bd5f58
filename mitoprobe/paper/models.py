"""The paper's models by how it trained them, as recipe stems (``finetune.ENTRIES`` holds their scripts)."""

from __future__ import annotations

FOUNDATION = ("virchow", "virchow2", "uni", "uni2_h", "gigapath", "hoptimus0", "hoptimus1")  # probed and LoRA-tuned
END_TO_END = ("efficientnetv2_m", "swin_base", "vit_large")  # the fully fine-tuned baselines
