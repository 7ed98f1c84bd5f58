"""Every store read the dashboard makes, cached in one place.

Cache keys are the store path plus its cheap fingerprint (``Store.fingerprint``: names, sizes and
mtimes of the store's files), so a new run, embedding set or import shows up on the next rerun
without restarting the app, while an unchanged store is never read twice. Big immutable things (embedding
matrices, the predictions table) live in ``st.cache_resource`` (shared, not copied); small frames in
``st.cache_data``. PNGs are read only for the patches shown (``Store.images``), never all up front; of every patch
only the few ``INDEX_COLUMNS`` are read (``patch_index``), the shown columns only of the patches shown.
"""

from __future__ import annotations

import base64
import io
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import streamlit as st

from mitoprobe import classifiers
from mitoprobe.api import open as open_workspace
from mitoprobe.classifiers import labels, significance
from mitoprobe.classifiers.refit import stored_predictions
from mitoprobe.classifiers.runs import PREDICTION_COLUMNS, read_runs
from mitoprobe import embedder
from mitoprobe.store import Fingerprint, Store, paths
from mitoprobe.store.dataset import check_png, pixels_sha256
from mitoprobe.store.errors import StoreError
from mitoprobe.store.features import SEARCH_STATS_FILE
from mitoprobe.store.hashing import bytes_sha256
from mitoprobe.store.schema import VOTE_COLUMNS

THUMB_PX = 96
PATCH_COLUMNS = ["patch_id", "dataset", "split", "label", "y", "slide", "n_experts", *VOTE_COLUMNS,
                 "subtype_expert1", "subtype_expert2", "duplicate_group"]


def store_root() -> str:
    """The store this app shows: ``$MITOPROBE_STORE`` (set by ``mitoprobe dashboard``) or ./mitoprobe-store."""
    return str(paths.store_root(None).resolve())


def open_store(root: str) -> Store:
    """The store, opened read-only through the library (``mitoprobe.open(root, read_only=True)``): the
    dashboard never writes, and a path that is not a store is one clear error."""
    return open_workspace(root, read_only=True).store


def stamp(root: str) -> Fingerprint:
    """The store's fingerprint (``Store.fingerprint``): a few stats, cheap enough for every rerun; its
    parts (patches, results, each set) key the caches separately, so an embedding job adding parts
    never evicts the cached patches or results. Stats only, so a store not made yet has one too."""
    return Store(root).fingerprint()


# -- what is there -------------------------------------------------------------------------------
def status(root: str) -> dict:
    """Which parts of the store exist (uncached: a few stats; listing parts never sweeps temp files)."""
    if not paths.is_store(root):  # nothing made yet: every page shows the command to run first
        return dict(root=root, patches=False, sets=[], runs=False, predictions=False)
    st_ = open_store(root)
    return dict(root=root, patches=st_.has_patches(), sets=[s for s in st_.features.sets() if s.complete],
                runs=bool(st_.results.parts("runs")), predictions=bool(st_.results.parts("predictions")))


# -- patches and pixels --------------------------------------------------------------------------
INDEX_COLUMNS = ["patch_id", "dataset", "split", "label", "slide"]


def patch_index(root: str, stamp_: Fingerprint) -> pd.DataFrame:
    """Every patch's dataset, split, label and slide (categoricals: a few bytes a patch), read once per
    state of the patches table and shared, never copied (callers must not modify it): what filters, base
    rates and the map's colours need, without the votes and subtypes a page shows only for the patches on
    screen (``patch_rows``). A page of a 200,000-patch store reads these 5 columns once per server."""
    return _index(root, stamp_.patches)


@st.cache_resource(show_spinner=False, max_entries=2)
def _index(root: str, key: tuple) -> pd.DataFrame:
    st_ = open_store(root)
    names = set(st_.patch_parts.column_names())
    df = st_.patches([c for c in INDEX_COLUMNS if c in names])
    for c in INDEX_COLUMNS:
        if c not in df:
            df[c] = pd.NA
    return df[INDEX_COLUMNS].astype({c: "category" for c in INDEX_COLUMNS[1:]})


def patch_rows(root: str, stamp_: Fingerprint, patch_ids) -> pd.DataFrame:
    """The shown columns (``PATCH_COLUMNS``, votes as text) of just these patches (unknown ids absent),
    without reading every patch's row: what a page about a few patches and their neighbours needs."""
    return _patch_rows(root, stamp_.patches, tuple(dict.fromkeys(map(str, patch_ids))))


@st.cache_data(show_spinner=False, max_entries=256)
def _patch_rows(root: str, key: tuple, patch_ids: tuple[str, ...]) -> pd.DataFrame:
    return _shown(open_store(root), list(patch_ids))


def _shown(st_: Store, patch_ids: list[str] | None) -> pd.DataFrame:
    """The columns pages show (not a cohort's own metadata), with ``votes`` as text."""
    names = set(st_.patch_parts.column_names())
    df = st_.patches([c for c in PATCH_COLUMNS if c in names], patch_ids=patch_ids)
    for c in PATCH_COLUMNS:
        if c not in df:
            df[c] = pd.NA
    df = df[PATCH_COLUMNS].copy()
    df["votes"] = _votes(df)
    return df


def first_patch_id(root: str, stamp_: Fingerprint) -> str:
    """The table's first patch id (a page's default), from the parts' small ``patch_id`` columns."""
    return str(_row_groups(root, stamp_.patches).index[0])


def _votes(df: pd.DataFrame) -> pd.Series:
    """Expert votes as text: 'A' atypical, 'N' normal, one letter per expert ('' when none); array
    operations (no Python loop over the patches)."""
    out = pd.Series("", index=df.index, dtype=object)
    for c in VOTE_COLUMNS:
        v = df[c]
        letter = pd.Series(np.where(v.fillna(False).astype(bool), "A", "N"), index=df.index).where(v.notna(), "")
        out = out + np.where((out != "") & (letter != ""), " ", "") + letter
    return out.astype("string")


@st.cache_resource(max_entries=2)
def _thumb_memo(root: str, key: tuple) -> dict[str, str]:
    return {}


def thumbnails(root: str, stamp_: Fingerprint, patch_ids) -> list[str | None]:
    """``data:`` URLs of small JPEG thumbnails, made once per patch and memoised per store state.

    Only the patches asked for are read (``Store.images``: the row groups holding them),
    never the whole PNG column, so the first page that shows a dozen thumbnails stays fast."""
    from PIL import Image

    memo = _thumb_memo(root, stamp_.patches)
    ids = [str(p) for p in patch_ids]
    missing = [p for p in dict.fromkeys(ids) if p not in memo]
    if missing:
        read = open_store(root).images(missing)
        recent = _recent_pngs(root, stamp_.patches)  # the page shows one of them at full size next, mostly
        with _RECENT_LOCK:  # a page and the read-ahead may both add
            recent.update(read)
            while len(recent) > RECENT_PNGS:
                recent.pop(next(iter(recent)))
        for pid, png_ in read.items():
            img = Image.open(io.BytesIO(png_)).convert("RGB").resize((THUMB_PX, THUMB_PX), Image.LANCZOS)
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=88)
            memo[pid] = "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()
    return [memo.get(p) for p in ids]


GALLERY_SIZE = 8  # patches the similarity page's gallery shows
SIMILARITY_K = 12  # neighbours the similarity page shows first


def first_similarity_view(root: str, stamp_: Fingerprint, recipe_id: str, output: str) -> None:
    """Read what the similarity page's first view of a set shows, into the page's own caches: its gallery
    (every dataset and label, seed 0) and thumbnails, its first query's ``SIMILARITY_K`` neighbours (the
    ANN index loaded: ~0.45 s for the first query at 200,000 patches, ~0.03 s after) and theirs, and the
    test-set predictions of the set's first run family (its first fold choice), as the page's pickers default."""
    r = runs(root, stamp_)
    if not r.empty:
        mine = set_families(r, recipe_id)
        first = next((f for f in family_options(r) if f in mine), None)
        if first is not None:
            family_predictions(root, stamp_, first, fold_choices(r, first)[0])
    drawn = gallery(root, stamp_, set_patches(root, stamp_, recipe_id)["patch_id"], GALLERY_SIZE, 0,
                    groups=set_row_groups(root, stamp_, recipe_id))
    thumbnails(root, stamp_, drawn)
    patch_rows(root, stamp_, drawn)
    vec = stored_vector(root, stamp_, recipe_id, output, drawn[0]) if drawn else None
    if vec is not None:
        patch_rows(root, stamp_, drawn[:1])
        hits = neighbours(root, stamp_, recipe_id, output, np.asarray(vec, np.float32).tobytes(), SIMILARITY_K,
                          not_id=drawn[0], like=drawn[0])
        thumbnails(root, stamp_, hits["patch_id"].tolist())
        patch_rows(root, stamp_, hits["patch_id"])


def gallery(root: str, stamp_: Fingerprint, patch_ids: pd.Series, n: int, seed: int,
            groups: np.ndarray | None = None) -> list[str]:
    """``n`` of ``patch_ids`` drawn at random (``seed``), from as few row groups of the patches table as
    hold them (one, mostly): each thumbnail's row group is read whole (~30 MB of PNGs), so a gallery
    drawn across the table would read ``n`` of them. ``groups``: each patch's row group when the caller has
    them (``set_row_groups``: looking 200,000 ids up took ~0.1 s on every rerun of the similarity page)."""
    if groups is None:
        groups = _row_groups(root, stamp_.patches).reindex(patch_ids.astype(str).to_numpy()).to_numpy(dtype=float)
    at = np.flatnonzero(~np.isnan(groups))  # positions, not 200,000 ids as Python strings
    groups = groups[at]
    rng = np.random.default_rng(seed)
    out: list[str] = []
    for g in rng.permutation(pd.unique(groups)):
        in_g = at[groups == g]
        out += [str(p) for p in patch_ids.iloc[rng.choice(in_g, size=min(n - len(out), len(in_g)), replace=False)]]
        if len(out) >= n:
            break
    return out


def set_row_groups(root: str, stamp_: Fingerprint, recipe_id: str) -> np.ndarray:
    """The row group of each of ``set_patches``' rows (float: NaN for none), for ``gallery``; once per set."""
    return _set_row_groups(root, stamp_.set(recipe_id), stamp_.patches, recipe_id)


@st.cache_resource(show_spinner=False, max_entries=8)
def _set_row_groups(root: str, key: tuple, pkey: tuple, recipe_id: str) -> np.ndarray:
    ids = _set_patches(root, key, pkey, recipe_id)["patch_id"]
    groups = _row_groups(root, pkey).reindex(ids.astype(str).to_numpy()).to_numpy(dtype=float)
    groups.flags.writeable = False
    return groups


@st.cache_resource(show_spinner=False, max_entries=2)
def _row_groups(root: str, key: tuple) -> pd.Series:
    """patch id -> its row group of the patches table (numbered across parts), from the parts' ``patch_id``
    columns: read once per state of the table."""
    ids, groups = [], []
    for g, (_, _, group_ids) in enumerate(open_store(root).patch_parts.row_group_ids()):
        ids += group_ids
        groups.append(np.full(len(group_ids), g))
    return pd.Series(np.concatenate(groups) if groups else np.zeros(0, int), index=ids)


RECENT_PNGS = 256  # full-size PNGs the thumbnails read, kept for the page's next look at one (~8 MB)
_RECENT_LOCK = threading.Lock()


@st.cache_resource(max_entries=2)
def _recent_pngs(root: str, key: tuple) -> dict[str, bytes]:
    return {}


def png(root: str, stamp_: Fingerprint, patch_id: str) -> bytes | None:
    """One stored patch's PNG bytes (None when there is no such patch): from the thumbnails' recent reads
    when it was among them (the similarity query is picked from its gallery), else its row group (~30 MB)."""
    recent = _recent_pngs(root, stamp_.patches).get(str(patch_id))
    return recent if recent is not None else _png(root, stamp_.patches, str(patch_id))


@st.cache_data(show_spinner=False, max_entries=256)
def _png(root: str, key: tuple, patch_id: str) -> bytes | None:
    return open_store(root).images([patch_id]).get(patch_id)


def enlarged(png_bytes: bytes, scale: int) -> bytes:
    """The PNG scaled up ``scale`` times with nearest-neighbour sampling (each pixel a crisp block: no
    smoothing invents detail a pathologist might read into), as PNG bytes."""
    from PIL import Image

    img = Image.open(io.BytesIO(png_bytes)).convert("RGB")
    buf = io.BytesIO()
    img.resize((img.width * scale, img.height * scale), Image.NEAREST).save(buf, format="PNG")
    return buf.getvalue()


# -- results -------------------------------------------------------------------------------------
def runs(root: str, stamp_: Fingerprint) -> pd.DataFrame:
    """The runs table with each family's short ``label`` (``classifiers.labels.family_labels``)."""
    return _runs(root, stamp_.results)


@st.cache_data(show_spinner=False, max_entries=4)
def _runs(root: str, key: tuple) -> pd.DataFrame:
    df = read_runs(open_store(root))
    if df.empty:
        return df
    if "repeat" not in df:
        df["repeat"] = 0
    df["label"] = df["family_id"].map(labels.family_labels(df))
    return df


options_text = labels.options_text  # one home: classifiers.labels
family_label = labels.family_label  # the short label every page and the report show
family_labels = labels.family_labels  # family_id -> label, unique over a runs table (what pickers show)


def family_options(runs: pd.DataFrame) -> dict[str, str]:
    """family_id -> readable label, best balanced accuracy on the first test set first (the benchmark's
    first, ``test_set_order``; whatever test set the store has otherwise): the pickers' order, first = default."""
    r = runs[runs["fold"] >= 0]
    first = test_set_order(runs["test_set"].unique())[:1]
    score = r[r["test_set"].isin(first)].groupby("family_id")["balanced_accuracy"].mean()
    names = runs.drop_duplicates("family_id").set_index("family_id")["label"]
    order = sorted(names.index, key=lambda f: (-score.get(f, -1.0), names[f]))
    return {f: names[f] for f in order}


def set_families(runs: pd.DataFrame, recipe_id: str) -> list[str]:
    """The run families fitted on one embedding set's vectors (what a page about that set picks from)."""
    return runs.loc[runs["recipe_id"] == recipe_id, "family_id"].unique().tolist()


def family_predictions(root: str, stamp_: Fingerprint, family_id: str, fold: int, test_set: str | None = None
                       ) -> pd.DataFrame:
    """Predictions of one family at one fold (-1 = fold ensemble), joined with patch metadata."""
    return _family_predictions(root, stamp_.results, stamp_.patches, family_id, fold, test_set)


@st.cache_data(show_spinner=False, max_entries=64)
def _family_predictions(root: str, rkey: tuple, pkey: tuple, family_id: str, fold: int, test_set: str | None
                        ) -> pd.DataFrame:
    r = _runs(root, rkey)
    if r.empty:
        return pd.DataFrame(columns=PREDICTION_COLUMNS)
    ids = r.loc[(r["family_id"] == family_id) & (r["fold"] == fold), "run_id"].unique()
    # test-set rows only (held-out "val" rows are for audits and stacking), filtered as they are read: never the
    # whole table (a cohort's family adds ~200,000 held-out rows)
    sel = stored_predictions(open_store(root), ids, split="test")
    sel = sel[sel["fold"] == fold].drop(columns="split")
    if test_set is not None:
        sel = sel[sel["test_set"] == test_set]
    meta = _shown(open_store(root), sel["patch_id"].unique().tolist())  # the rows predicted, not every patch
    return sel.merge(meta, on="patch_id", how="left").reset_index(drop=True)


def patch_predictions(root: str, stamp_: Fingerprint, family_id: str, patch_id: str) -> pd.DataFrame:
    """Every stored prediction of one family for one patch: one row per fold model (0..4) and the fold
    ensemble (-1), on each test set that holds the patch, plus held-out (``split == 'val'``) rows of a
    training patch: fold, test_set, split, probability, threshold, prediction."""
    return _patch_predictions(root, stamp_.results, family_id, str(patch_id))


@st.cache_data(show_spinner=False, max_entries=256)
def _patch_predictions(root: str, rkey: tuple, family_id: str, patch_id: str) -> pd.DataFrame:
    cols = ["fold", "test_set", "split", "probability", "threshold", "prediction"]
    r = _runs(root, rkey)
    if r.empty:
        return pd.DataFrame(columns=cols)
    sel = stored_predictions(open_store(root), r.loc[r["family_id"] == family_id, "run_id"].unique(),
                             columns=cols, patch_id=patch_id)
    return sel.sort_values(["split", "test_set", "fold"], kind="mergesort").reset_index(drop=True)


def test_set_order(names) -> list[str]:
    """Test-set names as found in the results, the benchmark's own (``classifiers.TEST_SETS``, in the
    paper's order) first, then any others (a lab's own test set) alphabetically: pages take their
    choices from here, never from a fixed list."""
    names = {str(n) for n in names if isinstance(n, str) and n}
    known = [t for t in classifiers.TEST_SETS if t in names]
    return known + sorted(names - set(known))


def test_sets(root: str, stamp_: Fingerprint) -> list[str]:
    """The test sets our runs were scored on (``test_set_order``)."""
    r = runs(root, stamp_)
    return test_set_order(r["test_set"].unique()) if not r.empty else []


def comparison(root: str, stamp_: Fingerprint, family_ids: tuple[str, ...], fold: int, test_set: str) -> pd.DataFrame:
    """``significance.compare`` (classifiers) of these families on one test set (paired bootstrap, Holm)."""
    return _comparison(root, stamp_.results, stamp_.patches, family_ids, fold, test_set)


@st.cache_data(show_spinner="Testing the differences…", max_entries=32)
def _comparison(root: str, rkey: tuple, pkey: tuple, family_ids: tuple[str, ...], fold: int, test_set: str
                ) -> pd.DataFrame:
    return significance.compare(open_store(root), list(family_ids), [test_set], fold=fold)


def fold_choices(runs_: pd.DataFrame, family_id: str) -> list[int]:
    """Folds stored for a family: the ensemble (-1) first when present, then 0..4."""
    folds = sorted(int(f) for f in runs_.loc[runs_["family_id"] == family_id, "fold"].unique())
    return ([-1] if -1 in folds else []) + [f for f in folds if f >= 0]


def fold_name(fold: int) -> str:
    return "fold ensemble" if fold == -1 else f"fold {fold}"


def leaderboard(root: str, stamp_: Fingerprint) -> pd.DataFrame:
    """``classifiers.leaderboard`` (one row per latest family × test set: mean ± std over folds,
    fold-ensemble 95% CI), with its short ``label`` (``classifiers.labels``), followed by every published row
    of the paper."""
    return _leaderboard(root, stamp_.results)


@st.cache_data(show_spinner=False, max_entries=4)
def _leaderboard(root: str, key: tuple) -> pd.DataFrame:
    st_ = open_store(root)
    ours = classifiers.leaderboard(st_, with_paper=False) if status(root)["runs"] else pd.DataFrame()
    if not ours.empty:  # the label the pages' family pickers show (unique over every family in the store),
        # except on a row pooling fine-tuned fold sets (``ft-<run>-folds``: the report's label)
        first = _runs(root, key).drop_duplicates("family_id").set_index("family_id")
        same = ours["family_id"].map(first["model"]).eq(ours["model"])
        ours["label"] = ours["family_id"].map(first["label"]).where(same, ours["label"])
    return pd.concat([ours, classifiers.report.paper_rows()], ignore_index=True)


# -- embeddings ----------------------------------------------------------------------------------
def embedding_sets(root: str) -> list:
    """Complete sets only: one still being written (or damaged) is refused by the store's readers. In
    the pickers' order (``ordered_sets``): the first is the pages' default."""
    return ordered_sets([s for s in open_store(root).features.sets() if s.complete])


def ordered_sets(sets: list) -> list:
    """General embedding sets first (in the store's order), fine-tuned fold checkpoints
    (``ft-<run8>-fold<k>.<sha8>``, each trained on four folds) last: a page opens on a general set."""
    return sorted(sets, key=lambda s: labels.is_finetuned_set(s.name))


def embedding_matrix(root: str, stamp_: Fingerprint, recipe_id: str, output: str, view: str = "none"
                     ) -> tuple[pd.DataFrame, np.ndarray]:
    """Keys (patch_id, view) and float32 vectors of one output, one view."""
    return _embedding_matrix(root, stamp_.set(recipe_id), recipe_id, output, view)


@st.cache_resource(show_spinner="Reading embeddings…", max_entries=8)
def _embedding_matrix(root: str, key: tuple, recipe_id: str, output: str, view: str
                      ) -> tuple[pd.DataFrame, np.ndarray]:
    fs = open_store(root).features
    eset = fs.get(recipe_id)
    keys, X = fs.read(eset.name, recipe_id=recipe_id, outputs=[output], views=[view], allow_stale=True)
    return keys, np.ascontiguousarray(X, dtype=np.float32)


def set_patches(root: str, stamp_: Fingerprint, recipe_id: str) -> pd.DataFrame:
    """``patch_index`` rows of the patches with a vector in this set's original view, in the patches
    table's order: the patches a similarity search can return (shared, never copied: do not modify)."""
    return _set_patches(root, stamp_.set(recipe_id), stamp_.patches, recipe_id)


@st.cache_resource(show_spinner=False, max_entries=8)
def _set_patches(root: str, key: tuple, pkey: tuple, recipe_id: str) -> pd.DataFrame:
    idx = _index(root, pkey)
    mask = pc.is_in(pa.array(idx["patch_id"].to_numpy(object), pa.string()), value_set=_set_ids(root, key, recipe_id))
    return idx[mask.to_numpy(zero_copy_only=False)]


@st.cache_resource(show_spinner=False, max_entries=8)
def _set_ids(root: str, key: tuple, recipe_id: str) -> pa.Array:
    """The patch ids with a vector in the set's original view: its parts' key columns only, no vector."""
    fs = open_store(root).features
    keys = fs.read_table(fs.get(recipe_id), ["patch_id", "view"])  # unique (patch, view): no pc.unique needed
    return keys.filter(pc.equal(keys["view"], "none"))["patch_id"].combine_chunks().cast(pa.string())


def stored_vector(root: str, stamp_: Fingerprint, recipe_id: str, output: str, patch_id: str) -> np.ndarray | None:
    """One stored patch's raw vector (original view) from the set's LanceDB table; None when the set lacks it."""
    return _stored_vector(root, _search_key(root, stamp_, recipe_id), recipe_id, output, str(patch_id))


@st.cache_data(show_spinner=False, max_entries=256)
def _stored_vector(root: str, key: tuple, recipe_id: str, output: str, patch_id: str) -> np.ndarray | None:
    return _searcher(root, key, recipe_id, output).stored([patch_id]).get(patch_id)


MAP_POINTS = 5_000  # points the embedding map draws by default at most (a random sample above: the projection
# uses all); 20,000 took headless Chromium 2.9 s a warm load on 2 busy vCPUs (docs/benchmarks.md, issue 30)
MAP_POINT_CHOICES = (2_000, 20_000, 50_000)  # what the page offers beside it
MAP_GALLERY_SIZE = 12  # thumbnails under the map before a region is selected


def neighbours(root: str, stamp_: Fingerprint, recipe_id: str, output: str, query: bytes, k: int,
               not_id: str | None = None, like: str | None = None, not_slide: bool = False,
               not_dataset: bool = False) -> pd.DataFrame:
    """The k nearest stored patches (LanceDB, cosine distance between *standardised* vectors: z-scored
    with the set's AMi-Br-train statistics, ``Searcher.nearest``) to a raw float32 query vector: never
    ``not_id`` (the query itself), nor (``not_slide`` / ``not_dataset``) a patch of the slide or dataset
    of the stored patch ``like``; k of them whenever k such patches exist."""
    return _neighbours(root, _search_key(root, stamp_, recipe_id), stamp_.patches, recipe_id, output, query, k,
                       not_id, like, not_slide, not_dataset)


def _search_key(root: str, stamp_: Fingerprint, recipe_id: str) -> tuple:
    """The set's fingerprint plus its search statistics' stat: ``store repair`` rebuilds the LanceDB
    table and rewrites the statistics without touching the parts the fingerprint watches."""
    fs = open_store(root).features
    try:
        s = (fs.dir / recipe_id / SEARCH_STATS_FILE).stat()
        return (stamp_.set(recipe_id), s.st_mtime_ns, s.st_size)
    except OSError:
        return (stamp_.set(recipe_id), None)


@st.cache_data(show_spinner="Searching…", max_entries=256)
def _neighbours(root: str, key: tuple, pkey: tuple, recipe_id: str, output: str, query: bytes, k: int,
                not_id: str | None, like: str | None, not_slide: bool, not_dataset: bool) -> pd.DataFrame:
    same = []
    if like is not None and (not_slide or not_dataset):
        meta = _index(root, pkey).set_index("patch_id")
        ref = meta.loc[[like]]
        if not_dataset:
            same.append((ref["dataset"].tolist(), meta["dataset"]))
        if not_slide:
            same.append((_slide_key(ref).tolist(), _slide_key(meta)))
    hits = _searcher(root, key, recipe_id, output).nearest(
        np.frombuffer(query, dtype=np.float32), k, query_ids=None if not_id is None else [not_id], same=same)
    return hits[["patch_id", "distance"]]


def _slide_key(meta: pd.DataFrame) -> pd.Series:
    """Dataset and slide as one key (missing when the slide is not recorded: it then matches nothing)."""
    return (meta["dataset"].astype(str) + "\x1f" + meta["slide"].astype("string")).astype(object).where(
        meta["slide"].notna(), None)


@st.cache_resource(show_spinner=False, max_entries=8)
def _searcher(root: str, key: tuple, recipe_id: str, output: str):
    """The set's search, opened once per state of the set (``FeatureStore.searcher``: its LanceDB table, with
    the ANN index above ``ANN_MIN_ROWS``, and its statistics): every query after the first reuses it."""
    fs = open_store(root).features
    return fs.searcher(fs.get(recipe_id), output)


PERCENTILE_SAMPLE = 20_000  # stored patches "closer than" compares with (every one in a smaller set)


def distance_sample(root: str, stamp_: Fingerprint, recipe_id: str, output: str) -> tuple[np.ndarray, np.ndarray]:
    """The stored patches *closer than* compares with (ids, unit standardised vectors; ``PERCENTILE_SAMPLE``
    at most), drawn once per state of the set (opening its search)."""
    return _distance_sample(root, _search_key(root, stamp_, recipe_id), recipe_id, output)


@st.cache_resource(show_spinner=False, max_entries=8)
def _distance_sample(root: str, key: tuple, recipe_id: str, output: str) -> tuple[np.ndarray, np.ndarray]:
    ids, Z = _searcher(root, key, recipe_id, output).sample(PERCENTILE_SAMPLE, view="none")
    return ids, _unit(Z)


def _unit(Z: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(Z, axis=-1, keepdims=True)
    return np.ascontiguousarray(Z / np.where(norm > 0, norm, 1.0), dtype=np.float32)


def distance_percentiles(root: str, stamp_: Fingerprint, recipe_id: str, output: str, query: np.ndarray,
                         distances, exclude=()) -> np.ndarray:
    """For each of ``distances`` (of hits to the query), the share (0-100) of the set's stored patches
    (``view == 'none'``, less ``exclude``: the query itself) that lie *farther* from the query, by cosine
    distance between standardised vectors: 99.2 reads "closer than 99.2% of stored patches". Measured on
    every stored patch up to ``PERCENTILE_SAMPLE`` of them, above on that many drawn at random (fixed
    seed; ±0.7 points at worst): one matrix-vector product, whatever the set's size."""
    key = _search_key(root, stamp_, recipe_id)
    ids, Zn = distance_sample(root, stamp_, recipe_id, output)
    search = _searcher(root, key, recipe_id, output)
    q = _unit(search.fs.standardize(search.eset, output, np.asarray(query, np.float32)[None, :]))[0]
    ref = np.sort((1.0 - Zn @ q)[~np.isin(ids, list(exclude))])
    d = np.asarray(distances, dtype=np.float64)
    if not len(ref):
        return np.full(len(d), np.nan)
    return 100.0 * (len(ref) - np.searchsorted(ref, d, side="right")) / len(ref)


# -- embedding an uploaded image -----------------------------------------------------------------
@st.cache_resource(show_spinner="Loading the embedding model…", max_entries=2)
def _model(root: str, name: str):
    return embedder.build(embedder.resolve_recipe(name, Path(root)))


UPLOAD_FIX = "upload a 128x128 8-bit RGB PNG patch centred on one mitotic figure, as the benchmark's are"


@dataclass(frozen=True)
class Upload:
    """An upload that passed the import's own checks (``store.dataset.check_png``)."""

    png: bytes  # what is embedded: the upload, or its lossless RGB conversion (opaque RGBA, palette)
    note: str | None = None  # that conversion, if one was made
    same_as: list[str] = field(default_factory=list)  # stored patches with the same bytes or pixels


def check_upload(root: str, stamp_: Fingerprint, png_bytes: bytes, name: str = "the upload") -> Upload:
    """Validate an uploaded image exactly like an imported patch (PNG, within the pixel limit read
    from its header, 128x128, 8-bit RGB) and find the stored patches it repeats. DataError otherwise:
    a screenshot or a whole slide tile is not a mitosis patch, and a decompression bomb is refused
    before it is decoded."""
    checked = check_png(png_bytes, name, UPLOAD_FIX)
    return Upload(checked.png, checked.note, identical_patches(root, stamp_, checked.png))


def identical_patches(root: str, stamp_: Fingerprint, png_bytes: bytes) -> list[str]:
    """Stored patch ids with exactly these PNG bytes (a lookup on ``content_sha256``), else with the
    same decoded RGB pixels (every stored patch's pixel hash, computed once per store and cached)."""
    same = _by_content(root, stamp_.patches).get(bytes_sha256(png_bytes))
    if same:
        return list(same)
    return list(_by_pixels(root, stamp_.patches).get(pixels_sha256(png_bytes), ()))


@st.cache_data(show_spinner=False, max_entries=2)
def _by_content(root: str, key: tuple) -> dict[str, list[str]]:
    df = open_store(root).patches(columns=["patch_id", "content_sha256"])
    return df.groupby("content_sha256")["patch_id"].apply(list).to_dict()


@st.cache_resource(show_spinner="Hashing the stored patches' pixels…", max_entries=2)
def _by_pixels(root: str, key: tuple) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for t in open_store(root).iter_images():  # every PNG, a row group at a time, once per store state: uploads only
        for pid, png_ in zip(t["patch_id"].to_pylist(), t["png"].to_pylist()):
            out.setdefault(pixels_sha256(png_), []).append(pid)
    return out


def embed_png(root: str, eset, output: str, png_bytes: bytes) -> np.ndarray:
    """Embed one uploaded PNG with the set's own recipe (``embedder.embed_pngs``: the job's own path),
    after the import's checks (``check_png``: a bad upload is never decoded or embedded), refusing
    when the current recipe would not reproduce the stored vectors (a different recipe id).
    Raises ``MitoprobeError`` with the reason."""
    png_bytes = check_png(png_bytes, "the upload", UPLOAD_FIX).png
    source = (eset.provenance.get("weights") or {}).get("source")
    if source == "local":
        raise StoreError(f"set {eset.name} was embedded with a local weights file "
                         f"({eset.provenance['weights'].get('file')}), which the dashboard cannot locate")
    current = embedder.recipe_id_of(eset.name, store_root=Path(root))
    if current != eset.recipe_id:
        raise StoreError(f"the set was made by recipe id {eset.recipe_id}, but {eset.name!r} is now "
                         f"{current} (model, weights or library versions changed), so an uploaded image "
                         f"would not be comparable; re-run `mitoprobe embed --model {eset.name}`")
    model, transform = _model(root, eset.name)
    return embedder.embed_pngs(model, transform, [png_bytes])[output][0].astype(np.float32)


# -- errors (Errors page) ------------------------------------------------------------------------
NO_VALUE = "(none)"


def error_breakdown(p: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Error counts of predictions ``p`` (columns ``y``, ``prediction`` and ``by``) per group of ``by``:
    patches, errors, error rate, missed atypical (FN) and false alarms (FP), most errors first.
    A missing group value is its own group, ``NO_VALUE``, so the errors column sums to all errors."""
    df = p[by].astype(object).where(p[by].notna(), NO_VALUE)
    wrong = (p["prediction"].to_numpy() != p["y"].to_numpy())
    df = df.assign(patches=1, errors=wrong.astype(int), fn=(wrong & (p["y"].to_numpy() == 1)).astype(int),
                   fp=(wrong & (p["y"].to_numpy() == 0)).astype(int))
    out = df.groupby(by, sort=True, dropna=False)[["patches", "errors", "fn", "fp"]].sum().reset_index()
    out.insert(len(by) + 2, "error_rate", out["errors"] / out["patches"])
    return out.sort_values(["errors", "error_rate"], ascending=False, kind="mergesort").reset_index(drop=True)


def file_slug(text: str) -> str:
    """``text`` safe for a file name: runs of anything but letters, digits, '.' and '-' become one '_'."""
    return re.sub(r"[^A-Za-z0-9.-]+", "_", str(text)).strip("_") or "x"


def fold_slug(fold: int) -> str:
    return "fold-ensemble" if fold == -1 else f"fold-{fold}"


def errors_file_name(family_label_: str, fold: int, test_set: str) -> str:
    """``errors_<family label>_<fold>_<test set>.csv``, e.g. ``errors_uni_logreg_fold-ensemble_AtNorM-MD.csv``."""
    return f"errors_{file_slug(family_label_)}_{fold_slug(fold)}_{file_slug(test_set)}.csv"
