"""``mitoprobe fuse``: late fusion of stored run families (thin over ``classifiers.fusion``)."""

from __future__ import annotations

from pathlib import Path

import click

from classifiers.fusion import RULES, fuse, rank_by_heldout
from mitoprobe.display import print_frame
from store import Store

from .options import STORE_OPTION


@click.command("fuse")
@click.option("--member", "members", multiple=True, metavar="MODEL:HEAD",
              help="A family to fuse (repeat, >= 2): MODEL:HEAD (ft-<run>-folds:HEAD pools the fold sets) or a family id.")
@click.option("--rule", type=click.Choice(sorted(RULES)), default="mean", show_default=True,
              help="mean: average the probabilities; stack: logistic regression on out-of-fold probabilities.")
@click.option("--rank", is_flag=True, help="Instead: list the families by fold-mean held-out AUROC (training data only).")
@STORE_OPTION
def fuse_cmd(members: tuple[str, ...], rule: str, rank: bool, store_path: Path | None) -> None:
    """Fuse two or more families from their stored fold predictions (no refit): fold k with fold k, each
    fold's threshold on its fused held-out part, the fold ensemble's on the fused out-of-fold probabilities.

    Example: mitoprobe fuse --member ft-1a2b3c4d:full --member morphology:lgbm
    """
    st = Store(store_path)
    if rank:
        print_frame(rank_by_heldout(st.results.read("runs")).drop(columns=["family_ids"]),
                    title="families by fold-mean held-out AUROC (training data only)", floatfmt="{:.3f}")
        return
    if len(members) < 2:
        raise click.UsageError("name at least two --member families (or pass --rank)")
    rows = fuse(st, list(members), rule=rule)
    if rows is None:
        click.echo("this fusion is already stored (same members, rule and code version)")
        return
    folds = rows[rows["fold"] >= 0].groupby("test_set")["balanced_accuracy"].mean()
    click.echo(f"fused {rows['model'].iloc[0]} ({rule}), family {rows['family_id'].iloc[0][:12]}: held-out AUROC "
               f"{rows.loc[rows['fold'] >= 0, 'val_auroc'].mean():.3f}; balanced accuracy (fold mean) "
               + ", ".join(f"{k} {v:.3f}" for k, v in folds.items()))
