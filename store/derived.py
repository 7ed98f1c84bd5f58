"""Derived views of an embedding set: computed when the set changes, read by the dashboard in milliseconds.

Layout under ``<store>/derived/<recipe_id>/`` (the set's own folder name)::

    projection-<output>-pca.parquet   patch_id, x, y: the embedding map's 2-D PCA of one output
    robustness.parquet                one row per k (``K_MIN`` .. ``K_MAX``): the site-robustness index

Each file carries its manifest in its Parquet footer (key ``mitoprobe.derived``, JSON): ``format``
(``FORMAT``), ``kind``, ``recipe_id``, ``output``, ``rows``, ``built``, ``set`` (the fingerprint of
the set's parts it was computed from: their names and sizes; parts are immutable and every new
part has a new name), ``parts`` (those names and sizes, so an append can be recognised),
``patches`` (for views that read labels and sites: the fingerprint of the patches table's parts)
and what the view needs to be read (PCA axes, why there is no index, ...). One file, one atomic
write: a view and its manifest never disagree, and a killed build leaves the old view or a
``.tmp-`` leftover (``store/leftovers.py``), never half a view. Data pages carry CRC checksums,
verified on every read, so a flipped byte is damage and never a wrong map.

A view is *current* when its manifest's ``format`` is ``FORMAT``, its ``set`` is the set's parts
now and (robustness) its ``patches`` is the patches table's parts now; otherwise it is *stale*
and is never shown (``status``). Computing a view is the classifiers' job
(``classifiers/derived.py``), run at the end of every ``mitoprobe embed``; the store only keeps,
checks and judges the files. ``store check`` lists a damaged view (an error: ``store repair``
quarantines it), a stale one and a folder whose set is gone (warnings; repair quarantines the
folder); a set without views is not a finding (a store made before views existed).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .atomic import damaged, read_guard, write_parquet
from .errors import DamagedStoreError, StoreError
from .features import EmbeddingSet, read_complete
from .findings import REPAIR, Problem
from .lock import SetLock, describe

DERIVED_DIR = "derived"
FORMAT = 1  # the views' own format: a view of another format is stale (rebuilt by the next `embed`)
META_KEY = b"mitoprobe.derived"
LOCK_WAIT_S = 600.0  # an `embed` waits this long for another process building the same set's views
K_MIN, K_MAX = 5, 50  # the robustness index is stored for every k the embedding map's slider offers

PROJECTION = pa.schema([("patch_id", pa.large_string()), ("x", pa.float32()), ("y", pa.float32())])
ROBUSTNESS = pa.schema([("k", pa.int64()), ("n", pa.int64()), ("queries", pa.int64()),
                        ("robustness_index", pa.float64()), ("label_agreement", pa.float64()),
                        ("label_base_rate", pa.float64()), ("site_agreement", pa.float64()),
                        ("site_base_rate", pa.float64()), ("sl_os", pa.int64()), ("ol_ss", pa.int64())])
SCHEMAS = {"projection": PROJECTION, "robustness": ROBUSTNESS}


@dataclass(frozen=True)
class ViewSpec:
    """One view a complete set has: where it lives and what makes it stale."""

    kind: str  # projection | robustness
    path: Path
    output: str | None = None  # projection: the output it maps
    reads_patches: bool = False  # stale when the patches table changes too (labels, sites)


def folder(root: str | Path, recipe_id: str) -> Path:
    return Path(root) / DERIVED_DIR / recipe_id


def projection_path(root: str | Path, recipe_id: str, output: str) -> Path:
    return folder(root, recipe_id) / f"projection-{output}-pca.parquet"


def robustness_path(root: str | Path, recipe_id: str) -> Path:
    return folder(root, recipe_id) / "robustness.parquet"


def views(root: str | Path, eset: EmbeddingSet) -> list[ViewSpec]:
    """The views every complete set gets: one PCA map per output, and the robustness index."""
    out = [ViewSpec("projection", projection_path(root, eset.recipe_id, o), o) for o in eset.outputs]
    return out + [ViewSpec("robustness", robustness_path(root, eset.recipe_id), None, True)]


def lock(root: str | Path, eset: EmbeddingSet) -> SetLock:
    """One builder of a set's views at a time (an `embed` and the dashboard's build button)."""
    return SetLock(root, f"derived-{eset.recipe_id}", f"the derived views of set {eset.name} ({eset.recipe_id})")


# -- what a view was computed from ------------------------------------------------------------------
def _digest(items) -> str:
    return hashlib.sha256(json.dumps(items, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class SetState:
    """A set's parts (name, size) as listed once, and the patches table's fingerprint: a view records
    the state it was computed from, and a builder reads exactly these parts (immutable files)."""

    recipe_id: str
    parts: tuple[tuple[str, int], ...]
    patches: str

    @property
    def fingerprint(self) -> str:
        return _digest([list(p) for p in self.parts])


def patches_fingerprint(store) -> str:
    """The patches table's parts (file names and sizes, from its manifest): a new import, a replaced
    dataset or a repaired part changes it; the pixels are never read."""
    entries = store.patch_parts.entries()
    items = []
    for e in entries:
        try:
            size = store.patch_parts.path_of(e).stat().st_size
        except FileNotFoundError:
            size = None
        items.append([e["file"], size])
    return _digest(items)


def set_state(store, eset: EmbeddingSet) -> SetState:
    parts = []
    for p in eset.parts:
        try:
            parts.append((p.name, p.stat().st_size))
        except FileNotFoundError:  # quarantined meanwhile: not part of the set now
            continue
    return SetState(eset.recipe_id, tuple(parts), patches_fingerprint(store))


def buildable(store, eset: EmbeddingSet) -> None:
    """A set's views are built from a finished set only, never while a job writes it (``StoreError``)."""
    holder = store.features.lock(eset.recipe_id, eset.name).held_elsewhere()
    if holder is not None:
        raise StoreError(f"set {eset.name} ({eset.recipe_id}) is being written by {describe(holder)}; its "
                         "derived views are built when that job ends")
    if read_complete(eset) is None:
        raise StoreError(f"set {eset.name} ({eset.recipe_id}) is incomplete (no COMPLETE record); run "
                         f"`mitoprobe embed --model {eset.name}` to finish it (its derived views are built then)")


def iter_vectors(eset: EmbeddingSet, state: SetState, outputs: Sequence[str], view: str = "none",
                 parts: Sequence[str] | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(patch ids, float32 matrix of ``outputs`` side by side) of one view, one part at a time, from the
    parts of ``state`` (or the named ``parts`` of it): memory is one part, whatever the set's size."""
    names = [n for n, _ in state.parts if parts is None or n in set(parts)]
    for name in names:
        path = eset.path / name
        with read_guard(path):
            t = pq.read_table(path, columns=["patch_id", "view", *outputs])
        t = t.filter(pc.equal(t["view"], view))
        mats = [t[o].combine_chunks().flatten().to_numpy().reshape(t.num_rows, eset.outputs[o]) for o in outputs]
        X = np.concatenate(mats, axis=1) if mats else np.empty((t.num_rows, 0))
        yield np.asarray(t["patch_id"].to_pylist(), dtype=object), np.asarray(X, dtype=np.float32)


# -- writing and reading a view ---------------------------------------------------------------------
def write(spec: ViewSpec, table: pa.Table, state: SetState, info: dict) -> Path:
    """Write one view atomically with its manifest in the footer (checksummed pages)."""
    table = table.cast(SCHEMAS[spec.kind])
    manifest = dict(info, format=FORMAT, kind=spec.kind, recipe_id=state.recipe_id, output=spec.output,
                    rows=table.num_rows, built=time.time(), set=state.fingerprint,
                    parts=[list(p) for p in state.parts], patches=state.patches if spec.reads_patches else None)
    table = table.replace_schema_metadata({META_KEY: json.dumps(manifest).encode()})
    return write_parquet(table, spec.path, write_page_checksum=True)


def _manifest(path: Path, schema: pa.Schema) -> dict:
    raw = (schema.metadata or {}).get(META_KEY)
    if raw is None:
        raise damaged(path, "no mitoprobe.derived manifest in its footer", "is not a derived view")
    with read_guard(path, "has an unreadable manifest", errors=(ValueError, TypeError)):
        doc = json.loads(raw)
        if not isinstance(doc, dict) or not isinstance(doc.get("format"), int):
            raise ValueError("not an object with an integer format")
    return doc


def read(spec: ViewSpec) -> tuple[pa.Table, dict]:
    """A view and its manifest, every page's checksum verified and the content checked against the
    manifest (``DamagedStoreError`` naming the file otherwise)."""
    with read_guard(spec.path):
        table = pq.ParquetFile(spec.path, page_checksum_verification=True).read()
    doc = _manifest(spec.path, table.schema)
    if doc["format"] != FORMAT:  # another format's columns may differ: judged stale, never read
        return table.slice(0, 0), doc
    expected = SCHEMAS[spec.kind]
    if not table.schema.remove_metadata().equals(expected):
        raise damaged(spec.path, f"columns {table.schema.names} are not {expected.names}", "is not a valid derived view")
    problem = _content_problem(spec, table, doc)
    if problem:
        raise damaged(spec.path, problem, "is not a valid derived view")
    return table.replace_schema_metadata(None), doc


def _content_problem(spec: ViewSpec, table: pa.Table, doc: dict) -> str | None:
    if doc.get("kind") != spec.kind or doc.get("recipe_id") != spec.path.parent.name:
        return f"its manifest describes a {doc.get('kind')} view of set {doc.get('recipe_id')}"
    if doc.get("rows") != table.num_rows:
        return f"{table.num_rows} rows, its manifest says {doc.get('rows')}"
    if spec.kind == "projection":
        if pc.count_distinct(table["patch_id"]).as_py() != table.num_rows:
            return "a patch id stored twice"
        if not all(np.isfinite(table[c].to_numpy()).all() for c in ("x", "y")):
            return "non-finite coordinates"
    return None


def freshness(doc: dict, state: SetState, reads_patches: bool) -> str | None:
    """Why a view with manifest ``doc`` is stale for ``state``; None when it is current."""
    if doc.get("format") != FORMAT:
        newer = isinstance(doc.get("format"), int) and doc["format"] > FORMAT
        return f"it was made by {'a newer' if newer else 'an older'} mitoprobe (view format {doc.get('format')})"
    if doc.get("set") != state.fingerprint:
        return "the set changed since it was built (parts added or repaired)"
    if reads_patches and doc.get("patches") != state.patches:
        return "the patches table changed since it was built (an import: labels or datasets may differ)"
    return None


@dataclass(frozen=True)
class Status:
    """What a reader may show: ``state`` current, missing, stale or damaged, and why."""

    state: str
    why: str = ""
    table: pa.Table | None = None
    manifest: dict | None = None


def status(spec: ViewSpec, state: SetState) -> Status:
    """The view if it is current (with its table), else why it is not shown."""
    if not spec.path.is_file():
        return Status("missing", "it has not been built yet")
    try:
        table, doc = read(spec)
    except DamagedStoreError as exc:
        return Status("damaged", str(exc))
    why = freshness(doc, state, spec.reads_patches)
    if why:
        return Status("stale", why, manifest=doc)
    return Status("current", table=table, manifest=doc)


# -- store check / repair ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Finding:
    path: Path
    kind: str  # damaged | stale | orphan
    what: str
    name: str = ""  # the set's recipe name (for the fix)


def scan(store, sets: list[tuple[Path, EmbeddingSet | None, bool]]) -> list[Finding]:
    """Every view read in full (``read``); ``sets``: (folder, set or None when its recipe.json is
    unreadable, being written). A folder whose set is gone is an orphan; views of a set a job is
    writing are not judged stale (that job rebuilds them); those of a set with an unreadable
    recipe.json are not judged at all (repair quarantines them with their set)."""
    top = Path(store.root) / DERIVED_DIR
    if not top.is_dir():
        return []
    known = {f.name: (e, writing) for f, e, writing in sets}
    out: list[Finding] = []
    for d in sorted(p for p in top.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if d.name not in known:
            out.append(Finding(d, "orphan", "derived views of an embedding set that is not in the store"))
            continue
        eset, writing = known[d.name]
        if eset is None:
            continue
        state = None if writing else set_state(store, eset)
        specs = {s.path.name: s for s in views(store.root, eset)}
        for f in sorted(d.glob("*.parquet")):
            spec = specs.get(f.name)
            if spec is None:  # never read; a newer mitoprobe may make more views
                out.append(Finding(f, "stale", "it is not a view this mitoprobe makes", eset.name))
                continue
            try:
                _, doc = read(spec)
            except DamagedStoreError as exc:
                out.append(Finding(f, "damaged", exc.reason, eset.name))
                continue
            why = None if state is None else freshness(doc, state, spec.reads_patches)
            if why:
                out.append(Finding(f, "stale", why, eset.name))
    return out


def problems(found: list[Finding]) -> list[Problem]:
    out = []
    for x in found:
        rebuild = f"`mitoprobe embed --model {x.name}` rebuilds it"
        if x.kind == "damaged":
            out.append(Problem(x.path, f"derived view {x.what}", f"{REPAIR} (quarantines it); then {rebuild}",
                               "derived"))
        elif x.kind == "stale":
            out.append(Problem(x.path, f"derived view is stale: {x.what}; it is not shown",
                               f"{rebuild} (or the embedding map's build button)", "derived-stale", "warning"))
        else:
            out.append(Problem(x.path, x.what, f"{REPAIR} (quarantines it)", "derived-orphan", "warning"))
    return out


def repair(r, found: list[Finding]) -> None:
    """Quarantine damaged views and orphaned folders (``r``: ``integrity._Repair``); stale views stay
    (never shown; the next build replaces them)."""
    for x in found:
        if x.kind == "damaged":
            r.quarantine(x.path, f"a damaged derived view ({x.what}); `mitoprobe embed` rebuilds it")
        elif x.kind == "orphan":
            r.quarantine(x.path, x.what)
