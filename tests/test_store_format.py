"""The store's format (``store/migrations.py``): a new store is stamped; a store (or a patches manifest)
of a newer format is refused by every open and every command with one line, its bytes untouched; an
older store is read as it is and migrated, through the migrations module only, by the first write."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
import pytest
from conftest import make_benchmark, run_cli
from test_store_patch_parts import make_format1

import mitoprobe
from mitoprobe.store import Store, StoreError, StoreFormatError, StoreLockedError, integrity, migrations, schema
from mitoprobe.store.cohort_example import write_example_cohort

NEWER = schema.SCHEMA_VERSION + 1
REFUSAL = f"this store is format {NEWER}, written by"


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file of the store, locks included, by relative path."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def stamp(root: Path) -> dict | None:
    path = migrations.stamp_path(root)
    return json.loads(path.read_text()) if path.is_file() else None


def set_format(path: Path, n: int) -> None:
    doc = json.loads(path.read_text())
    path.write_text(json.dumps(dict(doc, format=n)))


def test_a_new_store_is_stamped_with_the_one_format_number(tiny_store):
    assert stamp(tiny_store.root) == {"format": schema.SCHEMA_VERSION, "mitoprobe": migrations.version()}
    assert json.loads(tiny_store.patch_parts.manifest_path.read_text())["format"] == schema.SCHEMA_VERSION
    assert migrations.format_of(tiny_store.root) == schema.SCHEMA_VERSION == migrations.CURRENT


COMMANDS = [
    ("store", "info"), ("store", "check"), ("store", "repair", "--yes"), ("sql", "select count(*) from patches"),
    ("report",), ("probe", "--model", "handcrafted", "--head", "logreg"),
    ("embed", "--model", "handcrafted", "--num-workers", "0"), ("data", "import", "{bench}"),
]


def assert_refused_everywhere(root: Path, bench: Path, monkeypatch, capsys) -> None:
    """The library's opens and every command refuse the store with one line; its bytes stay as they were."""
    before = snapshot(root)
    for open_ in (Store, mitoprobe.open):
        with pytest.raises(StoreFormatError, match=REFUSAL) as exc:
            open_(root)
        assert "upgrade mitoprobe (pip install -U mitoprobe)" in str(exc.value) and "\n" not in str(exc.value)
    for args in COMMANDS:
        code, out = run_cli(monkeypatch, capsys, *(a.format(bench=bench) for a in args), "--store", str(root))
        assert code == 2, (args, out)
        assert out.startswith("error: ") and REFUSAL in out and len(out.strip().splitlines()) == 1, (args, out)
        assert snapshot(root) == before, args


def test_a_store_stamped_with_a_newer_format_is_refused(tiny_store, tiny_benchmark, monkeypatch, capsys):
    set_format(migrations.stamp_path(tiny_store.root), NEWER)
    assert_refused_everywhere(tiny_store.root, tiny_benchmark, monkeypatch, capsys)


@pytest.mark.parametrize("stamped", [True, False], ids=["stamped", "unstamped"])
def test_a_patches_manifest_of_a_newer_format_is_refused(tiny_store, tiny_benchmark, monkeypatch, capsys, stamped):
    opened = Store(tiny_store.root)  # opened before the change: its reads check the manifest too
    set_format(tiny_store.patch_parts.manifest_path, NEWER)
    if not stamped:
        migrations.stamp_path(tiny_store.root).unlink()
    with pytest.raises(StoreFormatError, match=REFUSAL):
        opened.patches()
    assert_refused_everywhere(tiny_store.root, tiny_benchmark, monkeypatch, capsys)


@pytest.mark.parametrize("first_write", ["embed", "import"])
def test_a_format1_store_reads_as_it_is_and_the_first_write_migrates_it(tiny_store, tmp_path, monkeypatch, capsys,
                                                                         first_write):
    want = tiny_store.patches()
    make_format1(tiny_store)
    root = tiny_store.root
    before = snapshot(root)
    # reads (library, CLI, check) understand it and write nothing
    pd.testing.assert_frame_equal(Store(root).patches(), want)
    assert mitoprobe.open(root).store.sql("select count(*) n from patches")["n"][0] == len(want)
    assert integrity.check(Store(root)) == []
    assert run_cli(monkeypatch, capsys, "store", "info", "--store", str(root))[0] == 0
    assert snapshot(root) == before and migrations.format_of(root) == 1 and stamp(root) is None
    # the first write migrates, through store/migrations.py
    calls = []
    real = migrations.format1_to_2
    monkeypatch.setattr(migrations, "format1_to_2", lambda parts: calls.append(parts.root) or real(parts))
    st = Store(root)
    if first_write == "embed":
        from mitoprobe import embedder

        embedder.embed(st, "handcrafted", progress=False, num_workers=0)
    else:
        assert st.import_cohort("MyLab", manifest=write_example_cohort(tmp_path / "cohort")).written.migrated
    assert calls == [root]
    assert st.patch_parts.entries()[0] == dict(file=migrations.FORMAT1_ENTRY, rows=len(want),
                                               datasets=want["dataset"].value_counts(sort=False).to_dict())
    assert st.patch_parts.legacy_path.read_bytes() == before["patches.parquet"]  # kept in place, not rewritten
    assert stamp(root)["format"] == migrations.format_of(root) == schema.SCHEMA_VERSION
    pd.testing.assert_frame_equal(st.patches().query("dataset != 'MyLab'"), want, check_dtype=False)
    assert integrity.check(st) == []


def test_a_failing_write_leaves_a_format1_store_byte_identical(tiny_store, tmp_path):
    make_format1(tiny_store)
    before = snapshot(tiny_store.root)
    other = make_benchmark(tmp_path / "other", seed=7)
    with pytest.raises(StoreError, match="nothing was changed"):
        Store(tiny_store.root).import_dataset(other, other / "AMI-BR.csv")  # would drop stored patches
    assert snapshot(tiny_store.root) == before


def test_a_migration_that_cannot_run_now_never_fails_the_write(tiny_store, tmp_path, monkeypatch, caplog):
    """Another process holds the patches lock: the write lands, the store stays format 1 (readable),
    and the next write migrates it."""
    make_format1(tiny_store)

    class Held:
        def __enter__(self):
            raise StoreLockedError("the patches table is being written by pid 1")

        def __exit__(self, *exc):
            return False

    with monkeypatch.context() as m:
        m.setattr(migrations, "patches_lock", lambda root: Held())
        with caplog.at_level(logging.WARNING, logger="mitoprobe.store.migrations"):
            Store(tiny_store.root).results.append("runs", pd.DataFrame({"run_id": ["r1"], "test_set": ["t"]}))
    assert "next write tries again" in caplog.text
    assert migrations.format_of(tiny_store.root) == 1 and stamp(tiny_store.root) is None
    Store(tiny_store.root).results.append("runs", pd.DataFrame({"run_id": ["r2"], "test_set": ["t"]}))
    assert migrations.format_of(tiny_store.root) == schema.SCHEMA_VERSION and stamp(tiny_store.root) is not None


def test_an_unstamped_or_damaged_stamp(tiny_store, tmp_path):
    """A store made before stamps is the format its files show, stamped by its next write; an unreadable
    stamp does not block an open, `store check` lists it and `store repair` quarantines it."""
    path = migrations.stamp_path(tiny_store.root)
    path.unlink()
    st = Store(tiny_store.root)
    assert migrations.format_of(st.root) == schema.SCHEMA_VERSION and len(st.patches()) == 36 and not path.exists()
    st.import_cohort("MyLab", manifest=write_example_cohort(tmp_path / "cohort"))
    assert stamp(st.root)["format"] == schema.SCHEMA_VERSION
    path.write_text("{not json")
    (p,) = integrity.check(Store(st.root))
    assert p.kind == "format" and p.path == path and "store repair" in p.fix
    integrity.repair(st, dry_run=False)
    assert not path.exists() and integrity.check(st) == []
