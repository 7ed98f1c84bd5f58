"""``mitoprobe run``: the main job, import -> embed (offline defaults) -> probe sweep -> leaderboard.

``mitoprobe run --full`` adds the offline fine-tuning preset end to end: embed and probe the
nucleus-morphology set, train the small CNN from scratch on the 5 folds (``finetune --preset offline``),
embed every patch with each fold's checkpoint, probe each fold's vectors under its own fold alone and
concatenated with the handcrafted features, fuse the CNN's probabilities with the probes' (late fusion
from stored predictions, ``classifiers.fusion``), and name the best offline family by held-out scores.
"""

from __future__ import annotations

import time
from pathlib import Path

import click
import pyarrow as pa
import pyarrow.compute as pc

from mitoprobe import embedder
from mitoprobe.classifiers.fusion import fuse, rank_by_heldout
from mitoprobe.classifiers.labels import label_of
from mitoprobe.classifiers.runner import resolve_heads
from mitoprobe.embedder.dihedral import view_names
from mitoprobe.finetune import FinetuneConfig, finetune
from mitoprobe.paper.naming import pooled_set_name
from mitoprobe.store import BENCHMARK, Store
from mitoprobe.store.dataset import difference_from_stored
from mitoprobe.store.errors import StoreError

from .api import resolve_data
from .api import open as open_workspace
from .display import import_benchmark, print_report


def check_data_matches(st: Store, data_dir: Path) -> None:
    """``run --data PATH`` on a store that already holds patches: go on when PATH holds exactly the
    stored data, else refuse (never ignore PATH, never replace stored patches silently)."""
    data_dir, amibr_csv = resolve_data(data_dir, None)
    stored = st.patch_table()
    stored = stored.filter(pc.is_in(stored["dataset"], value_set=pa.array([s.name for s in BENCHMARK])))
    diff = difference_from_stored(stored, data_dir, amibr_csv)
    if diff is not None:
        raise StoreError(f"--data {data_dir} differs from the patches already in {st.root} ({diff}); the main "
                        f"job does not replace stored data: run `mitoprobe data import {data_dir} --replace "
                        f"--store {st.root}` first (stored vectors, folds and results refer to the old patches), "
                        "or pass another --store")
    click.echo(f"{st.root} already holds exactly the data in {data_dir}")


def check_run_arguments(st: Store, models: tuple[str, ...], heads: list[str] | None, views: str) -> list:
    """Every name the main job will use resolves, before it imports or writes anything; returns the heads."""
    specs = resolve_heads(heads)
    view_names(views)
    for model in models:
        embedder.resolve_recipe(model, st.root)
    return specs


def run_main_job(store_path: Path | None = None, data_dir: Path | None = None, models: tuple[str, ...] | None = None,
                 heads: list[str] | None = None, views: str = "none", fmt: str = "table",
                 seed: int = 0) -> dict[str, float]:
    """Run every stage; each is incremental (import is skipped when patches exist, embedding
    resumes, identical probe configurations are skipped). Returns seconds per stage. ``seed`` seeds the
    probes (``fmt="none"``: print no leaderboard, e.g. a run whose test numbers must not be seen yet).

    ``data_dir`` on a store that already holds patches must hold the same data (else StoreError)."""
    timings: dict[str, float] = {}
    ws = open_workspace(store_path, create=True)  # the main job makes its store
    st = ws.store
    models = tuple(models or embedder.OFFLINE_DEFAULTS)
    specs = check_run_arguments(st, models, heads, views)
    t = time.perf_counter()
    if not st.has_patches():
        import_benchmark(ws, data_dir, None, quiet=True)
    elif data_dir is not None:
        check_data_matches(st, data_dir)
    timings["import"] = time.perf_counter() - t
    for model in models:
        t = time.perf_counter()
        s = ws.embed(model, views=views, progress=True)
        timings[f"embed {model}"] = time.perf_counter() - t
        click.echo(f"embedded {model}: {s.rows_written} new rows of {s.rows_total} in {s.seconds:.0f} s")
        t = time.perf_counter()
        ws.probe(model, specs, tta=views != "none", seed=seed, progress=True)
        timings[f"probe {model}"] = time.perf_counter() - t
    if fmt != "none":
        print_report(st, fmt)
    return timings


FULL_HEADS = ("logreg", "lgbm")  # the probes on the fine-tuned folds' vectors (alone and + handcrafted)
MORPHOLOGY = "morphology"  # the shape-only set: its own probes, then a fusion member
# Late fusions tried by ``run --full`` (fixed in advance, so no member is picked by looking at anything;
# the best is then named on held-out scores only). "cnn" = the fine-tuned run itself, "folds+hc" = its fold
# vectors + handcrafted features; the rest are MODEL:HEAD of probes.
FUSIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("mean", ("cnn", "morphology:lgbm")),
    ("mean", ("cnn", "morphology:lgbm", "handcrafted:lgbm")),
    ("mean", ("cnn", "folds+hc:lgbm", "morphology:lgbm")),
    ("stack", ("cnn", "folds+hc:lgbm", "morphology:lgbm", "handcrafted:lgbm")),
)


# How the fusions choose each fold's threshold (``classifiers.thresholds``). Round 5 (issue 32, rules committed
# before any result): 0.5 transferred best to held-out slides the threshold never saw, +0.008 balanced accuracy
# over each fold's own Youden point for the named family, on each of 3 seeds (docs/offline-accuracy.md).
FUSION_THRESHOLD_RULE = "fixed_0.5"


def fusion_specs(members: tuple[str, ...], cnn_family: str, run_key: str) -> list[str]:
    """``FUSIONS`` member names -> ``classifiers.fusion`` specs for this fine-tuning run."""
    alias = {"cnn": cnn_family, "folds+hc:lgbm": f"{pooled_set_name(run_key)}+handcrafted:lgbm"}
    return [alias.get(m, m) for m in members]


def run_offline_full(store_path: Path | None = None, folds: str | None = None, heads=FULL_HEADS,
                     num_workers: int = 1, config=None, fusions=FUSIONS, seed: int = 0) -> dict[str, float]:
    """The morphology set, the offline preset (or ``config``): fine-tune 5 folds, embed with each fold's
    checkpoint, probe, fuse. Returns seconds per stage. Needs the handcrafted set (``run_main_job`` makes
    it first); fusions need all five folds (skipped when ``folds`` names fewer). ``seed`` seeds the whole
    preset: the network's initialisation and draws (unless ``config`` is given), every probe and the
    fusions' bootstrap."""
    timings: dict[str, float] = {}
    ws = open_workspace(store_path)
    st = ws.store
    t = time.perf_counter()
    ws.embed(MORPHOLOGY, num_workers=num_workers, progress=True)
    timings[f"embed {MORPHOLOGY}"] = time.perf_counter() - t
    t = time.perf_counter()
    ws.probe(MORPHOLOGY, list(heads), seed=seed, progress=True)
    timings[f"probe {MORPHOLOGY}"] = time.perf_counter() - t
    t = time.perf_counter()
    s = finetune(st, config or FinetuneConfig.preset("offline", seed=seed), folds, num_workers=num_workers)
    timings["finetune offline (5 folds)"] = time.perf_counter() - t
    click.echo(f"fine-tuned run {s.run_key[:8]}: folds {s.folds_done}")
    t = time.perf_counter()
    names = [ws.embed(f"ft:{s.run_key[:8]}/fold{k}", num_workers=num_workers, progress=True).name
             for k in s.folds_done]
    timings["embed fold checkpoints"] = time.perf_counter() - t
    t = time.perf_counter()
    for name in names:
        ws.probe(name, list(heads), seed=seed, progress=True)
        ws.probe(f"{name}+handcrafted", list(heads), seed=seed, progress=True)
    timings["probe fold checkpoints"] = time.perf_counter() - t
    if s.ensemble:
        t = time.perf_counter()
        for rule, members in fusions:
            fuse(st, fusion_specs(members, s.family_id, s.run_key), rule=rule, seed=seed,
                 threshold_rule=FUSION_THRESHOLD_RULE)
        timings["fuse"] = time.perf_counter() - t
    return timings


def best_offline_family(store_path: Path | None = None) -> str:
    """One line naming the best family in the store by fold-mean held-out AUROC (training data only)."""
    runs = open_workspace(store_path, read_only=True).store.results.read("runs")
    ranked = rank_by_heldout(runs)
    if ranked.empty:
        return "no complete family to rank yet"
    b = ranked.iloc[0]
    label = label_of(runs, b["family_ids"].split(",")[0], b["model"])
    return (f"best offline family by held-out AUROC (training data only): {label} "
            f"(family {b['family_ids'][:12]}, held-out AUROC {b['heldout_auroc']:.3f}, held-out balanced accuracy "
            f"{b['heldout_balanced_accuracy']:.3f}, of {len(ranked)} families)")
