"""Build a small store with everything the dashboard shows (imported by the dashboard tests).

Real parts: the tiny synthetic benchmark from conftest, embedded with the real ``handcrafted``
recipe (so uploads can be embedded on the fly). Synthetic parts: run and prediction rows written by the
classifiers' own writer (``classifiers.runs.append``), with scores derived from the first feature
and every metric computed by ``classifiers.metrics``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from conftest import make_benchmark
from mitoprobe.dashboard import APP
from mitoprobe.dashboard.navigation import PAGES as PAGE_SPECS
from mitoprobe.store import Store

TEST_SETS = {"AMi-Br-test": ("AMi-Br", "test"), "AtNorM-Br": ("AtNorM-Br", "test"),
             "AtNorM-MD": ("AtNorM-MD", "test")}
FAMILIES = (("fam-logreg", "logreg", 1.2), ("fam-knn", "knn", 0.5), ("fam-oracle", "oracle", None))


def build_dashboard_store(root: Path, n_per_class: int = 6, seed: int = 0) -> Store:
    import mitoprobe
    from mitoprobe.classifiers import metrics
    from mitoprobe.classifiers import runs as run_rows

    bench = make_benchmark(root / "bench", n_per_class=n_per_class, seed=seed)
    st = Store(root / "store")
    st.import_dataset(bench, bench / "AMI-BR.csv")
    mitoprobe.open(st.root).embed("handcrafted", num_workers=0)  # as the CLI: with the derived views
    eset = st.features.sets()[0]
    keys, X = st.features.read(eset.name, eset.recipe_id)
    x0 = pd.Series(X[:, 0], index=keys["patch_id"])
    meta = st.patches().set_index("patch_id")
    rng = np.random.default_rng(seed)
    runs, preds = [], []
    for family_id, head, strength in FAMILIES:
        for fold in (-1, 0, 1, 2, 3, 4):
            run_id = f"{family_id}-{fold}"
            for ts, (ds, split) in TEST_SETS.items():
                ids = meta.index[(meta["dataset"] == ds) & (meta["split"] == split)]
                y = meta.loc[ids, "y"].to_numpy()
                z = (x0[ids].to_numpy() - x0.mean()) / (x0.std() + 1e-9)
                if strength is None:  # a perfect family: no errors anywhere
                    prob = 0.1 + 0.8 * y + rng.uniform(-0.05, 0.05, len(ids))
                else:
                    prob = 1 / (1 + np.exp(-(strength * (2 * y - 1) + z + rng.normal(0, 1, len(ids)))))
                thr = 0.5
                m = metrics.all_metrics(y, prob, thr)
                ci = metrics.bootstrap_ci(y, prob, thr, n_boot=50)
                kappa = metrics.kappa_vs_experts(metrics.predict(prob, thr), meta.loc[ids].reset_index())
                runs.append(dict(
                    run_id=run_id, family_id=family_id, family="probe", model=eset.name,
                    recipe_id=eset.recipe_id, head=head,
                    options=json.dumps({"pooling": "all", "views": "none", "tta": False}),
                    config_json="{}", code_version="test", seed=0, fold=fold, test_set=ts, n=len(y),
                    n_pos=int(y.sum()), **m, balanced_accuracy_ci_low=ci["balanced_accuracy"][0],
                    balanced_accuracy_ci_high=ci["balanced_accuracy"][1], auroc_ci_low=ci["auroc"][0],
                    auroc_ci_high=ci["auroc"][1], threshold=thr, threshold_rule="youden",
                    fit_seconds=0.1, predict_seconds=0.01, repeat=0,
                    **{f"kappa_{e}": v for e, v in kappa.items()}, kappa_experts_mean=np.mean(list(kappa.values()))
                    if kappa else np.nan))
                preds.append(pd.DataFrame(dict(run_id=run_id, patch_id=ids, fold=fold, test_set=ts,
                                               probability=prob, threshold=thr,
                                               prediction=metrics.predict(prob, thr), split="test")))
    run_rows.append(st, runs, preds)
    return st


# -- opening a page headless (Streamlit's AppTest), shared by the dashboard tests -------------------
# page key (as the tests name them) -> the page script relative to app.py (None: the default page)
PAGES = {(p.key or "leaderboard"): (None if not p.key else f"app_pages/{p.script}") for p in PAGE_SPECS}
TITLES = {(p.key or "leaderboard"): p.title for p in PAGE_SPECS}


def open_page(store_root, page: str, monkeypatch):
    """The app on ``page`` for the store at ``store_root``, run once; fails on any exception."""
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("MITOPROBE_STORE", str(store_root))
    at = AppTest.from_file(str(APP), default_timeout=60).run()
    if PAGES[page]:
        at.switch_page(PAGES[page]).run()
    assert not at.exception, [e.value for e in at.exception]
    assert [t.value for t in at.title] == [TITLES[page]]
    return at
