"""The embedding job: exact rows, views, incremental, kill-and-resume (exception and SIGKILL), CLI."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from click.testing import CliRunner

from mitoprobe import embedder
from mitoprobe.embedder.recipes import Recipe, get_recipe, register
from mitoprobe.embedder.transforms import decode_png
from mitoprobe.embedder.dihedral import VIEWS_D8, apply_view_np

TINY_VIT = "tiny_vit.test_random"
try:
    get_recipe(TINY_VIT)
except Exception:  # a tiny ViT at native 128 px: the real code path in milliseconds
    register(Recipe(name=TINY_VIT, family="test", arch="vit_tiny_patch16_224", input_size=128, resize=128,
                    placement="native", precision="fp32", outputs=(("cls", 32), ("mean", 32)),
                    kwargs=(("num_classes", 0), ("depth", 1), ("embed_dim", 32), ("num_heads", 2),
                            ("img_size", 128), ("reg_tokens", 2))))


def _keys(st, name):
    eset = st.features.resolve(name, embedder.recipe_id_of(name))
    t = st.features.read_table(eset, ["patch_id", "view"])
    return list(zip(t["patch_id"].to_pylist(), t["view"].to_pylist())), eset


def test_full_run_then_nothing_new(tiny_store):
    n = len(tiny_store.patches(columns=["patch_id"]))
    s = embedder.embed(tiny_store, TINY_VIT, progress=False, num_workers=0)
    assert (s.rows_written, s.rows_total) == (n, n)
    keys, eset = _keys(tiny_store, TINY_VIT)
    assert eset.complete and len(keys) == len(set(keys)) == n
    assert eset.provenance["package_versions"]["torch"] and eset.provenance["weights"]["source"] == "random"
    again = embedder.embed(tiny_store, TINY_VIT, progress=False, num_workers=0)
    assert again.rows_written == 0 and len(_keys(tiny_store, TINY_VIT)[0]) == n


def test_vectors_match_direct_forward_for_every_view(tiny_store):
    import torch

    embedder.embed(tiny_store, TINY_VIT, views="d8", progress=False, num_workers=1, batch_size=8)
    keys, X = tiny_store.features.read(TINY_VIT, embedder.recipe_id_of(TINY_VIT), outputs=["cls", "mean"])
    assert sorted(keys["view"].unique()) == sorted(VIEWS_D8) and len(keys) == 8 * keys.patch_id.nunique()
    pid = keys.patch_id.iloc[0]
    rgb = decode_png(tiny_store.images([pid])[pid])
    model, transform = embedder.build(TINY_VIT)
    for v in VIEWS_D8:
        x = torch.from_numpy(transform(apply_view_np(rgb, v))[None])
        with torch.inference_mode():
            out = model(x)
        want = np.concatenate([out["cls"].numpy(), out["mean"].numpy()], axis=1)[0]
        row = X[((keys.patch_id == pid) & (keys.view == v)).to_numpy()][0]
        np.testing.assert_allclose(row, want, rtol=1e-4, atol=1e-5)
    rows = {v: X[((keys.patch_id == pid) & (keys.view == v)).to_numpy()][0] for v in ("none", "rot90")}
    assert not np.allclose(rows["none"], rows["rot90"])


class _Killed(Exception):
    pass


def test_killed_run_resumes_with_exactly_one_row_per_patch_view(tiny_store):
    n = len(tiny_store.patches(columns=["patch_id"]))

    def die(chunk):
        if chunk == 3:
            raise _Killed

    with pytest.raises(_Killed):
        embedder.embed(tiny_store, "handcrafted", views="d8", progress=False, num_workers=0, batch_size=2,
                       chunk_rows=16, on_chunk=die)
    partial, eset = _keys(tiny_store, "handcrafted")
    assert 0 < len(partial) < 8 * n and not eset.complete
    s = embedder.embed(tiny_store, "handcrafted", views="d8", progress=False, num_workers=0)
    keys, eset = _keys(tiny_store, "handcrafted")
    assert s.rows_written == 8 * n - len(partial)
    assert len(keys) == len(set(keys)) == 8 * n and eset.complete


def test_sigkill_mid_run_then_resume(tiny_store):
    """A real SIGKILL after the second committed chunk (nothing gets to clean up)."""
    n = len(tiny_store.patches(columns=["patch_id"]))
    code = textwrap.dedent(f"""
        import os, signal, embedder
        def die(chunk):
            if chunk == 2:
                os.kill(os.getpid(), signal.SIGKILL)
        embedder.embed({str(tiny_store.root)!r}, "handcrafted", progress=False, num_workers=0, batch_size=4,
                       chunk_rows=8, on_chunk=die)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    partial, eset = _keys(tiny_store, "handcrafted")
    assert len(partial) == 16 and not eset.complete
    embedder.embed(tiny_store, "handcrafted", progress=False, num_workers=0)
    keys, eset = _keys(tiny_store, "handcrafted")
    assert len(keys) == len(set(keys)) == n and eset.complete


def test_cli_embed_and_list(tiny_store):
    from mitoprobe.cli import cli

    r = CliRunner().invoke(cli, ["embed", "--list"])
    assert r.exit_code == 0 and "virchow2.hf" in r.output and "handcrafted" in r.output
    args = ["embed", "--model", "handcrafted", "--store", str(tiny_store.root), "--num-workers", "0"]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    assert "wrote" in r.output
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0 and "nothing to do" in r.output
    info = json.loads((tiny_store.features.sets()[0].path / "recipe.json").read_text())
    assert "HF_TOKEN" not in json.dumps(info) and info["name"] == "handcrafted"
