"""Tiny stand-ins of the real architectures that train on CPU in seconds (32 px): a 2-block ViT (``tiny_vit``,
the fine-tuning tests' model) and, for plans of the paper's grid, one foundation model and one end-to-end
baseline (a ViT with LoRA, a CNN fully fine-tuned)."""

from __future__ import annotations

from mitoprobe.embedder.recipes import Recipe, get_recipe, register
from mitoprobe.store.errors import RecipeError

# the paper's settings, cut short (and evaluated at the tiny input size: the scripts resize to 224)
FAST = dict(max_epochs=2, max_steps=2, batch_size=4, eval_resize=0)


def _register(recipe: Recipe) -> Recipe:
    try:
        return get_recipe(recipe.name)
    except RecipeError:
        return register(recipe)


def tiny_vit(name: str, family: str = "test") -> Recipe:
    """A registered 2-block ViT at 32 px (patch 8, width 32) named ``name``: the real ViT code path, tiny."""
    return _register(Recipe(
        name=name, family=family, arch="vit_tiny_patch16_224",
        kwargs=(("img_size", 32), ("patch_size", 8), ("embed_dim", 32), ("depth", 2), ("num_heads", 2),
                ("num_classes", 0)),
        input_size=32, resize=32, outputs=(("cls", 32), ("mean", 32)), note="tiny test ViT"))


def tiny_recipes() -> dict[str, Recipe]:
    """stem -> a registered tiny recipe (``uni``: LoRA on a 2-block ViT; ``efficientnetv2_m``: a ResNet-18, full)."""
    vit = tiny_vit("uni.tiny", family="uni")
    cnn = _register(Recipe(
        name="efficientnetv2_m.tiny", family="endtoend", arch="resnet18", kwargs=(("num_classes", 0),),
        input_size=32, resize=32, placement="native", outputs=(("vector", 512),), paper_outputs=("vector",),
        note="tiny stand-in of an end-to-end CNN"))
    return {"uni": vit, "efficientnetv2_m": cnn}
