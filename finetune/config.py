"""What a fine-tuning run is: one frozen, hashable config (the paper's recipe by default).

``FinetuneConfig.paper(model, method)`` gives the DeepMicroscopy/AMi-Br_Benchmark scripts' settings:
LoRA (``Foundation_Models/LoRA/*``): peft r=8, alpha=16, dropout 0.3 on qkv/proj/fc1/fc2, a trained
1-logit head, Adam lr 5e-5 wd 1e-5, batch 8, BCE with a WeightedRandomSampler, ReduceLROnPlateau
(max, factor 0.5, patience 3, min lr 1e-7), early stop after 10 epochs without a better validation
balanced accuracy, <= 100 epochs, RandomResizedCrop(224, 0.8-1) + hflip + ColorJitter(0.2, 0.2, 0.2,
0.1), mean = std = 0.5. Full fine-tuning (``End-to-End_DL_Baselines/*``) differs in lr 1e-4, early
stop 15, an extra RandomRotation(10) and the model's own (ImageNet) normalisation.
Every field enters the run's hash; ``options()`` lists what differs from the paper (shown in reports).

``PRESETS`` name tuned configurations beyond the paper's (``FinetuneConfig.preset``): ``offline`` is
the from-scratch small CNN that trains all five folds on a 2-core AVX2 CPU at fp32 within the
30-minute budget of ``mitoprobe run --full`` (docs/offline-accuracy.md).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

from store.errors import FinetuneError

METHODS = ("lora", "full")
LOSSES = ("bce", "weighted_bce", "focal")
SAMPLERS = ("weighted", "shuffle")
NORMS = ("paper", "recipe")  # paper: mean = std = 0.5; recipe: the embedder recipe's mean/std
TTAS = {"none": ("none",), "rot4": ("none", "rot90", "rot180", "rot270"),
        "d8": ("none", "rot90", "rot180", "rot270", "flip", "flip_rot90", "flip_rot180", "flip_rot270")}
THRESHOLDS = ("fixed_0.5", "val_youden")
OPTIMIZERS = ("adam", "adamw")
SCHEDULES = ("plateau", "cosine")  # cosine: per step, one warm-up epoch, down to min_lr at max_epochs
SELECT_ON = ("balanced_accuracy", "auroc")  # held-out score that picks the checkpoint (early stopping too)
CROP_FROM = ("patch", "view")  # RandomResizedCrop on the raw 128 px patch (paper) or on the recipe's view
# Training targets: the majority label (paper), or the fraction of experts who called the figure atypical
# (AMi-Br has 3 votes per patch: a soft BCE target that tells the network which figures are ambiguous)
TARGETS = ("majority", "votes")
# Fields added after schema 1: left out of ``to_dict`` at their defaults, so older runs keep their keys.
_LATER_FIELDS = ("optimizer", "schedule", "select_on", "ema", "mixup", "crop_from", "cpu_bf16", "batch_augment",
                 "targets")
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
    optimizer: str = "adam"
    schedule: str = "plateau"
    select_on: str = "balanced_accuracy"
    ema: float = 0.0  # decay of an exponential moving average of the weights (0 = off); EMA weights are evaluated
    mixup: float = 0.0  # Beta(a, a) mixup of training batches (0 = off)
    crop_from: str = "patch"
    # augment whole batches in the main process from patches decoded once (finetune.augment.BatchAugment)
    batch_augment: bool = False
    targets: str = "majority"  # TARGETS; "votes" falls back to the label for patches without expert votes
    cpu_bf16: bool = False  # allow bf16 autocast + channels-last on CPU where it is native (finetune.precision)
    seed: int = 0
    schema_version: int = 1

    def __post_init__(self) -> None:
        for name, allowed in (("method", METHODS), ("loss", LOSSES), ("sampler", SAMPLERS), ("norm", NORMS),
                              ("tta", tuple(TTAS)), ("threshold", THRESHOLDS), ("optimizer", OPTIMIZERS),
                              ("schedule", SCHEDULES), ("select_on", SELECT_ON), ("crop_from", CROP_FROM),
                              ("targets", TARGETS)):
            if getattr(self, name) not in allowed:
                raise FinetuneError(f"finetune {name} must be one of {list(allowed)}, not {getattr(self, name)!r}")
        if self.batch_size < 1 or self.max_epochs < 1 or self.max_steps < 0:
            raise FinetuneError("finetune needs batch_size >= 1, max_epochs >= 1 and max_steps >= 0")
        if not 0 <= self.ema < 1 or self.mixup < 0:
            raise FinetuneError("finetune needs 0 <= ema < 1 and mixup >= 0")

    @classmethod
    def paper(cls, model: str, method: str = "lora", **overrides) -> "FinetuneConfig":
        """The paper's settings for ``method``, then ``overrides`` (None values are ignored)."""
        base = dict(FULL_PAPER) if method == "full" else {}
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(model=model, method=method, **base)

    @classmethod
    def preset(cls, name: str, **overrides) -> "FinetuneConfig":
        """A named configuration (``PRESETS``), then ``overrides`` (None values are ignored)."""
        if name not in PRESETS:
            raise FinetuneError(f"unknown finetune preset {name!r}; choose from {sorted(PRESETS)}")
        base = dict(PRESETS[name])
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls.paper(**base)

    def to_dict(self) -> dict:
        d = asdict(self)
        ref = FinetuneConfig(model=self.model)
        return {k: v for k, v in d.items() if k not in _LATER_FIELDS or v != getattr(ref, k)}

    def options(self) -> dict:
        """Fields that differ from the paper's configuration for this method (the report's 'options')."""
        ref = FinetuneConfig.paper(self.model, self.method)
        skip = {"model", "method", "schema_version"}
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name not in skip and getattr(self, f.name) != getattr(ref, f.name)}

    def mean_std(self) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None]:
        return ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)) if self.norm == "paper" else (None, None)

    def augment_kwargs(self) -> dict:
        """The training augmentation settings, as both pipelines take them (``finetune.augment``)."""
        return dict(crop_scale=self.crop_scale, hflip=self.hflip, color_jitter=self.color_jitter,
                    rotate_degrees=self.rotate_degrees, dihedral=self.dihedral, hed=self.hed)

    def with_(self, **kw) -> "FinetuneConfig":
        return replace(self, **kw)


# The offline preset (issue 7): a slim ResNet-18 from scratch on the centre of the patch, for CPUs.
# Every choice here was measured on fold 0's held-out part first (docs/offline-accuracy.md).
# Issue 13, round 3: batched augmentation (the per-sample pipeline cost more than the training step on a
# 2-core CPU), the 64 px input and channels-last raise fp32 training on a 2-core AVX2 CPU from ~80 to
# ~230 img/s, so ``run --full`` fits 20 epochs in its 30 minutes there (round 2 fitted 6 at 80 px); 20 beat
# 16 on fold 0's held-out AUROC (0.846 against 0.835). Training on the experts' vote fractions (soft targets)
# raised the CNN's 5-fold held-out AUROC from 0.833 to 0.848, and the named fusion's from 0.865 to 0.871.
PRESETS: dict[str, dict] = {
    "offline": dict(model="offline_cnn64.random", method="full", lr=2e-3, weight_decay=0.05, optimizer="adamw",
                    schedule="cosine", batch_size=64, max_epochs=20, early_stop=100, select_on="auroc",
                    loss="weighted_bce", sampler="shuffle", crop_from="view", crop_scale=(0.7, 1.0),
                    rotate_degrees=0.0, dihedral=True, hed=0.05, color_jitter=(0.2, 0.2, 0.1, 0.02),
                    batch_augment=True, targets="votes", tta="rot4", threshold="val_youden", cpu_bf16=True),
}
