"""The Ray Data engine on a local Ray instance (1 CPU): same rows and vectors as the local engine."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from mitoprobe import embedder
from mitoprobe.store import Store

pytest.importorskip("ray")


@pytest.mark.slow
def test_ray_engine_matches_local(tiny_store, tmp_path):
    import ray

    other = Store(tmp_path / "copy")
    shutil.copytree(tiny_store.root, other.root)
    name = "handcrafted"
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    try:
        s = embedder.embed(tiny_store, name, views="d8", engine="ray", batch_size=8, progress=False)
        again = embedder.embed(tiny_store, name, views="d8", engine="ray", progress=False)
    finally:
        ray.shutdown()
    n = len(tiny_store.patches(columns=["patch_id"]))
    assert s.rows_written == 8 * n and again.rows_written == 0
    embedder.embed(other, name, views="d8", progress=False, num_workers=0)
    rid = embedder.recipe_id_of(name)
    k1, x1 = tiny_store.features.read(name, rid)
    k2, x2 = other.features.read(name, rid)
    o1 = np.lexsort((k1.view, k1.patch_id))
    o2 = np.lexsort((k2.view, k2.patch_id))
    assert k1.iloc[o1].values.tolist() == k2.iloc[o2].values.tolist()
    np.testing.assert_allclose(x1[o1], x2[o2], rtol=1e-6)
