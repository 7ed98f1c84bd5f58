"""build(): tiny stand-ins of every family, prefix tokens, determinism, local weights, pickle refusal."""

from __future__ import annotations

import os
import subprocess
import sys
import types

import numpy as np
import pytest
import torch

from mitoprobe import embedder
from mitoprobe.store.errors import WeightsError

TINY = dict(depth=1, embed_dim=48, num_heads=2)
STEMS = ("virchow", "virchow2", "uni", "uni2_h", "hoptimus0", "hoptimus1", "gigapath")


def _batch(n=2, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=(128, 128, 3), dtype=np.uint8) for _ in range(n)]


def _embed(model, transform, imgs):
    x = torch.from_numpy(np.stack([transform(i) for i in imgs]))
    with torch.inference_mode():
        return {k: v.numpy() for k, v in model(x).items()}


@pytest.mark.parametrize("stem", STEMS)
def test_tiny_standins_outputs_skip_prefix_tokens(stem):
    model, transform = embedder.build(f"{stem}.random", overrides=TINY)
    imgs = _batch()
    out = _embed(model, transform, imgs)
    assert set(out) == {"cls", "mean"} and out["cls"].shape == (2, 48) and out["mean"].shape == (2, 48)
    x = torch.from_numpy(np.stack([transform(i) for i in imgs]))
    with torch.inference_mode():
        tokens = model.backbone.forward_features(x).numpy()
    npt = model.num_prefix_tokens
    assert npt == 1 + model.backbone.num_reg_tokens
    np.testing.assert_allclose(out["cls"], tokens[:, 0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["mean"], tokens[:, npt:].mean(1), rtol=1e-5, atol=1e-6)
    if npt > 1:  # registers really are excluded
        assert not np.allclose(out["mean"], tokens[:, 1:].mean(1), atol=1e-6)


def test_random_weights_are_deterministic_and_leave_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = _embed(*embedder.build("virchow2.random", overrides=TINY), _batch())
    after = torch.rand(1)
    b = _embed(*embedder.build("virchow2.random", overrides=TINY), _batch())
    assert before == after
    np.testing.assert_array_equal(a["cls"], b["cls"])


def test_cnn_control_vector(tmp_path):
    model, transform = embedder.build("resnet18.random")
    out = _embed(model, transform, _batch())
    assert set(out) == {"vector"} and out["vector"].shape == (2, 512)


def test_local_weights_round_trip(tmp_path):
    from safetensors.torch import save_file

    model, transform = embedder.build("uni.random", overrides=TINY)
    with torch.no_grad():
        for p in model.backbone.parameters():
            p.add_(0.01 * torch.randn_like(p))
    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.backbone.state_dict().items()}, str(path))
    loaded, _ = embedder.build("uni.hf", weights=path, overrides=TINY)  # a local file replaces the hub
    fresh, _ = embedder.build("uni.random", overrides=TINY)
    imgs = _batch()
    np.testing.assert_array_equal(_embed(loaded, transform, imgs)["cls"], _embed(model, transform, imgs)["cls"])
    assert not np.allclose(_embed(fresh, transform, imgs)["cls"], _embed(model, transform, imgs)["cls"])
    pt = tmp_path / "tiny.pt"  # a plain state dict in a .pt loads with weights_only=True
    torch.save({"state_dict": model.backbone.state_dict()}, pt)
    loaded_pt, _ = embedder.build("uni.hf", weights=pt, overrides=TINY)
    np.testing.assert_array_equal(_embed(loaded_pt, transform, imgs)["cls"], _embed(model, transform, imgs)["cls"])
    wrong, _ = embedder.build("virchow2.random", overrides=TINY)
    bad = tmp_path / "wrong.safetensors"
    save_file({k: v.contiguous() for k, v in wrong.backbone.state_dict().items()}, str(bad))
    with pytest.raises(WeightsError, match="does not fit"):
        embedder.build("uni.hf", weights=bad, overrides=TINY)


def test_pickle_refused_unless_trusted(tmp_path):
    model, _ = embedder.build("uni.random", overrides=TINY)
    p = tmp_path / "ckpt.pt"
    torch.save({"state_dict": model.backbone.state_dict(), "extra": types.SimpleNamespace(epoch=3)}, p)
    with pytest.raises(WeightsError, match="refusing to unpickle"):
        embedder.build("uni.hf", weights=p, overrides=TINY)
    trusted, _ = embedder.build("uni.hf", weights=p, trust_pickle=True, overrides=TINY)
    assert trusted.output_dims == {"cls": 48, "mean": 48}
    odd = tmp_path / "weights.npz"
    odd.write_bytes(b"x")
    with pytest.raises(WeightsError, match="unknown weights format"):
        embedder.build("uni.hf", weights=odd, overrides=TINY)


def test_unavailable_hub_weights_name_both_ways_out():
    env = dict(os.environ, HF_HUB_OFFLINE="1", MY_TOKEN_VAR="")
    env.pop("HF_TOKEN", None)
    code = ("from mitoprobe import embedder\ntry:\n    embedder.build('virchow2.hf', hf_token_env='MY_TOKEN_VAR')\n"
            "except Exception as e:\n    print(type(e).__name__, e)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120).stdout
    assert out.startswith("WeightsError") and "$MY_TOKEN_VAR" in out and "--weights PATH" in out


def test_unreadable_weights_files_name_the_file(tmp_path):
    """Truncated or mislabelled files are WeightsErrors naming the file (never SafetensorError etc.)."""
    from safetensors.torch import save_file

    from mitoprobe.embedder.factory import load_state_dict

    model, _ = embedder.build("uni.random", overrides=TINY)
    sd = {k: v.contiguous() for k, v in model.backbone.state_dict().items()}
    good = tmp_path / "good.safetensors"
    save_file(sd, str(good))
    torch.save(sd, tmp_path / "good.pt")
    cases = {"short.safetensors": good.read_bytes()[:200], "zip.safetensors": (tmp_path / "good.pt").read_bytes(),
             "empty.safetensors": b"", "short.pt": (tmp_path / "good.pt").read_bytes()[:500],
             "text.bin": b"not a checkpoint at all"}
    for name, data in cases.items():
        p = tmp_path / name
        p.write_bytes(data)
        with pytest.raises(WeightsError, match="not a readable") as exc:
            load_state_dict(p)
        assert str(p) in str(exc.value)
        with pytest.raises(WeightsError, match="not a readable"):
            embedder.factory.check_weights("uni.hf", p, overrides=TINY)


def test_check_weights_matches_shapes_without_building(tmp_path):
    from safetensors.torch import save_file

    from mitoprobe.store.errors import RecipeError

    model, _ = embedder.build("uni.random", overrides=TINY)
    p = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.backbone.state_dict().items()}, str(p))
    embedder.factory.check_weights("uni.hf", p, overrides=TINY)  # fits: no error
    with pytest.raises(WeightsError, match="does not fit"):
        embedder.factory.check_weights("uni.hf", p, overrides=dict(TINY, embed_dim=64))
    with pytest.raises(RecipeError, match="no network weights"):
        embedder.build("handcrafted", weights=p)
    with pytest.raises(RecipeError, match="no network weights"):
        embedder.factory.check_weights("handcrafted", p)


def test_device_names_are_checked():
    from mitoprobe.embedder.job import resolve_device
    from mitoprobe.store.errors import ConfigError

    assert resolve_device("cpu") == "cpu"
    for bad in ("gpu", "cuda:99" if torch.cuda.is_available() else "cuda", "tpu"):
        with pytest.raises(ConfigError, match="--device"):
            resolve_device(bad)
