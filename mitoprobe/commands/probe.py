"""``mitoprobe probe`` and ``mitoprobe report``: thin over ``classifiers.sweep`` / ``leaderboard``."""

from __future__ import annotations

from pathlib import Path

import click

from classifiers.heads import parse_head_params
from classifiers.report import best_per_test_set, format_board, leaderboard
from classifiers.runner import sweep
from mitoprobe.display import print_frame, print_report
from store import Store

from .options import STORE_OPTION


@click.command()
@click.option("--model", "-m", required=True, help="Embedding set (recipe name), e.g. handcrafted.")
@click.option("--head", "heads", default="all", show_default=True,
              help="'all' (logreg,lgbm,knn,simpleshot,mlp) or a comma list; torch_linear = the paper's probe.")
@click.option("--pooling", type=click.Choice(["all", "cls", "mean", "both", "vector"]), default="all",
              show_default=True, help="Which stored outputs to use ('all': every output, concatenated).")
@click.option("--tta", is_flag=True, help="Train on every stored view; average each patch's views at test time.")
@click.option("--repeat", is_flag=True, help="Record an identical configuration again (default: skip it).")
@click.option("--seed", default=0, show_default=True, help="Base seed of the stochastic heads.")
@click.option("--allow-stale", is_flag=True, help="Use vectors made by an older recipe id (logged loudly).")
@click.option("--param", "params", multiple=True, metavar="HEAD.KEY=VALUE",
              help="Set a head's parameter (repeatable), e.g. torch_linear.lr=1e-3; it is fixed, not searched, "
                   "and recorded in the run.")
@STORE_OPTION
def probe(model: str, heads: str, pooling: str, tta: bool, repeat: bool, seed: int, allow_stale: bool,
          params: tuple[str, ...], store_path: Path | None) -> None:
    """Fit every head x 5 folds on MODEL's stored vectors; score the 3 test sets; append to runs.

    Hyper-parameters and thresholds are chosen on each fold's held-out slides only; an identical
    configuration already in the store is skipped unless --repeat.

    Example: mitoprobe probe --model handcrafted --head logreg,lgbm --tta
    Example: mitoprobe probe --model resnet18.random --head torch_linear --param torch_linear.lr=1e-3
    """
    head_params = parse_head_params(params)
    st = Store(store_path)
    head_list = None if heads == "all" else [h.strip() for h in heads.split(",") if h.strip()]
    new = sweep(st, model, heads=head_list, pooling=pooling, tta=tta, seed=seed, repeat=repeat,
                allow_stale=allow_stale, head_params=head_params)
    click.echo(f"{new['run_id'].nunique() if len(new) else 0} new runs appended to {st.root / 'results/runs'}")
    best = best_per_test_set(leaderboard(st, model=model, with_paper=False))
    if len(best):
        print_frame(format_board(best), title=f"best head per test set for {model}")


@click.command()
@click.option("--format", "fmt", type=click.Choice(["table", "markdown", "csv"]), default="table", show_default=True)
@click.option("--model", "-m", default=None, help="Only this model.")
@click.option("--family", default=None, help="Only this family (probe, finetune).")
@click.option("--no-paper", is_flag=True, help="Leave out the paper's published rows.")
@STORE_OPTION
def report(fmt: str, model: str | None, family: str | None, no_paper: bool, store_path: Path | None) -> None:
    """Print the leaderboard: mean ± std over folds, the fold ensemble with 95% CI, the paper's rows.

    Example: mitoprobe report --format markdown
    """
    print_report(Store(store_path), fmt, model, family, with_paper=not no_paper)
