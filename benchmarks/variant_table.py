"""The offline-accuracy note's variant table from a store: every complete family, ranked on held-out data.

Why: docs/offline-accuracy.md lists every variant tried with its held-out AUROC / balanced accuracy (fold
mean, training data only: what the choices were made on) beside the test sets' fold-mean balanced accuracy
(what the goals are stated in). This prints that table from the ``runs`` table, so it can be rebuilt.

``--held-out-only`` leaves the test columns out: what a candidate's adoption rule is read from, so a
five-fold run can be judged without any test number being looked at (docs/offline-accuracy.md, round 4).

Usage: python -m benchmarks.variant_table --store PATH [--format markdown|csv] [--held-out-only]
"""

from __future__ import annotations

import argparse

import pandas as pd

from mitoprobe.classifiers.fusion import rank_by_heldout
from mitoprobe.store import Store


def variant_table(runs: pd.DataFrame, held_out_only: bool = False) -> pd.DataFrame:
    rows = []
    for _, r in rank_by_heldout(runs).iterrows():
        g = runs[runs["family_id"].isin(set(r["family_ids"].split(","))) & (runs["fold"] >= 0)]
        ba = {} if held_out_only else g.groupby("test_set")["balanced_accuracy"].mean()
        rows.append(dict(family=r["family"], model=r["model"], head=r["head"],
                         heldout_auroc=r["heldout_auroc"], heldout_balanced_accuracy=r["heldout_balanced_accuracy"],
                         **{f"BA {name}": v for name, v in ba.items()}))
    return pd.DataFrame(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", required=True)
    ap.add_argument("--format", choices=("markdown", "csv"), default="markdown")
    ap.add_argument("--held-out-only", action="store_true", help="leave the test sets' columns out")
    a = ap.parse_args()
    table = variant_table(Store(a.store).results.read("runs"), a.held_out_only)
    print(table.to_csv(index=False) if a.format == "csv" else table.to_markdown(index=False, floatfmt=".3f"))


if __name__ == "__main__":
    main()
