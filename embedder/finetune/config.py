"""What a fine-tuning run is: one frozen, hashable config (the paper's recipe by default).

``FinetuneConfig.paper(model, method)`` gives the DeepMicroscopy/AMi-Br_Benchmark scripts' settings:
LoRA (``Foundation_Models/LoRA/*``): peft r=8, alpha=16, dropout 0.3 on qkv/proj/fc1/fc2, a trained
1-logit head, Adam lr 5e-5 wd 1e-5, batch 8, BCE with a WeightedRandomSampler, ReduceLROnPlateau
(max, factor 0.5, patience 3, min lr 1e-7), early stop after 10 epochs without a better validation
balanced accuracy, <= 100 epochs, RandomResizedCrop(224, 0.8-1) + hflip + ColorJitter(0.2, 0.2, 0.2,
0.1), mean = std = 0.5. Full fine-tuning (``End-to-End_DL_Baselines/*``) differs in lr 1e-4, early
stop 15, an extra RandomRotation(10) and the model's own (ImageNet) normalisation.
Every field enters the run's hash; ``options()`` lists what differs from the paper (shown in reports).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

from store.errors import StoreError

METHODS = ("lora", "full")
LOSSES = ("bce", "weighted_bce", "focal")
SAMPLERS = ("weighted", "shuffle")
NORMS = ("paper", "recipe")  # paper: mean = std = 0.5; recipe: the embedder recipe's mean/std
TTAS = {"none": ("none",), "rot4": ("none", "rot90", "rot180", "rot270"),
        "d8": ("none", "rot90", "rot180", "rot270", "flip", "flip_rot90", "flip_rot180", "flip_rot270")}
THRESHOLDS = ("fixed_0.5", "val_youden")
# Full fine-tuning: what the paper's end-to-end scripts change relative to its LoRA scripts.
FULL_PAPER = dict(lr=1e-4, early_stop=15, rotate_degrees=10.0, norm="recipe")


@dataclass(frozen=True)
class FinetuneConfig:
    model: str  # embedder recipe name (the backbone)
    method: str = "lora"
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.3
    lora_targets: tuple[str, ...] = ("qkv", "proj", "fc1", "fc2")
    lr: float = 5e-5
    weight_decay: float = 1e-5
    batch_size: int = 8
    max_epochs: int = 100
    max_steps: int = 0  # optimizer steps per epoch at most (0 = a full pass); smoke tests, benchmarks
    lr_factor: float = 0.5
    lr_patience: int = 3
    min_lr: float = 1e-7
    early_stop: int = 10
    loss: str = "bce"
    focal_gamma: float = 2.0
    sampler: str = "weighted"
    crop_scale: tuple[float, float] = (0.8, 1.0)
    hflip: bool = True
    color_jitter: tuple[float, float, float, float] = (0.2, 0.2, 0.2, 0.1)
    rotate_degrees: float = 0.0
    dihedral: bool = False  # + vertical flips and 90-degree rotations
    hed: float = 0.0  # HED stain jitter strength (0 = off; 0.05 is a common choice)
    norm: str = "paper"
    tta: str = "none"
    threshold: str = "fixed_0.5"
    seed: int = 0
    schema_version: int = 1

    def __post_init__(self) -> None:
        for name, allowed in (("method", METHODS), ("loss", LOSSES), ("sampler", SAMPLERS), ("norm", NORMS),
                              ("tta", tuple(TTAS)), ("threshold", THRESHOLDS)):
            if getattr(self, name) not in allowed:
                raise StoreError(f"finetune {name} must be one of {list(allowed)}, not {getattr(self, name)!r}")
        if self.batch_size < 1 or self.max_epochs < 1 or self.max_steps < 0:
            raise StoreError("finetune needs batch_size >= 1, max_epochs >= 1 and max_steps >= 0")

    @classmethod
    def paper(cls, model: str, method: str = "lora", **overrides) -> "FinetuneConfig":
        """The paper's settings for ``method``, then ``overrides`` (None values are ignored)."""
        base = dict(FULL_PAPER) if method == "full" else {}
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(model=model, method=method, **base)

    def to_dict(self) -> dict:
        return asdict(self)

    def options(self) -> dict:
        """Fields that differ from the paper's configuration for this method (the report's 'options')."""
        ref = FinetuneConfig.paper(self.model, self.method)
        skip = {"model", "method", "schema_version"}
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name not in skip and getattr(self, f.name) != getattr(ref, f.name)}

    def mean_std(self) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None]:
        return ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)) if self.norm == "paper" else (None, None)

    def with_(self, **kw) -> "FinetuneConfig":
        return replace(self, **kw)
