"""The GPU-path fixes, checked on CPU with a tiny ViT and spies (issue 29's review):

* the held-out part is scored at the training precision (selection, schedule, early stop, threshold, stored
  probabilities), the test sets at the evaluation precision.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import png_bytes
from mitoprobe.embedder.recipes import Recipe, get_recipe, register
from mitoprobe.finetune import FinetuneConfig
from mitoprobe.finetune import train as T
from mitoprobe.store.errors import RecipeError

TINY = "vit_gpu_path_test.random"


def _tiny_recipe() -> Recipe:
    try:
        return get_recipe(TINY)
    except RecipeError:
        return register(Recipe(
            name=TINY, family="test", arch="vit_tiny_patch16_224",
            kwargs=(("img_size", 32), ("patch_size", 8), ("embed_dim", 32), ("depth", 2), ("num_heads", 2),
                    ("num_classes", 0)),
            input_size=32, resize=32, outputs=(("cls", 32), ("mean", 32)), note="tiny test ViT"))


_tiny_recipe()


@pytest.fixture(scope="module")
def pngs() -> list[bytes]:
    rng = np.random.default_rng(0)
    return [png_bytes(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)) for _ in range(20)]


def _data(pngs) -> T.FoldImages:
    """12 training patches, 4 held out, test sets of 3 and 1 (every split a different size)."""
    ids = np.array([f"p{i}" for i in range(len(pngs))])
    y = np.arange(len(pngs)) % 2
    return T.FoldImages(fold=0, train_ids=ids[:12], train_y=y[:12], val_ids=ids[12:16], val_y=y[12:16],
                        test_ids={"A": ids[16:19], "B": ids[19:]}, images=dict(zip(ids, pngs)))


def _cfg(method="lora", **kw) -> FinetuneConfig:
    return FinetuneConfig.paper(TINY, method, **{"max_epochs": 2, "max_steps": 2, "batch_size": 4, **kw})


# -- 1. held-out scoring at the training precision ----------------------------------------------------------------

def test_heldout_runs_at_training_precision_and_tests_at_evaluation_precision(pngs, tmp_path, monkeypatch):
    data = _data(pngs)
    val = [data.images[p] for p in data.val_ids]
    calls = []
    predict = T.predict_proba

    def spy(model, batch, transform, views, rt, precision="fp32", *a, **kw):
        calls.append(("val" if batch == val else "test", precision))
        return predict(model, batch, transform, views, rt, precision, *a, **kw)

    monkeypatch.setattr(T, "predict_proba", spy)
    # an evaluation precision that differs from training's (on CUDA: the H-optimus scripts' fp16); bf16 runs on CPU
    monkeypatch.setattr(T, "evaluation_precision", lambda *a: "bf16")
    rec = T.train_fold(_cfg(), data, tmp_path / "fold0", T.Runtime(progress=False))
    # two epochs of selection, the final held-out prediction, then the two test sets
    assert calls == [("val", "fp32")] * 3 + [("test", "bf16")] * 2
    assert (rec["precision"], rec["eval_precision"]) == ("fp32", "bf16")
    assert json.loads((tmp_path / "fold0" / T.DONE_FILE).read_text())["eval_precision"] == "bf16"
