"""mitoprobe's embedder: every frozen model runs once over every patch; vectors go to the store.

``import embedder`` and ``embedder.recipe_id_of`` never import torch or timm (the classifiers use
them to refuse stale vectors); ``embed`` and ``build`` import torch when called.

Example::

    import embedder, store
    embedder.embed(store.Store(), "handcrafted")
    embedder.recipe_id_of("virchow2.hf")
"""

from .identity import recipe_id_of
from .job import EmbedSummary, embed
from .recipes import Recipe, get_recipe, list_recipes, register
from .views import VIEWS_D8

# What `mitoprobe run` embeds when no foundation-model weights exist: handcrafted features and a
# random-weight ResNet-18 at native 128 px (about a minute each for all 6,573 patches on 2 CPU cores).
OFFLINE_DEFAULTS: tuple[str, ...] = ("handcrafted", "resnet18.random")


def build(recipe, weights=None, **kwargs):
    """``(model, transform)`` for a recipe; see ``embedder.factory.build`` (imports torch/timm)."""
    from .factory import build as _build

    return _build(recipe, weights, **kwargs)


__all__ = ["OFFLINE_DEFAULTS", "VIEWS_D8", "EmbedSummary", "Recipe", "build", "embed", "get_recipe",
           "list_recipes", "recipe_id_of", "register"]
