"""Nothing is written on a damaged store, and ``store repair`` offers a way out of every damage (issue 31).

Each damage of the patches table below, made with the store's own files, meets every writer through the
CLI: ``data import`` (also ``--replace``), ``embed``, ``probe``, ``fuse``. Each must stop with exit 2 and
exactly one ``error:`` line, the one ``store check`` prints for that damage (naming the damaged file and
``mitoprobe store repair``), the store's bytes unchanged (every file, locks included). Then
``store repair --yes`` brings the store back to a state ``store check`` accepts, no patch stored once is
lost, and ``embed`` works again. Staging leftovers (``.tmp-`` files of a killed import) are listed with
their age, removed when old and unowned, and left alone while a live import owns them.

One small store (tiny six-slide benchmark, handcrafted vectors, two probe families) is built per module
and copied per test."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import REPO, make_six_slide_store, run_cli

from mitoprobe.store import DamagedStoreError, Store, integrity
from mitoprobe.store.atomic import TMP_PREFIX, hold, let_go
from mitoprobe.store.patch_parts import PartWriter

MODEL = "handcrafted"
EMBED = ("embed", "--model", MODEL, "--num-workers", "0")
PROBE = ("probe", "--model", MODEL, "--head", "simpleshot")
FUSE = ("fuse", "--member", f"{MODEL}:simpleshot", "--member", f"{MODEL}:knn")


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Store:
    from mitoprobe import embedder
    from mitoprobe.classifiers import runner

    st = make_six_slide_store(tmp_path_factory.mktemp("writers"))
    embedder.embed(st, MODEL, progress=False, num_workers=0)
    runner.sweep(st, MODEL, heads=["simpleshot", "knn"], n_boot=10, show_progress=False)
    assert integrity.check(st) == []
    return st


@pytest.fixture
def st(built, tmp_path) -> Store:
    shutil.copytree(built.root, tmp_path / "store")
    return Store(tmp_path / "store")


@pytest.fixture(scope="module")
def bench(built) -> Path:
    return built.root.parent / "AMi-Br_Benchmark"


def files(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` by relative path (locks included: a refused writer takes none)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def cli(monkeypatch, capsys, st: Store, *args: str) -> tuple[int, str]:
    return run_cli(monkeypatch, capsys, *args, "--store", str(st.root))


# -- damage, made with the store's own files ------------------------------------------------------
def manifest(st: Store) -> dict:
    return json.loads(st.patch_parts.manifest_path.read_text())


def write_manifest(st: Store, doc: dict) -> None:
    st.patch_parts.manifest_path.write_text(json.dumps(doc))


def add_part(st: Store, table: pa.Table, name: str = "part-29991231T000000000000-added000.parquet") -> Path:
    """``table`` as a new part file, listed last in the manifest (what a copied part looks like)."""
    path = st.patch_parts.dir / name
    pq.write_table(table, path)
    doc = manifest(st)
    counts = {d: table["dataset"].to_pylist().count(d) for d in set(table["dataset"].to_pylist())}
    doc["parts"].append(dict(file=name, rows=table.num_rows, datasets=counts))
    write_manifest(st, doc)
    return path


def listed_twice(st: Store) -> Path:
    doc = manifest(st)
    doc["parts"].append(doc["parts"][1])
    write_manifest(st, doc)
    return st.patch_parts.path_of(doc["parts"][1])


def copied_part(st: Store) -> Path:
    """Two parts holding the same ids: AMi-Br's part copied under another name and listed."""
    return add_part(st, pq.read_table(st.patch_parts.part_paths()[0]))


def partly_copied_part(st: Store) -> Path:
    """A later part holding 8 of AMi-Br's ids again and 5 new (test) patches: repair keeps the 5."""
    t, other = (pq.read_table(p) for p in st.patch_parts.part_paths()[:2])
    fresh = other.slice(0, 5).set_column(t.column_names.index("patch_id"), "patch_id",
                                         pa.array([f"new-{i}" for i in range(5)], t.schema.field("patch_id").type))
    return add_part(st, pa.concat_tables([t.slice(0, 8), fresh]))


def ids_twice_in_one_part(st: Store) -> Path:
    path = st.patch_parts.part_paths()[1]
    t = pq.read_table(path)
    pq.write_table(pa.concat_tables([t, t.slice(0, 4)]), path)
    doc = manifest(st)
    doc["parts"][1]["rows"] += 4
    doc["parts"][1]["datasets"] = {k: v + 4 for k, v in doc["parts"][1]["datasets"].items()}
    write_manifest(st, doc)
    return path


def count(delta: int):
    def miscounted(st: Store) -> Path:
        doc = manifest(st)
        doc["parts"][1]["rows"] += delta
        write_manifest(st, doc)
        return st.patch_parts.path_of(doc["parts"][1])
    miscounted.__name__ = f"count_{'too_high' if delta > 0 else 'too_low'}"
    return miscounted


def datasets_miscounted(st: Store) -> Path:
    """Rows right, rows per dataset wrong (what an import's --replace reads to find its parts)."""
    doc = manifest(st)
    (name, n), = doc["parts"][0]["datasets"].items()
    doc["parts"][0]["datasets"] = {name: n - 3, "MyLab": 3}
    write_manifest(st, doc)
    return st.patch_parts.path_of(doc["parts"][0])


def missing_part(st: Store) -> Path:
    path = st.patch_parts.part_paths()[2]
    path.unlink()
    return path


def wrong_schema(st: Store) -> Path:
    path = st.patch_parts.part_paths()[2]
    t = pq.read_table(path)
    i = t.column_names.index("y")
    pq.write_table(t.set_column(i, "y", pa.array([str(v) for v in t["y"].to_pylist()])), path)
    return path


def truncated_part(st: Store) -> Path:
    path = st.patch_parts.part_paths()[1]
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def unreadable_manifest_beside_a_copy(st: Store) -> Path:
    """A torn manifest, and a stray copy of a part beside it: the rebuilt manifest lists each id once."""
    first = st.patch_parts.part_paths()[0]
    shutil.copyfile(first, st.patch_parts.dir / "part-29991231T000000000000-stray000.parquet")
    path = st.patch_parts.manifest_path
    path.write_text(path.read_text()[:40])
    return path


DAMAGES = [listed_twice, copied_part, partly_copied_part, ids_twice_in_one_part, count(+5), count(-5),
           datasets_miscounted, missing_part, wrong_schema, truncated_part, unreadable_manifest_beside_a_copy]


def ids_of(st: Store) -> dict[Path, set[str]]:
    return {p: set(pq.read_table(p, columns=["patch_id"])["patch_id"].to_pylist()) for p in st.patch_parts.part_paths()}


def assert_refused(monkeypatch, capsys, st: Store, args: tuple[str, ...]) -> None:
    """``mitoprobe ARGS`` stops with exit 2 and one error line, the one ``store check`` prints for the
    store's one damage (naming its file, and the repair), and changes no byte of the store."""
    (found,) = integrity.errors(integrity.check(st))
    before = files(st.root)
    rc, out = cli(monkeypatch, capsys, st, *args)
    errors = [ln for ln in out.splitlines() if ln.startswith("error:")]
    assert rc == 2 and "Traceback" not in out and len(errors) == 1, (args, out)
    assert errors[0] == f"error: {found.refusal()}", (args, out)
    assert str(found.path) in errors[0] and "mitoprobe store repair --yes" in errors[0], (args, out)
    assert files(st.root) == before, f"{args} changed the store"


@pytest.mark.parametrize("make_damage", DAMAGES, ids=lambda f: f.__name__)
def test_every_writer_refuses_and_repair_finds_a_way_out(st, bench, monkeypatch, capsys, make_damage):
    parts = ids_of(st)
    path = make_damage(st)
    # the patches stored once: every one, the new ones of a partly copied part, less those of a part
    # that is gone or unreadable (nothing can bring those back but an import)
    stored_once = set().union(*parts.values()) | ({f"new-{i}" for i in range(5)} if make_damage is partly_copied_part
                                                 else set())
    if make_damage in (missing_part, wrong_schema, truncated_part):
        stored_once -= parts[path]
    assert [p.path for p in integrity.errors(integrity.check(st))] == [path]
    for args in (("data", "import", str(bench)), ("data", "import", str(bench), "--replace"), EMBED, FUSE):
        assert_refused(monkeypatch, capsys, st, args)
    rc, out = cli(monkeypatch, capsys, st, "store", "repair", "--yes")
    assert rc == 0 and "ok:" in out, out
    assert not integrity.errors(integrity.check(st))
    ids = Store(st.root).patches()["patch_id"]
    assert ids.is_unique and stored_once <= set(ids), stored_once - set(ids)
    rc, out = cli(monkeypatch, capsys, st, *EMBED)
    assert rc == 0, out


@pytest.mark.parametrize("make_damage", DAMAGES, ids=lambda f: f.__name__)
def test_probe_refuses_before_its_first_write(st, monkeypatch, capsys, make_damage):
    make_damage(st)
    assert_refused(monkeypatch, capsys, st, PROBE)


def test_repair_keeps_the_first_copy_and_says_which(st, monkeypatch, capsys):
    first = st.patch_parts.part_paths()[0]
    path = partly_copied_part(st)
    rc, out = cli(monkeypatch, capsys, st, "store", "repair")
    assert rc == 0 and "dry run" in out and f"rewrite part: {path}" in out and f"quarantine: {path}" in out, out
    assert first.name in out and integrity.errors(integrity.check(st))  # a dry run changes nothing
    rc, out = cli(monkeypatch, capsys, st, "store", "repair", "--yes")
    assert rc == 0 and first.exists() and not path.exists(), out
    assert list((st.root / "quarantine").rglob(path.name))  # the copy is set aside, not deleted
    new = [p for p in st.patch_parts.part_paths() if p not in (first,) and "new-0" in
           pq.read_table(p, columns=["patch_id"])["patch_id"].to_pylist()]
    assert len(new) == 1 and pq.read_metadata(new[0]).num_rows == 5


def test_a_miscounted_manifest_keeps_the_part(st, monkeypatch, capsys):
    """Vectors and test sets refer to a miscounted part's patches: the manifest is fixed, the part stays."""
    path = count(+5)(st)
    data = path.read_bytes()
    rc, out = cli(monkeypatch, capsys, st, "store", "repair", "--yes")
    assert rc == 0 and path.read_bytes() == data and "read from the part" in out, out
    assert integrity.check(st) == []
    assert manifest(st)["parts"][1]["rows"] == pq.read_metadata(path).num_rows


def test_the_library_writers_refuse_too(st):
    """Below the CLI: the folds writer, the result append (every probe, fusion, fine-tuning and refit row
    goes through it) and the embedding job on either engine run the same preflight."""
    from mitoprobe import embedder
    from mitoprobe.classifiers import runs as R

    path = listed_twice(st)
    before = files(st.root)
    with pytest.raises(DamagedStoreError, match="listed 2 times"):
        st.write_folds(st.read_folds())
    with pytest.raises(DamagedStoreError, match="listed 2 times"):
        R.append(st, [dict(run_id="r", test_set="t")], [])
    with pytest.raises(DamagedStoreError, match=str(path)):  # the Ray engine too: refused before Ray starts
        embedder.embed(st, MODEL, engine="ray", progress=False)
    assert files(st.root) == before


def test_the_preflight_reads_no_pixels(st, monkeypatch):
    """Footers and the small columns only: a row group is never read whole (that is where the PNGs are)."""
    def no(*a, **k):
        raise AssertionError("the preflight read a whole row group")

    monkeypatch.setattr(pq.ParquetFile, "read_row_group", no)
    integrity.preflight(st, embedding_set=st.features.sets()[0].recipe_id, results=True, folds=True)
    listed_twice(st)
    with pytest.raises(DamagedStoreError):
        integrity.preflight(st)


def test_the_preflight_refuses_a_damaged_embedding_set_before_embed_touches_it(st, monkeypatch, capsys):
    eset = st.features.sets()[0]
    part = eset.parts[0]
    part.write_bytes(part.read_bytes()[:100])
    before = files(st.root)
    rc, out = cli(monkeypatch, capsys, st, *EMBED)
    assert rc == 2 and str(part) in out and "store repair" in out and files(st.root) == before, out
    assert eset.complete_path.is_file()  # COMPLETE untouched


def test_folds_that_no_longer_match_refuse_fuse(st, monkeypatch, capsys):
    folds = st.read_folds()
    st.write_folds(folds.iloc[::-1].reset_index(drop=True))
    before = files(st.root)
    rc, out = cli(monkeypatch, capsys, st, *FUSE)
    assert rc == 2 and str(st.folds_path) in out and "store repair" in out and files(st.root) == before, out


# -- staging leftovers ----------------------------------------------------------------------------
def leftover(st: Store, hours: float, name: str = "part-20260101T000000000000-killed00.parquet") -> Path:
    """A staged patches part of a killed import (``hours`` old)."""
    path = st.patch_parts.dir / f"{TMP_PREFIX}{name}"
    path.write_bytes(st.patch_parts.part_paths()[0].read_bytes())
    t = time.time() - hours * 3600
    os.utime(path, (t, t))
    return path


def test_an_old_leftover_is_listed_with_its_age_and_removed(st, monkeypatch, capsys):
    path = leftover(st, hours=3)
    rc, out = cli(monkeypatch, capsys, st, "store", "check")
    assert rc == 0 and f"warning: {path}" in out and "3.0 h old" in out and "repair --yes" in out, out
    rc, out = cli(monkeypatch, capsys, st, *EMBED)  # a warning is not damage: writers go on
    assert rc == 0, out
    rc, out = cli(monkeypatch, capsys, st, "store", "repair")
    assert rc == 0 and f"would remove: {path}" in out and path.exists(), out
    rc, out = cli(monkeypatch, capsys, st, "store", "repair", "--yes")
    assert rc == 0 and f"done remove: {path}" in out and not path.exists(), out
    assert integrity.check(st) == []


def test_a_young_leftover_is_left_alone_and_said_so(st, monkeypatch, capsys):
    path = leftover(st, hours=0.1)
    rc, out = cli(monkeypatch, capsys, st, "store", "repair", "--yes")
    assert rc == 0 and f"skip: {path}" in out and "may be a running writer's" in out and path.exists(), out


def test_the_staging_of_a_live_import_is_left_alone(st, monkeypatch, capsys):
    """A PartWriter holds its temp file until it commits or aborts: repair (and the import's own sweep)
    leave it, however old it looks."""
    w = PartWriter(st.patch_parts, "AMi-Br")
    w.write(pq.read_table(st.patch_parts.part_paths()[0]))
    tmp = w.close()
    t = time.time() - 5 * 3600
    os.utime(tmp, (t, t))
    try:
        rc, out = cli(monkeypatch, capsys, st, "store", "check")
        assert rc == 0 and f"warning: {tmp}" in out and "held by a running process" in out, out
        rc, out = cli(monkeypatch, capsys, st, "store", "repair", "--yes")
        assert rc == 0 and f"skip: {tmp}" in out and tmp.exists(), out
        assert st.patch_parts.sweep() == 0 and tmp.exists()
    finally:
        w.abort()
    assert not tmp.exists()
    fd = hold(leftover(st, hours=5))  # any held temp, not only a PartWriter's
    try:
        assert "skip" in [a.action for a in integrity.repair(st, dry_run=False)]
    finally:
        let_go(fd)
    assert [a.action for a in integrity.repair(st, dry_run=False)] == ["remove"]


def test_a_leftover_under_a_held_patches_lock_is_left_alone(st, monkeypatch, capsys):
    """Another process holds the patches lock (an import committing): its lock record names it."""
    path = leftover(st, hours=5)
    script = textwrap.dedent(f"""
        import sys, time
        from mitoprobe.store.lock import patches_lock
        with patches_lock({str(st.root)!r}):
            print("held", flush=True)
            sys.stdin.read()
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        rc, out = cli(monkeypatch, capsys, st, "store", "repair", "--yes")
        assert rc == 0 and f"skip: {path}" in out and f"pid {proc.pid}" in out and path.exists(), out
    finally:
        proc.stdin.close()
        proc.wait(timeout=60)
    rc, out = cli(monkeypatch, capsys, st, "store", "repair", "--yes")
    assert rc == 0 and f"done remove: {path}" in out and not path.exists(), out
