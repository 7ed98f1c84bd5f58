"""The ``mitoprobe`` command: a thin root group that loads each command module (``mitoprobe.commands``)
lazily, so ``mitoprobe --help`` is instant and never imports torch.

Errors: every :class:`mitoprobe.store.errors.MitoprobeError` (bad data, a damaged or incomplete store, an unknown
recipe, unavailable weights, a request the protocol forbids, ...) prints one ``error:`` line and exits
2; with ``-v``, the exception it was raised from (e.g. your own head's, ``HeadError``) is printed first,
traceback and all. Anything else is a bug and keeps its traceback."""

from __future__ import annotations

import importlib
import logging
import sys
import traceback

import click

from mitoprobe.store.errors import MitoprobeError

# name -> ("module:attribute", one-line purpose shown by --help without importing the module)
COMMANDS: dict[str, tuple[str, str]] = {
    "data": ("mitoprobe.commands.data:data",
             "Import the AMi-Br benchmark or your own cohort (manifest / folder) into the store."),
    "store": ("mitoprobe.commands.store:store_group",
              "Inspect the store (info), check its integrity (check) and repair what needs no guessing (repair)."),
    "sql": ("mitoprobe.commands.store:sql", "Run a DuckDB query over patches, embeddings, runs and predictions."),
    "embed": ("mitoprobe.commands.embed:embed",
              "Embed every patch with one model (incremental, resumable; --list shows recipes)."),
    "finetune": ("mitoprobe.commands.finetune:finetune_cmd",
                 "LoRA / full fine-tuning per fold under the paper's protocol (resumable)."),
    "fuse": ("mitoprobe.commands.fuse:fuse_cmd", "Late fusion of stored run families (no refit; held-out thresholds)."),
    "dashboard": ("mitoprobe.commands.dashboard:dashboard_cmd", "Open the results dashboard (Streamlit, localhost)."),
    "paper": ("mitoprobe.commands.paper:paper_group",
              "Reproduce the paper's comparison: a resumable plan of every job (plan, run; --engine ray)."),
    "predict": ("mitoprobe.commands.predict:predict_cmd",
                "P(atypical) and the decision for every patch of a dataset, from a probe family's fold ensemble."),
    "probe": ("mitoprobe.commands.probe:probe",
              "Fit every head x 5 folds on a model's vectors; score the test sets (yours included)."),
    "report": ("mitoprobe.commands.probe:report", "Print the leaderboard, one row per family, with the paper's rows."),
    "search": ("mitoprobe.commands.predict:search_cmd",
               "The k nearest labelled reference mitoses (AMi-Br) of every patch of a dataset."),
    "run": ("mitoprobe.commands.run:run", "The main job: import, embed (offline defaults), probe, report."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attr = COMMANDS[name][0].split(":")
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][1]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mitoprobe")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def cli(verbose: int) -> None:
    """mitoprobe: benchmark foundation models and heads for atypical vs normal mitoses.

    The store lives in ./mitoprobe-store or $MITOPROBE_STORE (every command takes --store).

    Example: mitoprobe run
    """
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    _VERBOSE[0] = verbose


_VERBOSE = [0]  # this invocation's -v count (``main`` reads it after the command has failed)


def main() -> None:
    _VERBOSE[0] = 0
    try:
        cli.main(standalone_mode=False)
    except MitoprobeError as exc:
        if _VERBOSE[0] and exc.__cause__ is not None:  # e.g. your own head's exception, behind its one line
            traceback.print_exception(exc.__cause__, file=sys.stderr)
        click.secho(f"error: {exc}", fg="red", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
