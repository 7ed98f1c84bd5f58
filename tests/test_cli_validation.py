"""Every command checks its arguments and inputs before its first write (issue 15).

One populated store (a six-slide tiny benchmark, imported and embedded with ``handcrafted``) is
shared by the module; each bad argument or hostile input goes through the real CLI entry point and
must end in exit 2, exactly one error line naming the offending thing, no traceback, and the store
byte-identical (every file and folder under its root hashed, nothing excluded)."""

from __future__ import annotations

import hashlib
import io
import shutil
import struct
import types
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import make_benchmark, make_six_slide_store, png_bytes, run_cli
from PIL import Image

from mitoprobe import embedder
from mitoprobe.store import Store
from mitoprobe.store.errors import DataError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# -- helpers ----------------------------------------------------------------------------------
def tree(root: Path) -> dict[str, str]:
    """Every path under ``root``: a file's sha256, or ``dir`` for a folder (an empty new folder counts)."""
    return {str(p.relative_to(root)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))}


def refused(monkeypatch, capsys, st: Store, args: list[str], *expected: str, one_line: bool = True) -> str:
    """Run ``mitoprobe ARGS --store ROOT``; assert exit 2, one error line naming ``expected``, no
    traceback, the store unchanged. ``one_line=False``: the import's list of problems follows its line."""
    before = tree(st.root)
    code, out = run_cli(monkeypatch, capsys, *args, "--store", str(st.root))
    assert code == 2, out
    assert "Traceback" not in out, out
    lines = [ln for ln in out.splitlines() if ln.startswith(("error:", "Error:"))]
    assert len(lines) == 1, out
    where = lines[0] if one_line else out
    for text in expected:
        assert text in where, f"{text!r} not in:\n{out}"
    assert tree(st.root) == before, "the store changed"
    return out


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(width: int, height: int, pixels: bool = False) -> bytes:
    """An 8-bit RGB PNG whose header says ``width x height``: with ``pixels`` a real, solid black image
    (zlib squeezes it to a few kB), else a token IDAT (only a decoder would notice: the checks must not decode)."""
    raw = zlib.compress(b"\0" * ((1 + 3 * width) * height), 9) if pixels else zlib.compress(b"\0" * 64)
    return (PNG_SIGNATURE + png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + png_chunk(b"IDAT", raw) + png_chunk(b"IEND", b""))


# -- fixtures ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def populated(tmp_path_factory) -> Store:
    st = make_six_slide_store(tmp_path_factory.mktemp("populated"))
    embedder.embed(st, "handcrafted", progress=False, num_workers=0)
    return st


@pytest.fixture(scope="module")
def bench(populated) -> Path:
    return populated.root.parent / "AMi-Br_Benchmark"


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict[str, Path]:
    """Weights files that must all be refused for resnet18.random (or handcrafted)."""
    import torch
    from safetensors.torch import save_file

    d = tmp_path_factory.mktemp("weights")
    half, _ = embedder.build("offline_cnn.random")  # a half-width ResNet-18: every conv has other shapes
    sd = {k: v.contiguous() for k, v in half.backbone.state_dict().items()}
    save_file(sd, str(d / "wrong_shapes.safetensors"))
    good = (d / "wrong_shapes.safetensors").read_bytes()
    (d / "truncated.safetensors").write_bytes(good[: len(good) // 2])
    torch.save(sd, d / "torch_zip.safetensors")  # a torch checkpoint named .safetensors
    torch.save({"state_dict": sd, "extra": types.SimpleNamespace(epoch=3)}, d / "pickle.pt")
    torch.save(sd, d / "full.pt")
    (d / "truncated.pt").write_bytes((d / "full.pt").read_bytes()[:1000])
    (d / "junk.pt").write_bytes(b"these are not weights" * 10)
    return {p.name: p for p in d.iterdir()}


@pytest.fixture
def bad_bench(bench, tmp_path) -> Path:
    """A fresh copy of the populated store's benchmark folder, to break."""
    return Path(shutil.copytree(bench, tmp_path / "AMi-Br_Benchmark"))


# -- finetune ---------------------------------------------------------------------------------
@pytest.mark.parametrize("args,expected", [
    (["--preset", "offline", "--folds", "9"], ["--folds '9'", "folds are 0..4"]),
    (["--preset", "offline", "--folds", "one"], ["--folds 'one'"]),
    (["--preset", "offline", "--folds", "0", "--epochs", "0"], ["--epochs"]),
    (["--preset", "offline", "--folds", "0", "--batch-size", "0"], ["--batch-size"]),
    (["--preset", "offline", "--folds", "0", "--lr", "0"], ["--lr"]),
    (["--preset", "offline", "--folds", "0", "--num-workers", "-1"], ["--num-workers"]),
    (["--preset", "offline", "--folds", "0", "--threads", "0"], ["--threads"]),
    (["--preset", "offline", "--folds", "0", "--device", "gpu"], ["--device 'gpu'"]),
    (["--model", "handcrafted", "--folds", "0"], ["handcrafted has no network"]),
    (["--model", "nosuch.random", "--folds", "0"], ["unknown embedder 'nosuch.random'"]),
])
def test_finetune_refuses_before_the_run_folder(monkeypatch, capsys, populated, args, expected):
    refused(monkeypatch, capsys, populated, ["finetune", *args], *expected)
    assert not (populated.root / "finetune").exists()


def test_finetune_refuses_bad_weights_before_the_run_folder(monkeypatch, capsys, populated, weights):
    p = weights["truncated.safetensors"]
    refused(monkeypatch, capsys, populated, ["finetune", "--preset", "offline", "--folds", "0", "--weights", str(p)],
            str(p), "not a readable safetensors file")


# -- embed ------------------------------------------------------------------------------------
@pytest.mark.parametrize("args,expected", [
    (["--model", "handcrafted", "--batch-size", "0"], ["--batch-size"]),
    (["--model", "handcrafted", "--num-workers", "-1"], ["--num-workers"]),
    (["--model", "resnet18.random", "--device", "gpu"], ["--device 'gpu'"]),
    (["--model", "resnet18.random", "--device", "cuda:7"], ["cuda:7"]),
    (["--model", "nosuch"], ["unknown embedder 'nosuch'"]),
])
def test_embed_refuses_bad_options(monkeypatch, capsys, populated, args, expected):
    refused(monkeypatch, capsys, populated, ["embed", *args], *expected)


@pytest.mark.parametrize("name,expected", [
    ("wrong_shapes.safetensors", "does not fit resnet18.random"),
    ("truncated.safetensors", "not a readable safetensors file"),
    ("torch_zip.safetensors", "not a readable safetensors file"),
    ("pickle.pt", "refusing to unpickle"),
    ("truncated.pt", "not a readable torch checkpoint"),
    ("junk.pt", "not a readable torch checkpoint"),
])
def test_embed_refuses_bad_weights_before_the_set_folder(monkeypatch, capsys, populated, weights, name, expected):
    refused(monkeypatch, capsys, populated, ["embed", "--model", "resnet18.random", "--weights", str(weights[name])],
            str(weights[name]), expected)


def test_embed_refuses_weights_for_a_recipe_without_any(monkeypatch, capsys, populated, weights):
    p = weights["full.pt"]
    refused(monkeypatch, capsys, populated, ["embed", "--model", "handcrafted", "--weights", str(p)],
            "handcrafted has no network weights", "drop --weights")


def test_embed_hub_model_without_token_writes_nothing(monkeypatch, capsys, populated):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_TOKEN", "")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import time
    refused(monkeypatch, capsys, populated, ["embed", "--model", "uni.hf"],
            "weights for uni.hf", "$HF_TOKEN", "--weights PATH")


def test_embed_library_checks_options_before_writing(populated):
    from mitoprobe.store.errors import ConfigError

    before = tree(populated.root)
    for kw in (dict(batch_size=0), dict(num_workers=-1), dict(engine="spark"), dict(chunk_rows=0)):
        with pytest.raises(ConfigError):
            embedder.embed(populated, "resnet18.random", progress=False, **kw)
    assert tree(populated.root) == before


# -- probe ------------------------------------------------------------------------------------
@pytest.mark.parametrize("args,expected", [
    (["--model", "handcrafted", "--head", "nosuch"], ["unknown head 'nosuch'", "MODULE:FACTORY"]),
    (["--model", "handcrafted", "--pooling", "cls"], ["--pooling cls", "['vector']"]),
    (["--model", "nosuch"], ["unknown embedder 'nosuch'"]),
    (["--model", "resnet18.random"], ["no embeddings stored for 'resnet18.random'"]),
    (["--model", "handcrafted", "--seed", "-1"], ["--seed"]),
])
def test_probe_refuses_before_writing_folds(monkeypatch, capsys, populated, args, expected):
    refused(monkeypatch, capsys, populated, ["probe", *args], *expected)
    assert not populated.folds_path.exists()


# -- run --------------------------------------------------------------------------------------
def test_run_refuses_other_data_on_a_populated_store(monkeypatch, capsys, populated, tmp_path):
    other = make_benchmark(tmp_path / "other", seed=1)
    refused(monkeypatch, capsys, populated, ["run", "--data", str(other), "--model", "handcrafted"],
            f"--data {other} differs", "mitoprobe data import", "--replace", "another --store")


@pytest.mark.parametrize("args,expected", [
    (["--head", "nosuch"], ["unknown head 'nosuch'"]),
    (["--model", "nosuch"], ["unknown embedder 'nosuch'"]),
    (["--threads", "0"], ["--threads"]),
])
def test_run_refuses_bad_names_before_anything(monkeypatch, capsys, populated, args, expected):
    refused(monkeypatch, capsys, populated, ["run", *args], *expected)


def test_run_with_the_same_data_goes_on(monkeypatch, capsys, populated, bench, tmp_path):
    from mitoprobe.main_job import check_data_matches

    before = tree(populated.root)
    check_data_matches(populated, bench)  # no error: PATH holds exactly the stored data
    assert tree(populated.root) == before
    copy = Path(shutil.copytree(populated.root, tmp_path / "store"))
    code, out = run_cli(monkeypatch, capsys, "run", "--data", str(bench), "--model", "handcrafted", "--head",
                        "logreg", "--store", str(copy))
    assert code == 0, out
    assert "already holds exactly the data" in out


# -- data import ------------------------------------------------------------------------------
def test_import_refuses_a_header_only_split_csv(monkeypatch, capsys, populated, bad_bench):
    csv = bad_bench / "amibr_train_split.csv"
    csv.write_text(csv.read_text().splitlines()[0] + "\n")
    refused(monkeypatch, capsys, populated, ["data", "import", str(bad_bench), "--replace"],
            f"{csv}: has a header but no data rows", "restore the published file", one_line=False)


@pytest.mark.parametrize("size,pixels", [((4097, 4097), True), ((20000, 20000), False)])
def test_import_refuses_an_oversized_png_from_its_header(monkeypatch, capsys, populated, bad_bench, size, pixels):
    p = sorted((bad_bench / "AtNorM-Br" / "Normal").glob("*.png"))[0]
    p.write_bytes(png_claiming(*size, pixels=pixels))
    refused(monkeypatch, capsys, populated, ["data", "import", str(bad_bench)],
            str(p), f"is {size[0]}x{size[1]} pixels", "above the limit of 16,777,216 pixels", one_line=False)


def test_pixel_limit_comes_from_the_environment(monkeypatch, capsys, populated, bench):
    monkeypatch.setenv("MITOPROBE_MAX_IMAGE_PIXELS", "16000")
    refused(monkeypatch, capsys, populated, ["data", "import", str(bench)],
            "is 128x128 pixels", "above the limit of 16,000 pixels", one_line=False)
    monkeypatch.setenv("MITOPROBE_MAX_IMAGE_PIXELS", "lots")
    refused(monkeypatch, capsys, populated, ["data", "import", str(bench)], "MITOPROBE_MAX_IMAGE_PIXELS='lots'")


# -- click-level bounds elsewhere -------------------------------------------------------------
def test_dashboard_port_is_bounded(monkeypatch, capsys, populated):
    refused(monkeypatch, capsys, populated, ["dashboard", "--port", "0"], "--port")


# -- the shared image check and the dashboard's upload check ----------------------------------
def test_check_png_maps_pillows_own_bomb_guard(monkeypatch):
    from mitoprobe.store.dataset import check_png

    monkeypatch.setenv("MITOPROBE_MAX_IMAGE_PIXELS", str(10**10))  # above Pillow's own limit
    with pytest.raises(DataError, match="decompression bomb"):
        check_png(png_claiming(20000, 20000), "bomb.png")


def _reencoded(png: bytes) -> bytes:
    """The same pixels in other bytes (another zlib level, an extra text chunk)."""
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("Software", "a screenshot tool")
    buf = io.BytesIO()
    Image.open(io.BytesIO(png)).save(buf, format="PNG", compress_level=1, pnginfo=info)
    assert buf.getvalue() != png
    return buf.getvalue()


def test_dashboard_upload_validated_like_import(populated):
    from mitoprobe.dashboard import data

    stamp = populated.fingerprint()
    root = str(populated.root)
    pid = populated.patches(columns=["patch_id"])["patch_id"][0]
    stored_png = populated.images([pid])[pid]
    assert data.check_upload(root, stamp, stored_png).same_as == [pid]  # byte-identical: a lookup
    assert data.check_upload(root, stamp, _reencoded(stored_png)).same_as == [pid]  # pixel-identical
    rgb = np.asarray(Image.open(io.BytesIO(stored_png)).convert("RGB"))
    rgba = data.check_upload(root, stamp, png_bytes(np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])))
    assert "converted to RGB" in rgba.note and rgba.same_as == [pid]
    fresh = data.check_upload(root, stamp, png_bytes(np.full((128, 128, 3), 7, np.uint8)))
    assert fresh.same_as == [] and fresh.note is None
    for bad, why in [
        (png_bytes(np.zeros((1323, 1440, 3), np.uint8)), "is 1440x1323 pixels, expected 128x128"),
        (png_claiming(20000, 20000), "is 20000x20000 pixels (400,000,000), above the limit"),
        (png_claiming(10000, 10000), "is 10000x10000 pixels"),
        (png_bytes(np.zeros((128, 128), np.uint8)), "grayscale"),
        (b"GIF89a not a png", "not an image file"),
        (b"", "empty file"),
    ]:
        with pytest.raises(DataError, match="upload") as exc:
            data.check_upload(root, stamp, bad)
        assert why in str(exc.value) and "128x128 8-bit RGB PNG" in str(exc.value)
    eset = populated.features.sets()[0]
    with pytest.raises(DataError, match="10000x10000"):  # embedding checks too: never decodes a bomb
        data.embed_png(root, eset, "vector", png_claiming(10000, 10000))
    assert data.embed_png(root, eset, "vector", stored_png).shape == (57,)


def test_decoder_refuses_an_oversized_image_from_its_header():
    from mitoprobe.embedder.transforms import decode_png

    with pytest.raises(DataError, match="10000x10000"):
        decode_png(png_claiming(10000, 10000))
    assert decode_png(png_bytes(np.zeros((128, 128, 3), np.uint8))).shape == (128, 128, 3)


def test_split_csv_with_rows_still_imports(tmp_path):
    """The header-only refusal is about empty CSVs only (a real split CSV imports as before)."""
    b = make_benchmark(tmp_path)
    assert len(pd.read_csv(b / "amibr_train_split.csv")) > 0
    Store(tmp_path / "s").import_dataset(b, b / "AMI-BR.csv")
