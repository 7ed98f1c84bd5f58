"""What a fine-tuning run is: one frozen, hashable config (the paper's recipe for its model by default).

``FinetuneConfig.paper(model, method)`` gives the settings of the DeepMicroscopy/AMi-Br_Benchmark script
that trains that model (``mitoprobe.paper.finetune``: one entry per model and method, each value with its script
and line). The scripts differ per model: normalisation (0.5 for Virchow/Virchow2, ImageNet for UNI,
UNI2-h, Prov-GigaPath and the end-to-end baselines, the H&E statistics for H-optimus), training
augmentation (``train_crop``, ``crop_scale``, rotation, colour jitter; none at all for UNI2-h),
evaluation geometry (``eval_resize``/``eval_interpolation``), early stopping (10 LoRA, 15 end-to-end)
and evaluation precision (fp16 autocast for H-optimus on CUDA). Common to all: Adam lr 5e-5 wd 1e-5,
batch 8, BCE with a class-balanced WeightedRandomSampler, ReduceLROnPlateau on the held-out balanced
accuracy (max, factor 0.5, patience 3, min lr 1e-7), <= 100 epochs, fp32 training; LoRA r=8, alpha=16,
dropout 0.3 on qkv/proj/fc1/fc2. docs/protocol.md has the table.

Every field enters the run's hash; ``options()`` lists what differs from the model's own paper entry
(shown in reports, so an empty ``options`` means "this model's script").

``PRESETS`` name tuned configurations beyond the paper's (``FinetuneConfig.preset``): ``offline`` is
the from-scratch small CNN that trains all five folds on a 2-core AVX2 CPU at fp32 within the
30-minute budget of ``mitoprobe run --full`` (docs/offline-accuracy.md).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

from mitoprobe.classifiers.protocol import PAPER_TRAIN
from mitoprobe.embedder.factory import preprocess
from mitoprobe.paper.finetune import NORM_STATS, PaperEntry, paper_entry
from mitoprobe.store.errors import FinetuneError

METHODS = ("lora", "full")
LOSSES = ("bce", "weighted_bce", "focal")
SAMPLERS = ("weighted", "shuffle")
# half: mean = std = 0.5; imagenet; hoptimus: Bioptimus' H&E statistics; recipe: the embedder recipe's own.
# "paper" is the name runs stored before the per-model table used for 0.5 (read back, never a default).
NORMS = ("half", "imagenet", "hoptimus", "recipe", "paper")
# Training geometry: "random" = RandomResizedCrop(S, crop_scale) first (LoRA scripts); "none" = the evaluation
# geometry, no crop (H-optimus-1, UNI2-h); "last" = the evaluation geometry first, RandomResizedCrop(S,
# crop_scale) after the other augmentations (the end-to-end scripts)
TRAIN_CROPS = ("random", "none", "last")
# Autocast dtype on CUDA ("auto": bf16 for training, the training dtype for evaluation: the behaviour
# before per-model precision). CPU runs fp32 unless ``cpu_bf16`` and the CPU has native bf16.
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
INTERPOLATIONS = ("", "bilinear", "bicubic", "nearest", "lanczos")  # "": the recipe's
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
# The experts' subtype vocabulary of AMi-Br (AMI-BR.csv ``expert1_label``/``expert2_label``, spelling as published):
# the classes of the auxiliary subtype head (``aux_subtypes``). Fixed here, so a checkpoint's head always has
# this size; a subtype outside it counts as no subtype for that expert.
SUBTYPES = ("NMF prometaphase", "NMF metaphase", "NMF anaphase-telophase", "NMF ring shape",
            "AMF segregation", "AMF multipolar", "AMF bipolar assymetric", "AMF other")
# Fields added after schema 1: left out of ``to_dict`` at their defaults, so older runs keep their keys.
_LATER_FIELDS = ("optimizer", "schedule", "select_on", "ema", "mixup", "crop_from", "cpu_bf16", "batch_augment",
                 "targets", "aux_subtypes", "train_crop", "eval_resize", "eval_interpolation", "precision", "eval_precision",
                 "train_on")


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
    norm: str = "half"
    train_crop: str = "random"
    eval_resize: int = 0  # evaluation: resize the short side to this, then centre-crop (0 = the recipe's resize)
    eval_interpolation: str = ""  # "" = the recipe's
    precision: str = "auto"  # training autocast dtype on CUDA (PRECISIONS)
    eval_precision: str = "auto"  # evaluation autocast dtype on CUDA ("auto" = the training dtype)
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
    # weight of an auxiliary loss: a second head predicts the two experts' subtype calls (SUBTYPES, a soft target
    # where they differ) from the same features; 0 = off. Training patches only; predictions use the main head.
    aux_subtypes: float = 0.0
    cpu_bf16: bool = False  # allow bf16 autocast + channels-last on CPU where it is native (finetune.precision)
    # the dataset whose split=train patches make the 5 slide-grouped folds (a lab's cohort; the paper: AMi-Br)
    train_on: str = PAPER_TRAIN
    seed: int = 0
    schema_version: int = 1

    def __post_init__(self) -> None:
        for name, allowed in (("method", METHODS), ("loss", LOSSES), ("sampler", SAMPLERS), ("norm", NORMS),
                              ("tta", tuple(TTAS)), ("threshold", THRESHOLDS), ("optimizer", OPTIMIZERS),
                              ("schedule", SCHEDULES), ("select_on", SELECT_ON), ("crop_from", CROP_FROM),
                              ("targets", TARGETS), ("train_crop", TRAIN_CROPS), ("precision", PRECISIONS),
                              ("eval_precision", PRECISIONS), ("eval_interpolation", INTERPOLATIONS)):
            if getattr(self, name) not in allowed:
                raise FinetuneError(f"finetune {name} must be one of {list(allowed)}, not {getattr(self, name)!r}")
        if self.batch_size < 1 or self.max_epochs < 1 or self.max_steps < 0:
            raise FinetuneError("finetune needs batch_size >= 1, max_epochs >= 1 and max_steps >= 0")
        if not 0 <= self.ema < 1 or self.mixup < 0 or self.aux_subtypes < 0:
            raise FinetuneError("finetune needs 0 <= ema < 1, mixup >= 0 and aux_subtypes >= 0")

    @classmethod
    def paper(cls, model: str, method: str = "lora", **overrides) -> "FinetuneConfig":
        """The settings of the paper's script for ``model`` and ``method`` (``mitoprobe.paper.finetune``; the method's
        generic entry for a model without a script), then ``overrides`` (None values are ignored)."""
        if method not in METHODS:
            raise FinetuneError(f"finetune method must be one of {list(METHODS)}, not {method!r}")
        base = paper_entry(model, method).values()
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(model=model, method=method, **base)

    @classmethod
    def preset(cls, name: str, **overrides) -> "FinetuneConfig":
        """A named configuration (``PRESETS``: complete in itself), then ``overrides`` (None values ignored)."""
        if name not in PRESETS:
            raise FinetuneError(f"unknown finetune preset {name!r}; choose from {sorted(PRESETS)}")
        base = dict(PRESETS[name])
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**base)

    def paper_entry(self) -> PaperEntry:
        """The script this configuration is compared with (``options()``)."""
        return paper_entry(self.model, self.method)

    def to_dict(self) -> dict:
        d = asdict(self)
        ref = FinetuneConfig(model=self.model)
        return {k: v for k, v in d.items() if k not in _LATER_FIELDS or v != getattr(ref, k)}

    def options(self) -> dict:
        """Fields that differ from this model's paper script (``paper_entry``; the report's 'options')."""
        ref = FinetuneConfig.paper(self.model, self.method)
        skip = {"model", "method", "schema_version"}
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name not in skip and getattr(self, f.name) != getattr(ref, f.name)}

    def mean_std(self) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None]:
        """The normalisation's (mean, std); (None, None) for "recipe" (the recipe's own)."""
        return NORM_STATS.get("half" if self.norm == "paper" else self.norm, (None, None))

    def eval_preprocess(self, recipe):
        """The evaluation transform: the recipe's input size, this config's resize, interpolation and norm."""
        p = preprocess(recipe, *self.mean_std())
        return replace(p, resize=self.eval_resize or p.resize, interpolation=self.eval_interpolation or p.interpolation)

    def augment_kwargs(self) -> dict:
        """The training augmentation settings, as both pipelines take them (``finetune.augment``)."""
        return dict(train_crop=self.train_crop, crop_scale=self.crop_scale, hflip=self.hflip, color_jitter=self.color_jitter,
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
# Issue 23, round 4: an auxiliary head on the two experts' subtype calls (``aux_subtypes=1.0``) raised the CNN's
# 5-fold held-out AUROC from 0.845 to 0.878 (every fold) and the best fusion's from 0.869 to 0.885, at no
# measurable training cost; EMA, mixup and HED 0.1 did not pass their pre-written rules.
# The preset is complete in itself (not layered on a paper entry), so its run key never moves with the table.
PRESETS: dict[str, dict] = {
    "offline": dict(model="offline_cnn64.random", method="full", norm="recipe", lr=2e-3, weight_decay=0.05, optimizer="adamw",
                    schedule="cosine", batch_size=64, max_epochs=20, early_stop=100, select_on="auroc",
                    loss="weighted_bce", sampler="shuffle", crop_from="view", crop_scale=(0.7, 1.0),
                    rotate_degrees=0.0, dihedral=True, hed=0.05, color_jitter=(0.2, 0.2, 0.1, 0.02),
                    batch_augment=True, targets="votes", aux_subtypes=1.0, tta="rot4", threshold="val_youden", cpu_bf16=True),
}
