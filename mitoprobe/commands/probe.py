"""``mitoprobe probe`` and ``mitoprobe report``: thin over the library (``mitoprobe.open``: ``Workspace.probe``,
``leaderboard``)."""

from __future__ import annotations

from pathlib import Path

import click

import mitoprobe
from mitoprobe.classifiers.heads import heads_help, parse_head_params
from mitoprobe.classifiers.own_heads import parse_grid
from mitoprobe.classifiers.report import compact_board
from mitoprobe.classifiers.robustness import robustness_table
from mitoprobe.classifiers.significance import compare, format_comparison, resolve_families
from mitoprobe.classifiers.protocol import PAPER_TRAIN
from mitoprobe.classifiers.runner import resolve_heads
from mitoprobe.classifiers.verdict import RULE, format_verdict, summary_text
from mitoprobe.display import console, leaderboard_table, print_frame, print_report
from mitoprobe.paper import REPO, SCRIPTS_AT

from .options import STORE_OPTION


@click.command()
@click.option("--model", "-m", required=True, help="Embedding set (recipe name), e.g. handcrafted.")
@click.option("--head", "heads", default="all", show_default=True,
              help=f"{heads_help()}. Your own "
                   "head: MODULE:FACTORY or path/to/heads.py:FACTORY, a callable returning an unfitted scikit-learn "
                   "classifier with predict_proba.")
@click.option("--grid", "grid", multiple=True, metavar="KEY=V1,V2,...",
              help="Your own head's grid, searched on each fold's held-out part (repeatable: the product), e.g. "
                   "C=0.1,1,10. Default: the factory's `grid` attribute, else its defaults.")
@click.option("--pooling", type=click.Choice(["all", "cls", "mean", "both", "vector"]), default="all",
              show_default=True, help="Which stored outputs to use ('all': every output, concatenated).")
@click.option("--tta", is_flag=True, help="Train on every stored view; average each patch's views at test time.")
@click.option("--repeat", is_flag=True, help="Record an identical configuration again (default: skip it).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Base seed of the stochastic heads.")
@click.option("--seeds", default=None, metavar="S1,S2,...",
              help="Run each head once per seed (repeats of one family); the report shows the spread over seeds "
                   "beside the spread over folds. Seeds already recorded are skipped.")
@click.option("--allow-stale", is_flag=True, help="Use vectors made by an older recipe id (logged loudly).")
@click.option("--param", "params", multiple=True, metavar="HEAD.KEY=VALUE",
              help="Set a head's parameter (repeatable), e.g. torch_linear.lr=1e-3; it is fixed, not searched, "
                   "and recorded in the run.")
@click.option("--train-on", default=PAPER_TRAIN, show_default=True, metavar="DATASET",
              help="Train on this dataset's split=train patches (5 slide-grouped folds) instead of the paper's "
                   "AMi-Br training split; recorded in the run (a different family).")
@STORE_OPTION
def probe(model: str, heads: str, grid: tuple[str, ...], pooling: str, tta: bool, repeat: bool, seed: int,
          seeds: str | None, allow_stale: bool, params: tuple[str, ...], train_on: str, store_path: Path | None) -> None:
    """Fit every head x 5 folds on MODEL's stored vectors; score every test set; append to runs.

    The test sets are AMi-Br-test, AtNorM-Br, AtNorM-MD and each imported cohort with labelled
    split=test patches (under its dataset name). Hyper-parameters and thresholds are chosen on each
    fold's held-out slides only; an identical configuration already in the store is skipped unless
    --repeat, except that test sets it has not scored yet (a cohort imported since) are scored by
    its own fold models.

    Example: mitoprobe probe --model handcrafted --head logreg,lgbm --tta
    Example: mitoprobe probe --model resnet18.random --head torch_linear --param torch_linear.lr=1e-3
    Example: mitoprobe probe --model handcrafted --head my_heads.py:make_svm --grid C=0.1,1,10
    """
    head_list = None if heads == "all" else [h.strip() for h in heads.split(",") if h.strip()]
    specs = resolve_heads(head_list, grid=parse_grid(grid))  # own heads imported and checked: no write yet
    head_params = parse_head_params(params, {spec.name: spec for spec in specs})
    try:
        seed_list = [int(x) for x in seeds.split(",") if x.strip()] if seeds else None
    except ValueError:
        raise click.BadParameter(f"{seeds!r}: give comma-separated integers, e.g. 0,1,2", param_hint="--seeds") from None
    ws = mitoprobe.open(store_path)
    new = ws.probe(model, specs, head_params=head_params, pooling=pooling, tta=tta, seed=seed, repeat=repeat,
                   seeds=seed_list, allow_stale=allow_stale, train_on=train_on, progress=True)
    click.echo(f"{new['run_id'].nunique() if len(new) else 0} new runs appended to {ws.store.root / 'results/runs'}"
               + (f" ({len(new)} rows: run x test set)" if len(new) else ""))
    board = ws.leaderboard(model=model, paper=False)
    if len(board):  # the default report's table, for this model's families only
        console(120).print(leaderboard_table(compact_board(board), title=f"{model}: every head, best held-out AUROC "
                                             "first (balanced accuracy, mean ± std over the folds)"))


@click.command()
@click.option("--format", "fmt", type=click.Choice(["table", "markdown", "csv"]), default="table", show_default=True)
@click.option("--model", "-m", default=None, help="Only this model.")
@click.option("--family", default=None, help="Only this family (probe, finetune).")
@click.option("--no-paper", is_flag=True, help="Leave out the paper's published rows.")
@click.option("--wide", is_flag=True,
              help="Every column, one row per family x test set (CIs, AUROC, AUPRC, Brier, κ); the default table is "
                   "one row per family and fits 120 columns. --format csv/markdown always have every column.")
@click.option("--compare", "compare_specs", multiple=True, metavar="MODEL:HEAD",
              help="Instead of the leaderboard: paired bootstrap tests between these run families (repeat, >= 2) "
                   "on the same patches, Holm-adjusted per test set. A family's label (as the report shows it) "
                   "or id works too.")
@click.option("--fold", type=click.IntRange(-1, 4), default=-1, show_default=True,
              help="With --compare: the fold ensemble (-1) or one fold model's predictions.")
@click.option("--robustness", is_flag=True,
              help="Instead of the leaderboard: per embedding set, do the k nearest neighbours share the label "
                   "or the site (dataset)? Robustness index = same label, other site / (that + other label, same site).")
@click.option("--k", "k", type=click.IntRange(1, 500), default=10, show_default=True, help="Neighbours for --robustness.")
@click.option("--paper", "paper", is_flag=True,
              help="Instead of the leaderboard: the verdict table, the paper's published balanced accuracy beside "
                   "ours per model x method x test set (our run with the paper's settings), Δ, Welch's p and "
                   "reproduced / above / below by the stated rule.")
@STORE_OPTION
def report(fmt: str, model: str | None, family: str | None, no_paper: bool, wide: bool, compare_specs: tuple[str, ...],
           fold: int, robustness: bool, k: int, paper: bool, store_path: Path | None) -> None:
    """Print the leaderboard: one row per family (short label), balanced accuracy mean ± std over folds per
    test set, held-out AUROC and Δ vs the paper's best, sorted by held-out AUROC; then the paper's rows.

    \b
    Example: mitoprobe report --wide
    Example: mitoprobe report --format markdown
    Example: mitoprobe report --compare handcrafted:lgbm --compare resnet18.random:logreg
    Example: mitoprobe report --paper
    """
    if paper:
        given = [name for name, on in (("--compare", compare_specs), ("--robustness", robustness),
                                       ("--no-paper", no_paper), ("--wide", wide), ("--model", model),
                                       ("--family", family)) if on]
        if given:
            raise click.UsageError(f"--paper prints the whole verdict table; it does not take {', '.join(given)}")
    ws = mitoprobe.open(store_path, read_only=True)
    st = ws.store
    if paper:
        print_verdict(ws, fmt)
        return
    if robustness:
        table = robustness_table(st, [model] if model else None, k=k)
        if fmt == "csv":
            click.echo(table.to_csv(index=False), nl=False)
        elif fmt == "markdown":
            click.echo(table.to_markdown(index=False, floatfmt=".3f"))
        else:
            print_frame(table, title=f"site robustness: {k} nearest neighbours (cosine, z-scored), site = dataset",
                        floatfmt="{:.3f}")
        return
    if not compare_specs:
        print_report(st, fmt, model, family, with_paper=not no_paper, wide=wide)
        return
    fams = resolve_families(st.results.read("runs"), list(compare_specs))
    table = compare(st, fams, fold=fold)
    if fmt == "csv":
        click.echo(table.to_csv(index=False), nl=False)
    elif fmt == "markdown":
        click.echo(format_comparison(table).to_markdown(index=False, disable_numparse=True))
    else:
        print_frame(format_comparison(table), title="paired bootstrap (same patches), a − b; p Holm-adjusted "
                                                    "per test set and metric")


def print_verdict(ws, fmt: str) -> None:
    """``report --paper``: the verdict table, then (table, markdown) its rule and how many cells have each verdict."""
    table = ws.verdict()
    if fmt == "csv":
        click.echo(table.to_csv(index=False), nl=False)
        return
    if fmt == "markdown":
        click.echo(format_verdict(table).to_markdown(index=False, disable_numparse=True))
    else:
        print_frame(format_verdict(table, compact=True),
                    title="the paper vs ours: balanced accuracy, mean ± std over the fold models (our count in brackets)")
        click.echo(f"paper sources: the notebooks named, in {REPO}@{SCRIPTS_AT}; --format markdown or csv: their full "
                   "paths and AUROC beside balanced accuracy")
    click.echo(f"\nrule: {RULE}\nsummary: {summary_text(table)}")
