"""The paper's fine-tuning settings as data: one entry per model and method, every value with its source.

Source: DeepMicroscopy/AMi-Br_Benchmark at commit 3acf4da (``source.SCRIPTS_AT``), the training scripts
``Foundation_Models/LoRA/<model>/*.py`` (7 LoRA models) and ``End-to-End_DL_Baselines/<model>/*.py``
(3 fully fine-tuned baselines), and for evaluation precision their ``*_inference.ipynb`` notebooks.
Each ``Setting`` names the line of the script its value is read from; ``tests/test_finetune_paper.py``
re-expresses the scripts' torchvision pipelines and training loop and proves the project matches them.

``FinetuneConfig.paper(model, method)`` is built from here and ``FinetuneConfig.options()`` lists a
run's differences from its own model's entry, so "paper settings" means this model's script, not
another model's. A model without a script (a random-weight control, a lab's recipe file, the offline
CNN) gets the method's generic entry (``generic_entry``): the Virchow2 LoRA script or the ViT-L
end-to-end script with the model's own normalisation and evaluation geometry; reports say so.

What the scripts do that ``mitoprobe`` matches by equivalence, not by identical code, is listed in
``EQUIVALENCES`` (docs/protocol.md repeats it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .source import Setting

LORA_DIR = "Foundation_Models/LoRA"
E2E_DIR = "End-to-End_DL_Baselines"

# Normalisations the scripts use (``transforms.Normalize``), by name (``FinetuneConfig.norm``).
NORM_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "half": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "hoptimus": ((0.707223, 0.578729, 0.703617), (0.211883, 0.230117, 0.177517)),
}


@dataclass(frozen=True)
class PaperEntry:
    """One script's settings: ``settings`` maps ``FinetuneConfig`` field names to ``Setting``s."""

    models: tuple[str, ...]  # recipe stems this script trains (``uni`` covers uni.hf and its uni.random twin)
    method: str
    script: str  # path inside REPO at SCRIPTS_AT ("" for the generic entries)
    notebook: str
    settings: dict[str, Setting] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.models[0]}/{self.method}" if self.script else f"generic/{self.method}"

    def values(self) -> dict[str, Any]:
        return {name: s.value for name, s in self.settings.items()}

    def source(self, name: str) -> str:
        """'script:line' of one setting (for tables and error messages)."""
        s = self.settings[name]
        if not self.script:
            return "generic (no script)"
        return f"{s.file or (self.notebook if name == 'eval_precision' else self.script)}:{s.line}"


def _common(lora: int | None, batch: int, adam: int, sched: int, sampler: int, select: int, forward: int,
            val_threshold: int, criterion: int) -> dict[str, Setting]:
    """What every script sets the same way, at that script's own lines (``sched``: the ReduceLROnPlateau
    ``factor=`` line; ``batch``: ``batch_size = 8``, followed by ``num_epochs = 100``)."""
    out = dict(
        batch_size=Setting(8, batch), max_epochs=Setting(100, batch + 1),
        lr=Setting(5e-5, adam), weight_decay=Setting(1e-5, adam), optimizer=Setting("adam", adam),
        schedule=Setting("plateau", sched - 1), lr_factor=Setting(0.5, sched), lr_patience=Setting(3, sched + 1),
        min_lr=Setting(1e-7, sched + 2), loss=Setting("bce", criterion), sampler=Setting("weighted", sampler),
        select_on=Setting("balanced_accuracy", select), threshold=Setting("fixed_0.5", val_threshold),
        precision=Setting("fp32", forward),  # no autocast anywhere in the training loop
    )
    if lora is not None:
        out.update(lora_r=Setting(8, lora), lora_alpha=Setting(16, lora + 1), lora_dropout=Setting(0.3, lora + 3),
                   lora_targets=Setting(("qkv", "proj", "fc1", "fc2"), lora + 2))
    return out


def _eval(resize: int, interpolation: str, line: int, precision: Setting) -> dict[str, Setting]:
    return dict(eval_resize=Setting(resize, line), eval_interpolation=Setting(interpolation, line),
                eval_precision=precision)


_FP32_EVAL = "no autocast (plain torch.no_grad())"  # eval_precision's "line": a quote from the notebook
_FP16_EVAL = 'torch.autocast(device_type="cuda", dtype=torch.float16)'


def _virchow(stem: str, folder: str, script: str, select: int, val_threshold: int) -> PaperEntry:
    path = f"{LORA_DIR}/{folder}/{script}"
    return PaperEntry(
        (stem,), "lora", path, f"{LORA_DIR}/{folder}/{script[:-3]}_inference.ipynb",
        dict(_common(35, 85, 124, 128, 118, select, 147, val_threshold, 88),
             norm=Setting("half", 49), train_crop=Setting("random", 45), crop_scale=Setting((0.8, 1.0), 45),
             hflip=Setting(True, 46), rotate_degrees=Setting(0.0, "44-50 (no RandomRotation)"),
             color_jitter=Setting((0.2, 0.2, 0.2, 0.1), 47), early_stop=Setting(10, 87),
             **_eval(224, "bilinear", 53, Setting("fp32", _FP32_EVAL))),
        ("head: reset_classifier(num_classes=1) on the final-norm tokens, CLS logit taken (outputs[:, 0])",))


def _uni_like(stem: str, folder: str, script: str, notebook: str, norm: str, *, train_crop: str,
              eval_precision: Setting, head: str, early: int, **lines: int) -> PaperEntry:
    """UNI, Prov-GigaPath, H-optimus-0/1: their train transform starts at line 44 (crop or resize, flip,
    RandomRotation(15), ColorJitter(0.2, 0.2)), Normalize at 49; ``lines`` are ``_common``'s."""
    crop = dict(train_crop=Setting(train_crop, 44))
    if train_crop == "random":
        crop["crop_scale"] = Setting((0.08, 1.0), "44 (RandomResizedCrop's default scale)")
    eval_line = 56 if stem.startswith("hoptimus") else 53
    return PaperEntry(
        (stem,), "lora", f"{LORA_DIR}/{folder}/{script}", f"{LORA_DIR}/{folder}/{notebook}",
        dict(_common(34, **lines), norm=Setting(norm, 49), **crop, hflip=Setting(True, 45),
             rotate_degrees=Setting(15.0, 46), color_jitter=Setting((0.2, 0.2, 0.0, 0.0), 47),
             early_stop=Setting(10, early), **_eval(224, "bilinear", eval_line, eval_precision)),
        (head,))


_UNI_HEAD = "head: create_model(num_classes=1): timm's head on the final-norm CLS token"
_HOPT_HEAD = "head: base_model.head = nn.Linear(num_features, 1) after num_classes=0: timm's head on the CLS token"

LORA_ENTRIES: tuple[PaperEntry, ...] = (
    _virchow("virchow", "Virchow", "virchow_lora.py", 205, 200),
    _virchow("virchow2", "Virchow2", "virchow2_lora.py", 197, 192),
    _uni_like("uni", "uni", "uni_lora.py", "uni_lora_inference.ipynb", "imagenet", train_crop="random",
              eval_precision=Setting("fp32", _FP32_EVAL), head=_UNI_HEAD, early=87, batch=85, adam=122, sched=126,
              sampler=116, select=172, forward=145, val_threshold=167, criterion=88),
    _uni_like("gigapath", "prov-gigapath", "prov-gigapath_lora.py", "prov-gigapath_lora_inference.ipynb", "imagenet",
              train_crop="random", eval_precision=Setting("fp32", _FP32_EVAL), head=_UNI_HEAD, early=87, batch=85,
              adam=122, sched=126, sampler=116, select=172, forward=145, val_threshold=167, criterion=88),
    _uni_like("hoptimus0", "h-optimus-0", "hoptimus0.py", "h-optimus-0_lora_inference.ipynb", "hoptimus",
              train_crop="random", eval_precision=Setting("fp16", _FP16_EVAL), head=_HOPT_HEAD, early=92, batch=90,
              adam=132, sched=136, sampler=126, select=182, forward=155, val_threshold=177, criterion=93),
    _uni_like("hoptimus1", "h-optimus-1", "hoptimus1.py", "h-optimus-1_lora_inference.ipynb", "hoptimus",
              train_crop="none", eval_precision=Setting("fp16", _FP16_EVAL), head=_HOPT_HEAD, early=92, batch=90,
              adam=132, sched=136, sampler=126, select=182, forward=155, val_threshold=177, criterion=93),
    # UNI2-h: both transforms are timm's create_transform(resolve_data_config(pretrained_cfg)) without
    # is_training, i.e. the evaluation transform: no augmentation at all (lines 110-111).
    PaperEntry(
        ("uni2_h",), "lora", f"{LORA_DIR}/uni2-h/uni2-h_lora.py", f"{LORA_DIR}/uni2-h/uni2-h_lora_inference.ipynb",
        dict(_common(37, 88, 128, 132, 122, 178, 151, 173, 91),
             norm=Setting("imagenet", "110 (pretrained_cfg mean/std)"), train_crop=Setting("none", 110),
             crop_scale=Setting((0.8, 1.0), "110 (no crop: unused)"), hflip=Setting(False, 110),
             rotate_degrees=Setting(0.0, 110), color_jitter=Setting((0.0, 0.0, 0.0, 0.0), 110),
             early_stop=Setting(10, 90),
             **_eval(224, "bilinear", "111 (pretrained_cfg: crop_pct 1.0, bilinear)", Setting("fp32", _FP32_EVAL))),
        ("head: create_model(num_classes=1): timm's head on the final-norm CLS token",
         "train transform = evaluation transform (create_transform without is_training)")),
)


def _e2e(stem: str, folder: str, script: str, *, adam: int, sched: int, sampler: int, select: int, forward: int,
         val_threshold: int, head: str) -> PaperEntry:
    path = f"{E2E_DIR}/{folder}/{script}"
    nb = {"efficientnetv2_m": "efficientnetv2m_inference.ipynb"}.get(stem, f"{script[:-3]}_inference.ipynb")
    return PaperEntry(
        (stem,), "full", path, f"{E2E_DIR}/{folder}/{nb}",
        dict(_common(None, 71 if stem != "swin_base" else 78, adam, sched, sampler, select, forward, val_threshold,
                     75 if stem != "swin_base" else 82),
             norm=Setting("imagenet", 33), train_crop=Setting("last", "27, 31"), crop_scale=Setting((0.8, 1.0), 31),
             hflip=Setting(True, 28), rotate_degrees=Setting(10.0, 29), color_jitter=Setting((0.2, 0.2, 0.2, 0.1), 30),
             early_stop=Setting(15, 73 if stem != "swin_base" else 80),
             **_eval(224, "bilinear", 37, Setting("fp32", _FP32_EVAL))),
        (head,))


E2E_ENTRIES: tuple[PaperEntry, ...] = (
    _e2e("efficientnetv2_m", "efficientnetv2_m", "efficientnetv2_m.py", adam=119, sched=123, sampler=111, select=185,
         forward=144, val_threshold=173, head="head: model.classifier = nn.Linear (global average pool); "
                                              "create_model(pretrained=False): trained from scratch (line 63)"),
    _e2e("swin_base", "swin_base_patch4_window7_224", "swin_base_patch4_window7_224.py", adam=125, sched=129,
         sampler=117, select=191, forward=150, val_threshold=179,
         head="head: Linear on timm's pooled features (num_classes=0, line 63)"),
    _e2e("vit_large", "vit_large_patch16_224", "vit_large_patch16_224.py", adam=118, sched=122, sampler=110,
         select=184, forward=143, val_threshold=172,
         head="head: model.head = nn.Linear on the final-norm CLS token; ImageNet statistics although the "
              "timm weights' own pretrained_cfg says 0.5"),
)

ENTRIES: tuple[PaperEntry, ...] = LORA_ENTRIES + E2E_ENTRIES


def _generic(method: str) -> PaperEntry:
    """The method's protocol for a model without a script: the Virchow2 LoRA or ViT-L end-to-end settings,
    with the model's own normalisation and evaluation geometry (its recipe)."""
    base = (LORA_ENTRIES[1] if method == "lora" else E2E_ENTRIES[2]).settings
    settings = dict(base, norm=Setting("recipe", "-"), eval_resize=Setting(0, "-"), eval_interpolation=Setting("", "-"))
    return PaperEntry(("*",), method, "", "", settings, ("no script for this model: the method's generic settings",))


GENERIC = {m: _generic(m) for m in ("lora", "full")}


def recipe_stem(model: str) -> str:
    """``uni.hf`` / ``uni.random`` -> ``uni`` (a recipe's ``.random`` twin shares its script)."""
    return model.rsplit(".", 1)[0] if "." in model else model


def entry_for(model: str, method: str) -> PaperEntry | None:
    """The script that trains ``model`` with ``method`` (None when the paper has none)."""
    stem = recipe_stem(model)
    return next((e for e in ENTRIES if e.method == method and stem in e.models), None)


def paper_entry(model: str, method: str) -> PaperEntry:
    """``entry_for``, else the method's generic entry."""
    return entry_for(model, method) or GENERIC[method]


# What the scripts do that the project reproduces by an equivalent, not identical, computation.
EQUIVALENCES: tuple[str, ...] = (
    "Labels: the scripts code Atypical = 0, Normal = 1 (line 77/80) and so learn P(normal); mitoprobe learns "
    "P(atypical). BCE, the class-balanced sampler and balanced accuracy at 0.5 are symmetric under the flip "
    "(a negated head gives the same loss and the same decisions; tests/test_finetune_paper.py trains both).",
    "Head: the scripts put timm's classifier on the model (reset_classifier / num_classes=1 / a new head); "
    "mitoprobe reads the same pooled feature (final-norm CLS for ViTs, the global pool for Swin and "
    "EfficientNet) and applies its own Linear(d, 1): the same function, initialised from the run's seed.",
    "LoRA: get_peft_model(model, modules_to_save=['head']) in the scripts, peft.inject_adapter_in_model on "
    "the backbone plus a trainable head here: the same adapters (incl. patch_embed.proj, which 'proj' matches).",
    "Folds: StratifiedGroupKFold(5, shuffle=True, random_state=42) over slides, as classifiers.protocol.",
    "Geometry of non-square patches: Resize(224) + CenterCrop and Resize((224, 224)) agree on the benchmark's "
    "square patches; for non-square patches mitoprobe resizes the short side and centre-crops in both cases.",
    "Data loading: the scripts' 8 DataLoader workers are a runtime choice here (--num-workers; default "
    "min(8, cores) on CUDA), never part of a run's identity.",
    "Evaluation precision fp16 (H-optimus notebooks) applies on CUDA only, as torch.autocast(device_type='cuda') "
    "does; on CPU evaluation runs in fp32.",
)
