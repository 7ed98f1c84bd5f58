"""``mitoprobe store info|check|repair`` and ``mitoprobe sql``: look inside the store, find damage and
fix it (thin over the library: ``mitoprobe.open`` and ``mitoprobe.store.integrity``)."""

from __future__ import annotations

from pathlib import Path

import click
import duckdb
import pandas as pd

import mitoprobe
from mitoprobe.display import human_bytes, print_frame
from mitoprobe.store import integrity
from mitoprobe.store.errors import DamagedStoreError, StoreError

from .options import STORE_OPTION


@click.group("store")
def store_group() -> None:
    """Inspect the store; check it for damage and repair it."""


@store_group.command("info")
@STORE_OPTION
def info_cmd(store_path: Path | None) -> None:
    """List what is stored: patch counts, embedding sets, result tables, with sizes.

    Example: mitoprobe store info
    """
    info = mitoprobe.open(store_path).store.info()
    click.echo(f"store: {info['root']}")
    if info["patches"] is None:
        click.echo("no patches yet: run `mitoprobe data import`")
    else:
        p = info["patches"]
        print_frame(p["counts"], title=f"patches ({human_bytes(p['bytes'])} in {p['parts']} part(s))")
    if info["embeddings"]:
        df = pd.DataFrame(info["embeddings"])
        df["outputs"] = df["outputs"].map(lambda o: ", ".join(f"{k}:{v}" for k, v in o.items()))
        df["size"] = df.pop("bytes").map(human_bytes)
        print_frame(df, title=f"embedding sets (LanceDB {human_bytes(info['lance_bytes'])})")
    else:
        click.echo("no embedding sets yet: run `mitoprobe embed --model handcrafted`")
    if info["results"]:
        df = pd.DataFrame(info["results"])
        df["size"] = df.pop("bytes").map(human_bytes)
        print_frame(df, title="results")


@store_group.command("check")
@STORE_OPTION
def check_cmd(store_path: Path | None) -> None:
    """Read every stored file and list every problem with its fix (exit 2 if any).

    Checks that every Parquet file opens and matches its schema, each embedding set's recipe.json,
    COMPLETE record, keys (no duplicates, known patches) and LanceDB table, the saved folds, and that
    no result row is stored twice (runs: run_id + test set; predictions: + split + patch id).
    Warnings (an interrupted embedding job, say) are listed but are not damage.

    Example: mitoprobe store check
    """
    st = mitoprobe.open(store_path).store
    problems = integrity.check(st)
    for p in problems:
        click.echo(str(p))
    bad = integrity.errors(problems)
    if bad:
        raise DamagedStoreError(f"{len(bad)} problem(s) in {st.root}; `mitoprobe store repair` shows what it "
                                "would fix, `mitoprobe store repair --yes` fixes it")
    click.echo(f"ok: {integrity.summary(st)}")


@store_group.command("repair")
@STORE_OPTION
@click.option("--yes/--dry-run", "yes", default=False,
              help="--yes takes the actions; --dry-run (the default) only says what they would be.")
def repair_cmd(store_path: Path | None, yes: bool) -> None:
    """Fix what needs no guessing; nothing stored is deleted (taken-out files go to <store>/quarantine/).

    Patches: a part listed twice is listed once; patch ids stored twice keep their first copy (the other goes
    to the quarantine, and the plan says which); a miscounted manifest entry is read again from its part; an
    unreadable part or manifest is quarantined or rebuilt. Result rows stored twice keep one copy (only parts
    holding copies are rewritten); a wrong COMPLETE record is rewritten or removed; LanceDB tables are rebuilt
    from the Parquet parts; folds that no longer match are set aside. Staging leftovers of a killed write
    (.tmp-*) older than an hour and held by no live process are removed. Without --yes it only prints the plan.

    Example: mitoprobe store repair --yes
    """
    st = mitoprobe.open(store_path).store
    actions = integrity.repair(st, dry_run=not yes)
    if not actions:
        click.echo("nothing to repair")
    for a in actions:
        click.echo(("done " if a.done else "would ") + str(a))
    if not yes:
        if actions:
            click.echo("dry run: nothing was changed; run `mitoprobe store repair --yes` to do it")
        return
    after = integrity.check(st)
    for p in after:
        click.echo(str(p))
    left = integrity.errors(after)
    if left:
        raise DamagedStoreError(f"{len(left)} problem(s) remain that repair cannot fix without a decision: each line "
                                "above names its file and the fix to make by hand")
    click.echo(f"ok: {integrity.summary(st)}")


@click.command()
@click.argument("query")
@STORE_OPTION
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "markdown"]), default="table")
@click.option("--max-rows", type=int, default=100, show_default=True)
def sql(query: str, store_path: Path | None, fmt: str, max_rows: int) -> None:
    """Run a read-only DuckDB QUERY over the store's tables and print the result.

    Views: patches, patch_images, folds, embedding_sets, emb_<recipe_id>, runs, predictions.
    Only SELECT, EXPLAIN, DESCRIBE, SHOW and SUMMARIZE run; files outside the store are not reachable.

    Example: mitoprobe sql "select dataset, split, count(*) from patches group by all"
    """
    st = mitoprobe.open(store_path).store
    try:
        df = st.sql(query)
    except duckdb.Error as exc:
        # DuckDB's message spans lines (LINE 1: ... ^); keep the gist on one line and list the views.
        gist = " ".join(ln.strip() for ln in str(exc).split("\nLINE ")[0].splitlines() if ln.strip())
        hint = "" if st.has_patches() else f" (no patches in {st.root}: run `mitoprobe data import` or pass --store)"
        raise StoreError(f"query failed: {gist} | views: {', '.join(st.views())}{hint}") from exc
    if fmt == "csv":
        click.echo(df.to_csv(index=False), nl=False)
    elif fmt == "markdown":
        click.echo(df.head(max_rows).to_markdown(index=False))
    else:
        print_frame(df, max_rows=max_rows)
