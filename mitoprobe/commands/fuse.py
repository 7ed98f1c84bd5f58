"""``mitoprobe fuse``: late fusion of stored run families (thin over ``classifiers.fusion``)."""

from __future__ import annotations

from pathlib import Path

import click

import mitoprobe
from mitoprobe.classifiers.fusion import RULES, fuse, rank_by_heldout, resolve_member
from mitoprobe.classifiers.labels import MAX_NAME, family_label, family_labels, label_of
from mitoprobe.classifiers.thresholds import RULES as THRESHOLD_RULES
from mitoprobe.display import print_frame

from .options import STORE_OPTION


@click.command("fuse")
@click.option("--member", "members", multiple=True, metavar="MODEL:HEAD",
              help="A family to fuse (repeat, >= 2): MODEL:HEAD (ft-<run>-folds:HEAD pools the fold sets) or a family id.")
@click.option("--rule", type=click.Choice(sorted(RULES)), default="mean", show_default=True,
              help="mean: average the probabilities; stack: logistic regression on out-of-fold probabilities.")
@click.option("--threshold-rule", type=click.Choice(list(THRESHOLD_RULES)), default="val_youden", show_default=True,
              help="How each fold's threshold is chosen on held-out probabilities: " + "; ".join(
                  f"{k}: {v}" for k, v in THRESHOLD_RULES.items()) + ".")
@click.option("--name", default=None, metavar="LABEL",
              help=f"A short label for the fused family in the report, --compare, predict and the dashboard (at most "
                   f"{MAX_NAME} characters; default: fuse:RULE(members)). Kept in the run's options: the family id "
                   "does not change.")
@click.option("--rank", is_flag=True, help="Instead: list the families by fold-mean held-out AUROC (training data only).")
@STORE_OPTION
def fuse_cmd(members: tuple[str, ...], rule: str, threshold_rule: str, name: str | None, rank: bool,
             store_path: Path | None) -> None:
    """Fuse two or more families from their stored fold predictions (no refit): fold k with fold k, each
    fold's threshold on its fused held-out part, the fold ensemble's on the fused out-of-fold probabilities.

    Example: mitoprobe fuse --member ft-1a2b3c4d:full --member morphology:lgbm --name cnn+morphology
    """
    st = mitoprobe.open(store_path).store
    if rank:
        runs = st.results.read("runs")
        ranked = rank_by_heldout(runs)
        ranked.insert(0, "label", [label_of(runs, ids.split(",")[0], model) for ids, model in
                                   zip(ranked["family_ids"], ranked["model"])])
        print_frame(ranked.drop(columns=["family_ids", "model", "options"]),
                    title="families by fold-mean held-out AUROC (training data only)", floatfmt="{:.3f}")
        return
    if len(members) < 2:
        raise click.UsageError("name at least two --member families (or pass --rank)")
    rows = fuse(st, list(members), rule=rule, name=name, threshold_rule=threshold_rule)
    if rows is None:
        click.echo("this fusion is already stored (same members, rule and code version)"
                   + _stored_as(st, members, rule, name))
        return
    folds = rows[rows["fold"] >= 0].groupby("test_set")["balanced_accuracy"].mean()
    click.echo(f"fused {family_label(rows.iloc[0])} ({rule}), family {rows['family_id'].iloc[0][:12]}: held-out AUROC "
               f"{rows.loc[rows['fold'] >= 0, 'val_auroc'].mean():.3f}; balanced accuracy (fold mean) "
               + ", ".join(f"{k} {v:.3f}" for k, v in folds.items()))


def _stored_as(st, members: tuple[str, ...], rule: str, name: str | None) -> str:
    """' as LABEL' of the stored fusion of these members (and a note when --name asked for another)."""
    runs = st.results.read("runs")
    model = "fusion(" + ", ".join(resolve_member(runs, m).label for m in members) + ")"
    same = runs[(runs["family"] == "fusion") & (runs["model"] == model) & (runs["head"] == rule)]
    if same.empty:
        return ""
    fid = same.sort_values("created_at")["family_id"].iloc[-1]
    label = family_labels(runs)[fid]
    note = f"; --name names a new fusion only, so it stays {label!r}" if name and name.strip() != label else ""
    return f" as {label!r}" + note
