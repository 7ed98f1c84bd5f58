"""mitoprobe's embedder: every frozen model runs once over every patch; vectors go to the store.

``import mitoprobe.embedder`` never imports torch or timm: the recipe registry (``embedder.recipes``) and the
recipe identity (``embedder.identity``) are torch-free, so the classifiers can refuse stale vectors
cheaply; ``embed`` and ``build`` import torch when called.

Names outside the registry resolve through resolvers: the embedder's own finds a store's recipe
files (``add_recipe_file``: ``mitoprobe embed --recipe my_model.toml`` saves a normalised copy under
``<store>/recipes/``); higher layers register theirs (a fine-tuned fold checkpoint,
``ft:<run>/fold<k>``) with ``register_resolver``, and the embedder never imports them.

Example::

    from mitoprobe import embedder, store
    embedder.embed(store.Store(), "handcrafted")
    embedder.recipe_id_of("virchow2.hf")
"""

from .batches import embed_pngs
from .dihedral import VIEWS_D8
from .factory import build
from .identity import recipe_hash, recipe_id_of
from .job import EmbedSummary, embed
from .recipe_file import add_recipe_file, store_recipes
from .recipes import Recipe, get_recipe, list_recipes, register, register_resolver, resolve_recipe

# What `mitoprobe run` embeds when no foundation-model weights exist: handcrafted features and a
# random-weight ResNet-18 at native 128 px (about a minute each for all 6,573 patches on 2 CPU cores).
OFFLINE_DEFAULTS: tuple[str, ...] = ("handcrafted", "resnet18.random")

__all__ = ["OFFLINE_DEFAULTS", "VIEWS_D8", "EmbedSummary", "Recipe", "add_recipe_file", "build", "embed", "embed_pngs",
           "get_recipe", "list_recipes", "recipe_hash", "recipe_id_of", "register", "register_resolver",
           "resolve_recipe", "store_recipes"]
