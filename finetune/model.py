"""The fine-tuned classifier: an embedder backbone (``embedder.build``) + a 1-logit linear head (+ an
auxiliary subtype head when ``FinetuneConfig.aux_subtypes``: trained, saved, never used to predict).

Features are the recipe's pooled output the paper's heads read: the final-norm CLS token for ViTs
(the LoRA scripts take ``outputs[:, 0]`` of the timm head), the global pool for CNNs and Swin.
LoRA wraps ``qkv``/``proj``/``fc1``/``fc2`` with peft adapters and freezes every other backbone
weight; checkpoints then hold the adapters and the head only.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from mitoprobe import embedder
from mitoprobe.store.atomic import atomic_write
from mitoprobe.store.errors import FinetuneError, WeightsError

from .config import SUBTYPES, FinetuneConfig

HEAD_PREFIX = "head."


def _torch():
    import torch

    return torch


def feature_output(recipe) -> str:
    return "cls" if recipe.is_vit else next(iter(recipe.output_dims))


def make_classifier(features, output: str, aux_classes: int = 0):
    """``features``: an ``embedder.factory.FeatureModel``; returns an ``nn.Module`` (B, 3, S, S) -> (B,) logits.

    ``aux_classes``: also an ``aux`` head of that many logits on the same features (``forward_aux``)."""
    torch = _torch()

    class Classifier(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = features.backbone
            self.head = torch.nn.Linear(features.output_dims[output], 1)
            self.aux = torch.nn.Linear(features.output_dims[output], aux_classes) if aux_classes else None
            self._features, self._output = features, output

        def embed(self, x):
            return self._features(x)[self._output]

        def forward(self, x):
            return self.head(self.embed(x).float()).squeeze(-1)

        def forward_aux(self, x):
            """(main logits (B,), auxiliary logits (B, aux_classes)) from one pass of the backbone."""
            f = self.embed(x).float()
            return self.head(f).squeeze(-1), self.aux(f)

    return Classifier()


def lora_config(cfg: FinetuneConfig):
    from peft import LoraConfig

    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=list(cfg.lora_targets), bias="none")


def add_lora(backbone, cfg: FinetuneConfig):
    """Inject peft LoRA adapters into ``backbone`` in place and freeze everything else in it."""
    from peft import inject_adapter_in_model

    backbone = inject_adapter_in_model(lora_config(cfg), backbone)
    n = 0
    for name, p in backbone.named_parameters():
        p.requires_grad_("lora_" in name)
        n += "lora_" in name
    if n == 0:
        raise FinetuneError(f"LoRA targets {list(cfg.lora_targets)} match no module of {cfg.model}")
    return backbone


def build_classifier(cfg: FinetuneConfig, weights=None, overrides: dict | None = None, *,
                     hf_token_env: str = "HF_TOKEN", trust_pickle: bool = False):
    """The untrained classifier for ``cfg`` (base weights per the recipe) and its recipe.

    A network trained from scratch (a ``random``-weight recipe, no weights file) starts from the recipe's seed
    plus ``cfg.seed``, so another run seed changes the whole network's start, not only the head's (seed 0 is the
    recipe's own initialisation, as before seeds reached the backbone)."""
    torch = _torch()
    recipe = embedder.get_recipe(cfg.model)
    if recipe.arch == "handcrafted":
        raise FinetuneError("handcrafted features have no network to fine-tune")
    init = replace(recipe, seed=recipe.seed + cfg.seed) if recipe.weights == "random" and weights is None else recipe
    features, _ = embedder.build(init, weights, overrides=overrides, hf_token_env=hf_token_env,
                                 trust_pickle=trust_pickle)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)  # the adapters' and the head's initial weights
        if cfg.method == "lora":
            add_lora(features.backbone, cfg)
        model = make_classifier(features, feature_output(recipe), len(SUBTYPES) if cfg.aux_subtypes else 0)
    return model, recipe


def trainable_state(model, method: str) -> dict:
    """What a checkpoint holds: adapters + head (LoRA) or every tensor incl. buffers (full)."""
    sd = model.state_dict()
    if method == "full":
        return {k: v.detach().contiguous() for k, v in sd.items()}
    keep = {n for n, p in model.named_parameters() if p.requires_grad}
    return {k: v.detach().contiguous() for k, v in sd.items() if k in keep}


def parameter_counts(model) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return dict(total=total, trainable=trainable)


def save_weights(model, method: str, path: Path) -> None:
    """Atomic safetensors write of ``trainable_state``."""
    from safetensors.torch import save_file

    tensors = {k: v.cpu() for k, v in trainable_state(model, method).items()}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp)))


def load_weights(model, method: str, path: Path) -> None:
    """Load a checkpoint written by ``save_weights``; every stored tensor must find its place."""
    from safetensors.torch import load_file

    sd = load_file(str(path), device="cpu")
    missing, unexpected = model.load_state_dict(sd, strict=False)
    absent = [k for k in trainable_state(model, method) if k not in sd]
    if absent:
        raise WeightsError(f"{path}: lacks trained tensors {absent[:5]}")
    if unexpected:
        raise WeightsError(f"{path}: tensors {unexpected[:5]} do not fit this model")
    if method == "full" and missing:
        raise WeightsError(f"{path}: lacks {missing[:5]}")
