"""Repeated probing: ten heads through the Python API (vectors read once) against the CLI (read per call).

The same ten heads (own heads: factories in a temporary heads file, as a researcher writes them) run on
two sets, side by side in one run: ``handcrafted`` (57-d, from the store) and a synthetic 1,536-d set
(the width of UNI2-h / H-optimus / Prov-GigaPath vectors, Gaussian with a weak label signal, for the
store's real patch ids). Per family: seconds through ``mitoprobe.open(...).probe`` and through
``mitoprobe probe`` (in-process with click's runner: it re-opens the store, reads the vectors and the
protocol; a shell call adds the interpreter's start-up, measured once and printed beside them).

Everything is written to a temporary copy of the store's patches and folds, deleted afterwards.
Usage: python -m benchmarks.probe_api [--store PATH] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import mitoprobe
from mitoprobe.store import Store

from .machine import facts, header

HEADS_FILE = '''
from sklearn.calibration import CalibratedClassifierCV
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.ensemble import ExtraTreesClassifier, HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression, SGDClassifier
from sklearn.naive_bayes import GaussianNB
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC
from sklearn.tree import DecisionTreeClassifier


def logreg(C=0.1):
    return make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=300, class_weight="balanced"))
def nb():
    return GaussianNB()
def lda():
    return LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto")
def knn(n_neighbors=25):
    return make_pipeline(StandardScaler(), KNeighborsClassifier(n_neighbors=n_neighbors))
def forest(random_state=0):
    return RandomForestClassifier(n_estimators=100, min_samples_leaf=3, n_jobs=1, random_state=random_state)
def extra(random_state=0):
    return ExtraTreesClassifier(n_estimators=100, min_samples_leaf=3, n_jobs=1, random_state=random_state)
def hgb(random_state=0):
    return HistGradientBoostingClassifier(max_iter=100, random_state=random_state)
def sgd(random_state=0):
    return make_pipeline(StandardScaler(), SGDClassifier(loss="log_loss", alpha=1e-3, random_state=random_state))
def tree(random_state=0):
    return DecisionTreeClassifier(max_depth=5, random_state=random_state)
def svm(C=0.01):
    return make_pipeline(StandardScaler(), CalibratedClassifierCV(LinearSVC(C=C), cv=3))
'''
HEADS = ("logreg", "nb", "lda", "knn", "forest", "extra", "hgb", "sgd", "tree", "svm")
WIDE = "bench_wide.random"  # the synthetic 1,536-d set's name


def _workspace(src: Path, tmp: Path) -> Store:
    """A temporary store with the source store's patches, folds and handcrafted vectors (no results)."""
    dst = tmp / "store"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("results", "locks", "finetune"))
    return Store(dst)


def _add_wide_set(st: Store, dim: int = 1536, seed: int = 0) -> None:
    """A synthetic set ``WIDE`` for every patch: N(0, 1) plus a small shift along one direction for atypical."""
    from mitoprobe import embedder
    from mitoprobe.embedder.recipes import Recipe
    from mitoprobe.store.errors import RecipeError

    try:
        embedder.get_recipe(WIDE)
    except RecipeError:
        embedder.register(Recipe(name=WIDE, family="bench", arch="synthetic", weights="none",
                                 outputs=(("cls", dim),), paper_outputs=("cls",), note="synthetic 1,536-d vectors"))
    recipe = embedder.get_recipe(WIDE)
    p = st.patches(columns=["patch_id", "y"])
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(len(p), dim)).astype(np.float32)
    X[:, 0] += 0.8 * np.nan_to_num(p["y"].to_numpy(dtype=float), nan=0.0)
    writer = st.features.writer(embedder.recipe_id_of(recipe), WIDE, {"cls": dim}, {"synthetic": True})
    writer.write_chunk(p["patch_id"].tolist(), ["none"] * len(p), {"cls": X})
    writer.finalize()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", type=Path, default=Path(os.environ.get("MITOPROBE_STORE", "mitoprobe-store")),
                    help="a store with handcrafted vectors (e.g. the one `make demo` builds)")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)
    from click.testing import CliRunner

    from mitoprobe.cli import cli

    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "mitoprobe", "--help"], check=True, capture_output=True)
    startup = time.perf_counter() - t0
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        heads_file = tmp / "bench_heads.py"
        heads_file.write_text(HEADS_FILE)
        for model in ("handcrafted", WIDE):
            stores = {way: _workspace(a.store, tmp / f"{model}-{way}") for way in ("api", "cli")}
            if model == WIDE:
                for st in stores.values():
                    _add_wide_set(st)
            ws = mitoprobe.open(stores["api"].root)
            for head in HEADS:  # the two ways alternate, so a change in the machine's load hits both alike
                spec = f"{heads_file}:{head}"
                for way in ("api", "cli"):
                    t0 = time.perf_counter()
                    if way == "api":
                        ws.probe(model, head=spec)  # the CLI's defaults (n_boot enters the family)
                    else:
                        res = CliRunner().invoke(cli, ["probe", "--store", str(stores["cli"].root), "--model", model,
                                                       "--head", spec], catch_exceptions=False)
                        assert res.exit_code == 0, res.output
                    rows.append(dict(model=model, way=way, head=head, seconds=time.perf_counter() - t0))
                    print(json.dumps(rows[-1]), flush=True)
            for st in stores.values():
                shutil.rmtree(st.root)
    machine = facts()
    print(f"\n{header(machine)}\n`python -m mitoprobe --help` start-up {startup:.2f} s (a shell call of the CLI pays "
          "it per family)")
    print("| set | head | API s | CLI s (in-process) | CLI / API |\n|---|---|---:|---:|---:|")
    by = {(r["model"], r["way"], r["head"]): r["seconds"] for r in rows}
    for model in ("handcrafted", WIDE):
        for head in HEADS:
            api, cli_s = by[(model, "api", head)], by[(model, "cli", head)]
            print(f"| {model} | {head} | {api:.2f} | {cli_s:.2f} | {cli_s / api:.2f}x |")
        api_t = sum(by[(model, "api", h)] for h in HEADS)
        cli_t = sum(by[(model, "cli", h)] for h in HEADS)
        print(f"| {model} | **10 heads** | **{api_t:.1f}** | **{cli_t:.1f}** | **{cli_t / api_t:.2f}x** |")
    if a.json:
        a.json.write_text(json.dumps(dict(rows=rows, startup_s=startup, machine=machine), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
