"""Bring your own model: recipe files (``mitoprobe embed --recipe FILE``) and hub revision pinning.

A tiny ViT's random weights saved as ``.safetensors`` stand in for a lab's checkpoint; a fake
Hugging Face cache (``HF_HUB_CACHE``, offline) stands in for the hub. No network anywhere.
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
from conftest import make_six_slide_store, run_cli
from mitoprobe.embedder.factory import build
from mitoprobe.embedder.hub import cached_commit, hub_cache_dir, hub_commit
from mitoprobe.embedder.identity import identity_of
from mitoprobe.embedder.recipe_file import add_recipe_file, load_recipe_file, store_recipe
from mitoprobe.embedder.recipes import get_recipe
from mitoprobe.embedder.transforms import decode_png
from mitoprobe.store.errors import RecipeError, WeightsError
from mitoprobe.store.hashing import file_sha256

NAME = "tinyvit.lab"
ARCH_KW = dict(depth=1, embed_dim=32, num_heads=2, img_size=64, reg_tokens=2, num_classes=0)
COMMIT_A, COMMIT_B = "a" * 40, "b" * 40


def _tiny_state_dict(seed: int = 1) -> dict:
    import timm
    import torch

    torch.manual_seed(seed)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, **ARCH_KW)
    return {k: v.contiguous() for k, v in model.state_dict().items()}


def _save_weights(path: Path, seed: int = 1) -> str:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(_tiny_state_dict(seed), str(path))
    return file_sha256(path)


def _toml(path: Path, body: str, kwargs: dict | None = ARCH_KW) -> Path:
    kw = "" if kwargs is None else "\n[kwargs]\n" + "\n".join(f"{k} = {json.dumps(v)}" for k, v in kwargs.items())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(body.strip() + "\n" + kw + "\n")
    return path


def _local_recipe(folder: Path, sha: str | None, weights: str = "tiny.safetensors", extra: str = "") -> Path:
    pin = f'sha256 = "{sha}"\n' if sha else ""
    return _toml(folder / "my_model.toml", f'''
name = "{NAME}"
arch = "vit_tiny_patch16_224"
weights = "{weights}"
{pin}input_size = 64
resize = 64
outputs = ["cls", "mean", "pooled"]
precision = "fp32"
{extra}''')


def _snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _py(code: str, **env) -> str:
    full = dict(os.environ, **env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=full,
                          cwd=Path(__file__).parent.parent).stdout.strip()


# -- local weights, end to end -------------------------------------------------------------------------

def test_recipe_file_embeds_through_the_cli_and_resolves_in_a_fresh_process(tiny_store, tmp_path, monkeypatch,
                                                                            capsys):
    root = tiny_store.root
    model_dir = tmp_path / "lab"
    sha = _save_weights(model_dir / "tiny.safetensors")
    toml = _local_recipe(model_dir, sha)
    code, out = run_cli(monkeypatch, capsys, "embed", "--recipe", str(toml), "--store", str(root),
                        "--num-workers", "0")
    assert code == 0 and "wrote" in out, out
    eset = next(s for s in tiny_store.features.sets() if s.name == NAME)
    assert eset.complete and eset.outputs == {"cls": 32, "mean": 32, "pooled": 32}
    assert eset.provenance["weights"] == {"source": "local", "sha256": sha}
    assert "weights_file" not in eset.provenance["recipe"] and eset.provenance["recipe"]["weights_sha256"] == sha

    # the stored vectors are the checkpoint's (not random weights): one patch against a direct forward
    import torch

    recipe = store_recipe(NAME, root)
    net, transform = build(recipe)
    pid = tiny_store.patches(columns=["patch_id"])["patch_id"].iloc[0]
    x = torch.from_numpy(transform(decode_png(tiny_store.images([pid])[pid])))[None]
    with torch.no_grad():
        tokens = net.backbone.forward_features(x)
    t = tiny_store.features.read_table(eset)
    row = t.to_pandas().set_index("patch_id").loc[pid]
    np.testing.assert_allclose(np.asarray(row["cls"]), tokens[0, 0].numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(row["mean"]), tokens[0, 3:].mean(0).numpy(), rtol=1e-4, atol=1e-5)

    # a fresh process (the classifiers' view) finds the same id by name, from the store, without torch
    code_ = (f"import sys; from mitoprobe import embedder; print(embedder.recipe_id_of({NAME!r}, store_root={str(root)!r}), "
             "'torch' in sys.modules)")
    assert _py(code_).split() == [eset.recipe_id, "False"]

    # moving the weights file (same bytes) keeps the id: nothing to embed again, the store copy follows
    moved = tmp_path / "elsewhere" / "renamed.safetensors"
    moved.parent.mkdir()
    (model_dir / "tiny.safetensors").rename(moved)
    toml = _local_recipe(model_dir, sha, weights=str(moved))
    code, out = run_cli(monkeypatch, capsys, "embed", "--recipe", str(toml), "--store", str(root),
                        "--num-workers", "0")
    assert code == 0 and "nothing to do" in out and eset.recipe_id in out, out
    assert store_recipe(NAME, root).weights_file == str(moved)

    # `embed --list` shows the store's recipe files and where they came from
    monkeypatch.setenv("COLUMNS", "400")
    code, out = run_cli(monkeypatch, capsys, "embed", "--list", "--store", str(root))
    assert code == 0 and NAME in out and "my_model.toml" in out


def test_probe_in_a_fresh_process_finds_a_recipe_file_by_name(tmp_path):
    """``mitoprobe probe --model NAME`` in a new process (which never saw the recipe file) scores the
    vectors a recipe file made: the classifiers resolve the name through the store's copy."""
    st = make_six_slide_store(tmp_path)
    sha = _save_weights(tmp_path / "lab" / "tiny.safetensors")
    add_recipe_file(st, _local_recipe(tmp_path / "lab", sha))
    embedder.embed(st, NAME, progress=False, num_workers=0)
    out = _py("from mitoprobe.cli import main; import sys; sys.argv = ['mitoprobe', 'probe', '--model', "
              f"{NAME!r}, '--head', 'knn', '--store', {str(st.root)!r}]\ntry:\n    main()\nexcept SystemExit as e:\n"
              "    assert not e.code, e.code")
    runs = st.results.read("runs")
    assert set(runs["model"]) == {NAME}, out


def test_other_weights_bytes_make_another_id(tiny_store, tmp_path):
    """The sha256 is the weights' identity: same file name and path, other bytes -> another recipe id."""
    folder = tmp_path / "lab"
    sha1 = _save_weights(folder / "tiny.safetensors", seed=1)
    r1 = add_recipe_file(tiny_store, _local_recipe(folder, sha1)).recipe
    id1 = embedder.recipe_id_of(NAME, store_root=tiny_store.root)
    sha2 = _save_weights(folder / "tiny.safetensors", seed=2)
    added = add_recipe_file(tiny_store, _local_recipe(folder, sha2))
    assert sha1 != sha2 and added.recipe.weights_file == r1.weights_file
    assert embedder.recipe_id_of(NAME, store_root=tiny_store.root) != id1
    assert any("changed" in n and "stale" in n for n in added.notes)


def test_wrong_sha256_is_refused_with_the_actual_digest_and_the_store_unchanged(tiny_store, tmp_path, monkeypatch,
                                                                               capsys):
    folder = tmp_path / "lab"
    sha = _save_weights(folder / "tiny.safetensors")
    toml = _local_recipe(folder, "0" * 64)
    before = _snapshot(tiny_store.root)
    code, out = run_cli(monkeypatch, capsys, "embed", "--recipe", str(toml), "--store", str(tiny_store.root))
    assert code == 2 and "'sha256'" in out and sha in out and str(toml) in out, out
    assert _snapshot(tiny_store.root) == before


def test_missing_sha256_is_computed_pinned_in_the_store_copy_and_then_enforced(tiny_store, tmp_path):
    folder = tmp_path / "lab"
    sha = _save_weights(folder / "tiny.safetensors")
    added = add_recipe_file(tiny_store, _local_recipe(folder, None))
    assert added.recipe.weights_sha256 == sha and any("pinned" in n and sha in n for n in added.notes)
    assert f'sha256 = "{sha}"' in added.path.read_text()
    _save_weights(folder / "tiny.safetensors", seed=7)  # the file changes under the pinned copy
    with pytest.raises(WeightsError, match=f"pins {sha}"):
        embedder.embed(tiny_store, NAME, progress=False, num_workers=0)
    assert not [s for s in tiny_store.features.sets() if s.name == NAME]


@pytest.mark.parametrize("body, key, words", [
    ('name = "x.lab"\narch = "resnet18"\nweights = "w.safetensors"\noutptus = ["cls"]', "'outptus'",
     "did you mean 'outputs'"),
    ('name = "x.lab"\nweights = "w.safetensors"', "'arch'", "missing"),
    ('name = "x.lab"\narch = "vit_tiny_patch16_224"\nweights = "w.safetensors"\noutputs = ["patch"]',
     "'outputs'", "unknown output 'patch'"),
    ('name = "uni.hf"\narch = "vit_large_patch16_224"\nhub = "hf-hub:MahmoodLab/uni"', "'name'", "built-in"),
    ('name = "nodot"\narch = "resnet18"\nweights = "w.safetensors"', "'name'", "arch.tag"),
    ('name = "x.lab"\narch = "resnet18"', "'weights'", "no weight source"),
    ('name = "x.lab"\narch = "resnet18"\nhub = "hf-hub:org/m@v1"', "'hub'", "revision"),
    ('name = "x.lab"\narch = "resnet18"\nhub = "hf-hub:org/m"\nsha256 = "' + "a" * 64 + '"', "'sha256'", "revision"),
    ('name = "x.lab"\narch = "resnet18"\nweights = "w.safetensors"\nprecision = "int8"', "'precision'", "fp16"),
    ('name = "x.lab"\narch = "resnet18"\nweights = "w.safetensors"\nmean = [0.5, 0.5]', "'mean'", "3 numbers"),
    ('name = "x.lab"\narch = "resnet18"\nweights = "w.safetensors"\ninput_size = 224\nresize = 128', "'resize'",
     "smaller"),
    ('name = "x.lab"\narch = "vit_tiny_patch_oops"\nweights = "w.safetensors"', "'arch'", "not a timm architecture"),
    ('name = "x.lab"\narch = "resnet18"\nweights = "missing.safetensors"', "'weights'", "not found"),
    ('name = "x.lab"\narch = "resnet18"\nweights = "w.safetensors"\noutputs = ["cls"]', "'outputs'", "not a token"),
    ('name = "x.lab"\narch = "resnet18"\nweights = "w.onnx"', "'weights'", "unknown format"),
    ('name = "x.lab"\narch = "resnet18\nweights = 1', "not valid TOML", "toml.io"),
])
def test_bad_recipe_files_are_refused_naming_file_and_key(tmp_path, tiny_store, body, key, words):
    (tmp_path / "w.safetensors").write_bytes(b"not used: the recipe fails before its weights are read")
    toml = _toml(tmp_path / "bad.toml", body, kwargs=None)
    before = _snapshot(tiny_store.root)
    with pytest.raises(RecipeError) as exc:
        add_recipe_file(tiny_store, toml)
    assert str(toml) in str(exc.value) and key in str(exc.value) and words in str(exc.value), str(exc.value)
    assert _snapshot(tiny_store.root) == before


def test_weights_that_do_not_fit_the_architecture_are_refused_before_the_store_copy(tiny_store, tmp_path):
    folder = tmp_path / "lab"
    sha = _save_weights(folder / "tiny.safetensors")
    toml = _local_recipe(folder, sha)
    toml.write_text(toml.read_text().replace("embed_dim = 32", "embed_dim = 48"))
    with pytest.raises(WeightsError, match="does not fit"):
        add_recipe_file(tiny_store, toml)
    assert not (tiny_store.root / "recipes").exists()


def test_output_dimensions_are_derived_or_checked(tmp_path):
    import timm

    folder = tmp_path / "lab"
    sha = _save_weights(folder / "tiny.safetensors")
    toml = _local_recipe(folder, sha)
    assert load_recipe_file(toml)[0].output_dims == {"cls": 32, "mean": 32, "pooled": 32}
    text = toml.read_text().replace('outputs = ["cls", "mean", "pooled"]', "outputs = {cls = 31}")
    toml.write_text(text)
    with pytest.raises(RecipeError, match="'outputs'.*differ"):
        load_recipe_file(toml)
    cnn = timm.create_model("resnet18", num_classes=0)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in cnn.state_dict().items()}, str(folder / "r18.safetensors"))
    r18 = _toml(folder / "r18.toml", 'name = "r18.lab"\narch = "resnet18"\nweights = "r18.safetensors"\n'
                                      'input_size = 64', kwargs={"num_classes": 0})
    assert load_recipe_file(r18)[0].output_dims == {"pooled": 512}  # default output: the model's pool


# -- ids -----------------------------------------------------------------------------------------------

def test_new_recipe_fields_leave_builtin_ids_alone_and_location_is_not_identity(tmp_path):
    r = get_recipe("virchow2.hf")
    assert not {"weights_sha256", "weights_file", "source"} & set(r.identity())
    folder = tmp_path / "lab"
    sha = _save_weights(folder / "tiny.safetensors")
    recipe, _ = load_recipe_file(_local_recipe(folder, sha))
    moved = dataclasses.replace(recipe, weights_file="/elsewhere/x.safetensors", source="/other/file.toml")
    assert embedder.recipe_id_of(moved) == embedder.recipe_id_of(recipe)
    assert embedder.recipe_id_of(dataclasses.replace(recipe, weights_sha256="f" * 64)) != embedder.recipe_id_of(recipe)


# -- hub revisions -------------------------------------------------------------------------------------

def _fake_hub(cache: Path, hub_id: str, commit: str, ref: str = "main", weights: bool = True) -> Path:
    """A huggingface_hub cache holding one snapshot of a timm model repo (config.json + weights)."""
    repo = cache / ("models--" + hub_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / ref).write_text(commit)
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True, exist_ok=True)
    cfg = {"architecture": "vit_tiny_patch16_224", "num_classes": 0, "num_features": 32,
           "model_args": {k: v for k, v in ARCH_KW.items() if k != "num_classes"},
           "pretrained_cfg": {"tag": "test", "input_size": [3, 64, 64], "interpolation": "bicubic", "crop_pct": 1.0,
                              "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "num_classes": 0,
                              "first_conv": "patch_embed.proj", "classifier": "head"}}
    (snap / "config.json").write_text(json.dumps(cfg))
    if weights:
        _save_weights(snap / "model.safetensors")
    return repo


def test_cache_folder_is_found_as_huggingface_hub_finds_it():
    import huggingface_hub.constants as hf

    assert hub_cache_dir() == Path(hf.HF_HUB_CACHE)
    for env, expect in ((dict(HF_HOME="/x/home"), "/x/home/hub"), (dict(HF_HUB_CACHE="/y/c"), "/y/c"),
                        (dict(XDG_CACHE_HOME="/z"), "/z/huggingface/hub")):
        code = "import huggingface_hub.constants as c; from mitoprobe.embedder.hub import hub_cache_dir; " \
               "print(c.HF_HUB_CACHE, hub_cache_dir())"
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "XDG_"))}
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env=dict(clean, **env), cwd=Path(__file__).parent.parent).stdout.split()
        assert out == [expect, expect], (env, out)


def test_builtin_hub_recipe_id_follows_the_cached_commit(tmp_path, monkeypatch):
    cache = tmp_path / "hf"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    unresolved = embedder.recipe_id_of("virchow2.hf")
    assert identity_of(get_recipe("virchow2.hf"))["weights"]["revision"] == "unresolved:main"
    repo = _fake_hub(cache, "paige-ai/Virchow2", COMMIT_A, weights=False)
    id_a = embedder.recipe_id_of("virchow2.hf")
    assert identity_of(get_recipe("virchow2.hf"))["weights"]["revision"] == COMMIT_A and id_a != unresolved
    (repo / "refs" / "main").write_text(COMMIT_B)  # the hub moved and the cache followed: another id
    assert embedder.recipe_id_of("virchow2.hf") not in (id_a, unresolved)
    assert cached_commit("paige-ai/Virchow2") == COMMIT_B and cached_commit("paige-ai/Virchow2", COMMIT_A) == COMMIT_A


def test_hub_recipe_file_records_the_served_commit_and_later_processes_agree(tiny_store, tmp_path, monkeypatch):
    """Offline against a fake hub cache: the job loads the commit ``main`` points at, records it in
    recipe.json and the id; a fresh process finds the same id from the cache, or, with no cache, from
    the stored set; a moved ``main`` makes the stored set stale instead of silently reusing it."""
    cache = tmp_path / "hf"
    _fake_hub(cache, "testorg/tiny", COMMIT_A)
    toml = _toml(tmp_path / "hub.toml", '''
name = "tinyhub.lab"
arch = "vit_tiny_patch16_224"
hub = "hf-hub:testorg/tiny"
input_size = 64
resize = 64
outputs = ["cls"]
''')
    env = dict(HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1")
    root = str(tiny_store.root)
    _py("from mitoprobe.cli import main; import sys; sys.argv = ['mitoprobe', 'embed', '--recipe', "
        f"{str(toml)!r}, '--store', {root!r}, '--num-workers', '0']\ntry:\n    main()\nexcept SystemExit as e:\n"
        "    assert not e.code, e.code", **env)
    eset = next(s for s in tiny_store.features.sets() if s.name == "tinyhub.lab")
    assert eset.complete and eset.provenance["weights"] == {"source": "hf", "hub_id": "testorg/tiny",
                                                            "revision": COMMIT_A}
    assert eset.provenance["weights_revision"] == COMMIT_A
    probe = f"from mitoprobe import embedder; print(embedder.recipe_id_of('tinyhub.lab', store_root={root!r}))"
    assert _py(probe, **env) == eset.recipe_id  # from the cache's ref
    assert _py(probe, HF_HUB_CACHE=str(tmp_path / "empty")) == eset.recipe_id  # from the stored set
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    assert hub_commit(store_recipe("tinyhub.lab", tiny_store.root), tiny_store.root) == COMMIT_A
    # the store on an offline machine without that cache: the job finds its complete set, nothing to do
    out = _py("from mitoprobe.cli import main; import sys; sys.argv = ['mitoprobe', 'embed', '--model', "
              f"'tinyhub.lab', '--store', {root!r}]\nmain()", **dict(env, HF_HUB_CACHE=str(tmp_path / "empty")))
    assert "nothing to do" in out and eset.recipe_id in out, out
    (cache / "models--testorg--tiny" / "refs" / "main").write_text(COMMIT_B)
    assert _py(probe, **env) != eset.recipe_id  # main moved: the stored vectors are not this recipe's any more


def test_pinned_revision_is_the_commit_without_any_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "nothing"))
    toml = _toml(tmp_path / "pinned.toml", f'''
name = "pinned.lab"
arch = "vit_tiny_patch16_224"
hub = "hf-hub:testorg/tiny"
revision = "{COMMIT_A}"
input_size = 64
resize = 64
''')
    recipe, _ = load_recipe_file(toml)
    assert identity_of(recipe)["weights"]["revision"] == COMMIT_A and recipe.revision == COMMIT_A
