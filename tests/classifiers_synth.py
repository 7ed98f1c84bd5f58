"""A small synthetic benchmark for the classifier tests: patches with slides, folds-able training
set, three test sets with expert votes, and an embedding set with a known signal."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mitoprobe import embedder
from mitoprobe.embedder.recipes import Recipe
from mitoprobe.store import Store, schema
from mitoprobe.store.errors import RecipeError

TEST_DATASETS = (("AMi-Br", "test", 3), ("AtNorM-Br", "test", 0), ("AtNorM-MD", "test", 5))


def synthetic_patches(n_train: int = 300, n_test: int = 120, n_slides: int = 15, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_train):
        y = int(rng.random() < 0.3)
        rows.append(dict(patch_id=f"tr{i:05d}", dataset="AMi-Br", split="train", y=y, slide=f"s{i % n_slides:02d}",
                         train_row=i, n_experts=3))
    for ds, split, n_exp in TEST_DATASETS:
        for i in range(n_test):
            y = int(rng.random() < 0.3)
            row = dict(patch_id=f"{ds}-{i:05d}", dataset=ds, split=split, y=y, slide=f"{ds}-t{i % 5}",
                       train_row=None, n_experts=n_exp)
            for k in range(1, n_exp + 1):  # experts agree with the label 85% of the time
                row[f"expert{k}_atypical"] = bool(y if rng.random() < 0.85 else 1 - y)
            rows.append(row)
    df = pd.DataFrame(rows)
    df["label"] = np.where(df["y"] == 1, "Atypical", "Normal")
    df["train_row"] = df["train_row"].astype("Int64")
    for k in range(1, 6):
        c = f"expert{k}_atypical"
        df[c] = df[c].astype("boolean") if c in df else pd.array([pd.NA] * len(df), dtype="boolean")
    return df


def synthetic_recipe(name: str, dim: int) -> Recipe:
    """A registered recipe for a synthetic set: readers resolve the set's current recipe id through the
    registry like any other (no name-only fallback exists), so the synthetic vectors need one too."""
    recipe = Recipe(name=name, family="test", arch="synthetic", weights="none",
                    outputs=(("cls", dim // 2), ("mean", dim - dim // 2)), note="synthetic test vectors")
    try:
        known = embedder.get_recipe(name)
    except RecipeError:
        return embedder.register(recipe)
    assert known == recipe, f"synthetic recipe {name!r} registered with other outputs; use another name"
    return known


def synthetic_store(root, dim: int = 32, signal: float = 1.5, views=("none",), seed: int = 0,
                    name: str = "synth") -> Store:
    """A store holding synthetic patches (no pixels) and one embedding set ``name``."""
    st = Store(root)
    st.root.mkdir(parents=True, exist_ok=True)
    patches = synthetic_patches(seed=seed)
    table = schema.validate(pa.Table.from_pandas(patches, preserve_index=False), schema.PATCHES, "synthetic patches",
                            fill_missing=True)  # every column (pixels null): a store `store check` accepts
    pq.write_table(table, st.patch_parts.legacy_path)  # format 1
    rng = np.random.default_rng(seed + 1)
    base = rng.normal(size=(len(patches), dim)).astype(np.float32)
    base[patches["y"].to_numpy() == 1, : dim // 4] += signal
    recipe = synthetic_recipe(name, dim)
    w = st.features.writer(embedder.recipe_id_of(recipe), name, recipe.output_dims, {"synthetic": True})
    for v in views:
        X = base + 0.2 * rng.normal(size=base.shape).astype(np.float32)
        w.write_chunk(patches["patch_id"], [v] * len(patches), {"cls": X[:, : dim // 2], "mean": X[:, dim // 2:]})
    w.finalize()
    return st
