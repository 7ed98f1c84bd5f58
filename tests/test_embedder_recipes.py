"""Recipe registry: the paper's seven models as their cards specify, ids, transforms (no torch for ids).

The registry drives these tests (timm's way): every built-in recipe is built, transformed and pinned
by hash as soon as its family module exists. ``tests/golden/recipe_hashes.json`` pins each recipe's
hash; after a deliberate recipe change run
``MITOPROBE_UPDATE_GOLDEN=1 pytest tests/test_embedder_recipes.py -k golden`` and commit the file.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mitoprobe import embedder
from mitoprobe.embedder.recipes import IMAGENET_MEAN, IMAGENET_STD, Recipe, builtin_recipes, get_recipe, list_recipes, register
from mitoprobe.embedder.transforms import Preprocess
from mitoprobe.store.errors import RecipeError

GOLDEN = Path(__file__).parent / "golden" / "recipe_hashes.json"
BUILTIN = {r.name: r for r in builtin_recipes()}
PAPER_SEVEN = ("virchow.hf", "virchow2.hf", "uni.hf", "uni2_h.hf", "hoptimus0.hf", "hoptimus1.hf", "gigapath.hf")
# (cls dim, prefix tokens = CLS + registers) per architecture, from the model cards.
EXPECTED = {"virchow": (1280, 1), "virchow2": (1280, 5), "uni": (1024, 1), "uni2_h": (1536, 9),
            "hoptimus0": (1536, 5), "hoptimus1": (1536, 5), "gigapath": (1536, 1)}


def test_registry_has_paper_models_twins_and_offline():
    names = {r.name for r in list_recipes()}
    for n in PAPER_SEVEN:
        assert n in names and n.replace(".hf", ".random") in names
    assert set(embedder.OFFLINE_DEFAULTS) <= names and "handcrafted" in embedder.OFFLINE_DEFAULTS
    with pytest.raises(ValueError, match="already registered"):
        register(get_recipe("uni.hf"))
    with pytest.raises(RecipeError, match="unknown embedder"):
        get_recipe("no_such.model")


def test_card_constants():
    v2 = get_recipe("virchow2.hf")
    kw = v2.model_kwargs
    assert kw["mlp_layer"] == "SwiGLUPacked" and kw["act_layer"] == "SiLU" and kw["reg_tokens"] == 4
    assert v2.output_dims == {"cls": 1280, "mean": 1280} and v2.paper_outputs == ("cls", "mean")
    assert v2.hub_id == "paige-ai/Virchow2" and v2.mean == IMAGENET_MEAN and v2.std == IMAGENET_STD
    u2 = get_recipe("uni2_h.hf").model_kwargs
    assert {k: u2[k] for k in ("embed_dim", "depth", "num_heads", "reg_tokens", "no_embed_class", "init_values")} == \
        dict(embed_dim=1536, depth=24, num_heads=24, reg_tokens=8, no_embed_class=True, init_values=1e-5)
    assert u2["mlp_ratio"] == pytest.approx(2.66667 * 2)
    uni = get_recipe("uni.hf")
    assert uni.model_kwargs["dynamic_img_size"] is True and (uni.resize, uni.input_size) == (224, 224)
    for n in ("hoptimus0.hf", "hoptimus1.hf"):
        r = get_recipe(n)
        assert r.mean == (0.707223, 0.578729, 0.703617) and r.std == (0.211883, 0.230117, 0.177517)
    g = get_recipe("gigapath.hf")
    assert (g.resize, g.input_size, g.interpolation) == (256, 224, "bicubic")


def test_paper_precision_and_interpolation():
    """As the AMi-Br benchmark's extraction scripts run them: fp16 autocast for six models, fp32 for
    Prov-GigaPath; UNI and UNI2-h resize bilinear (torchvision ``Resize(224)``, their hub transform)."""
    for stem in ("virchow", "virchow2", "uni", "uni2_h", "hoptimus0", "hoptimus1"):
        assert get_recipe(f"{stem}.hf").precision == "fp16", stem
    assert get_recipe("gigapath.hf").precision == "fp32"
    for stem in ("uni", "uni2_h"):
        assert get_recipe(f"{stem}.hf").interpolation == "bilinear"
    for stem in ("virchow", "virchow2", "hoptimus0", "hoptimus1", "gigapath"):
        assert get_recipe(f"{stem}.hf").interpolation == "bicubic"


@pytest.mark.parametrize("stem", sorted(EXPECTED))
def test_random_twin_differs_from_its_hf_recipe_only_in_weights(stem):
    weight_fields = ("name", "weights", "hub_id", "revision")
    hf, rnd = (get_recipe(f"{stem}.{tag}").identity() for tag in ("hf", "random"))
    assert {k: v for k, v in hf.items() if k not in weight_fields} == \
        {k: v for k, v in rnd.items() if k not in weight_fields}


@pytest.mark.parametrize("stem", sorted(EXPECTED))
def test_real_architecture_dims_and_prefix_tokens(stem):
    """Build the real architecture on the meta device (no memory, no weights): declared dims hold."""
    import torch

    r = get_recipe(f"{stem}.random")
    with torch.device("meta"):
        model, _ = embedder.build(r)
    dim, prefix = EXPECTED[stem]
    assert model.output_dims == r.output_dims == {"cls": dim, "mean": dim}
    assert model.num_prefix_tokens == prefix
    assert get_recipe(f"{stem}.hf").output_dims == r.output_dims


def test_recipe_ids_stable_and_sensitive(tmp_path):
    rid = embedder.recipe_id_of("virchow2.hf")
    assert rid == embedder.recipe_id_of("virchow2.hf") and len(rid) == 16
    assert rid != embedder.recipe_id_of("virchow2.random")
    r = get_recipe("virchow2.hf")
    native = dataclasses.replace(r, name="virchow2.native_test", placement="native")
    assert embedder.recipe_id_of(native) != embedder.recipe_id_of(dataclasses.replace(native, placement="upsample"))
    assert embedder.recipe_id_of(dataclasses.replace(r, note="other words")) == rid  # notes do not change vectors
    w1, w2 = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    w1.write_bytes(b"one")
    w2.write_bytes(b"two")
    assert len({rid, embedder.recipe_id_of(r, w1), embedder.recipe_id_of(r, w2)}) == 3


def test_import_and_recipe_id_do_not_import_torch():
    code = ("import sys; from mitoprobe import embedder; rid = embedder.recipe_id_of('virchow2.hf'); embedder.list_recipes(); "
            "print(rid, 'torch' in sys.modules, 'timm' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == [embedder.recipe_id_of("virchow2.hf"), "False", "False"]


def _rgb(seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(128, 128, 3), dtype=np.uint8)


def test_transform_geometry_and_normalisation():
    from PIL import Image

    rgb = _rgb()
    up = Preprocess.from_recipe(get_recipe("virchow2.hf"))
    assert up(rgb).shape == (3, 224, 224)
    g = Preprocess.from_recipe(get_recipe("gigapath.hf"))
    ref = np.asarray(Image.fromarray(rgb).resize((256, 256), Image.Resampling.BICUBIC))[16:240, 16:240]
    assert np.array_equal(g.geometry(rgb), ref)
    nat = Preprocess.from_recipe(dataclasses.replace(get_recipe("uni.hf"), placement="native"))
    assert np.array_equal(nat.geometry(rgb)[48:176, 48:176], rgb)  # 1:1 pixels, centred
    h = Preprocess.from_recipe(get_recipe("hoptimus0.hf"))
    mean_img = np.broadcast_to((np.array(h.mean) * 255).round().astype(np.uint8), (128, 128, 3)).copy()
    assert np.abs(h(mean_img)).max() < 0.02  # the recipe's mean colour normalises to ~0
    cnn = Preprocess.from_recipe(get_recipe("resnet18.random"))
    assert cnn.geometry(rgb).shape == (128, 128, 3) and np.array_equal(cnn.geometry(rgb), rgb)


def test_upsample_keeps_the_aspect_of_non_square_patches():
    """Short side to ``resize``, then the centre crop (torchvision ``Resize(int)`` + ``CenterCrop``):
    a 200x150 patch is not squashed; a square patch is resized exactly as before."""
    from PIL import Image
    from torchvision import transforms

    rgb = np.random.default_rng(1).integers(0, 256, size=(150, 200, 3), dtype=np.uint8)  # 200 wide, 150 high
    odd = np.random.default_rng(2).integers(0, 256, size=(201, 150, 3), dtype=np.uint8)  # odd crop margins
    for name in ("gigapath.hf", "uni.hf", "virchow2.hf", "offline_cnn.random"):
        r = get_recipe(name)
        interp = transforms.InterpolationMode(r.interpolation)
        tv = transforms.Compose([transforms.Resize(r.resize, interpolation=interp), transforms.CenterCrop(r.input_size)])
        for a in (rgb, odd):
            assert np.array_equal(Preprocess.from_recipe(r).geometry(a), np.asarray(tv(Image.fromarray(a)))), name
    square = _rgb()
    g = Preprocess.from_recipe(get_recipe("gigapath.hf"))
    old = np.asarray(Image.fromarray(square).resize((256, 256), Image.Resampling.BICUBIC))[16:240, 16:240]
    assert np.array_equal(g.geometry(square), old)
    nat = Preprocess.from_recipe(get_recipe("resnet18.random"))  # native 128 px canvas
    out = nat.geometry(rgb)
    assert out.shape == (128, 128, 3) and np.array_equal(out, rgb[11:139, 36:164])  # centre crop per side
    big = Preprocess.from_recipe(dataclasses.replace(get_recipe("uni.hf"), placement="native"))
    out = big.geometry(rgb)  # 224 canvas: reflect-padded per side, the patch centred
    assert out.shape == (224, 224, 3) and np.array_equal(out[37:187, 12:212], rgb)
    tiny = np.full((5, 3, 3), 7, np.uint8)
    assert np.all(big.geometry(tiny) == 7)


def test_recipe_validation():
    with pytest.raises(ValueError):
        Recipe(name="x.hf", family="x", arch="vit_tiny_patch16_224", weights="hf")  # no hub id
    with pytest.raises(ValueError):
        Recipe(name="x.random", family="x", arch="a", placement="sideways", outputs=(("vector", 3),),
               paper_outputs=("vector",))


def test_golden_recipe_hashes():
    """Every built-in recipe's hash is pinned: an accidental change to a recipe shows up in review."""
    current = {name: embedder.recipe_hash(r) for name, r in sorted(BUILTIN.items())}
    if os.environ.get("MITOPROBE_UPDATE_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
    pinned = json.loads(GOLDEN.read_text())
    changed = {n for n in current.keys() & pinned.keys() if current[n] != pinned[n]}
    assert not changed and current.keys() == pinned.keys(), (
        f"recipes changed {sorted(changed)}, added {sorted(current.keys() - pinned.keys())}, removed "
        f"{sorted(pinned.keys() - current.keys())}: if deliberate, regenerate {GOLDEN.name} (see module docstring)")


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_every_recipe_builds_with_its_declared_outputs(name):
    """The real architecture on the meta device (no memory, no weights) has the declared output dims,
    and the recipe's transform gives the model's input shape."""
    import torch

    r = BUILTIN[name]
    rgb = np.random.default_rng(0).integers(0, 256, size=(128, 128, 3), dtype=np.uint8)
    if r.arch == "handcrafted":
        model, transform = embedder.build(r)
        assert model is None and transform(rgb).shape == (r.output_dims["vector"],)
        return
    arch = dataclasses.replace(r, weights="random", hub_id=None)  # the same architecture, no download
    with torch.device("meta"):
        model, transform = embedder.build(arch)
    assert model.output_dims == r.output_dims
    assert transform(rgb).shape == (3, r.input_size, r.input_size)
    assert "." in name and name.split(".")[1] in ("hf", "random")  # arch.tag, the tag naming the weights


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_every_recipe_id_is_stable_and_hashes_its_fields(name):
    r = BUILTIN[name]
    assert embedder.recipe_id_of(name) == embedder.recipe_id_of(r) and len(embedder.recipe_id_of(r)) == 16
    assert embedder.recipe_id_of(dataclasses.replace(r, seed=r.seed + 1)) != embedder.recipe_id_of(r)


def test_unresolvable_name_is_an_error_not_a_fallback(tmp_path):
    with pytest.raises(RecipeError, match="unknown embedder 'nobody.knows'.*resolver"):
        embedder.resolve_recipe("nobody.knows", tmp_path)


def test_registered_resolver_turns_a_name_into_a_recipe(tmp_path):
    """A higher layer registers a resolver; the embedder finds the recipe without importing that layer."""
    base = get_recipe("resnet18.random")
    seen = []

    def resolver(name, store_root):
        seen.append((name, store_root))
        return dataclasses.replace(base, name="lab.custom") if name == "lab:custom" else None

    embedder.register_resolver("test-lab", resolver)
    try:
        r = embedder.resolve_recipe("lab:custom", tmp_path)
        assert r.name == "lab.custom" and ("lab:custom", tmp_path) in seen
        assert embedder.recipe_id_of("lab:custom", store_root=tmp_path) == embedder.recipe_id_of(r)
    finally:
        from mitoprobe.embedder import recipes

        recipes._RESOLVERS.pop("test-lab")


def test_fresh_process_finds_the_finetune_resolver_through_the_entry_point():
    """In a process that never imported ``finetune``, an ``ft:`` name still reaches its resolver (so the
    stale check works for fine-tuned sets there too), and the embedder never imported finetune itself."""
    code = ("import sys\nfrom mitoprobe import embedder\n"
            "try:\n    embedder.resolve_recipe('ft:0000abcd/fold0', '/nonexistent-store')\n"
            "except Exception as exc:\n    print(type(exc).__name__, '|', exc)\n"
            "print('mitoprobe.finetune' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    first, loaded = out.strip().splitlines()
    assert first.startswith("RecipeError |") and "fine-tuning runs" in first  # finetune's own message
    assert loaded == "True"  # loaded through the entry point, on demand
    code = "import sys; from mitoprobe import embedder; embedder.list_recipes(); print('mitoprobe.finetune' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"
