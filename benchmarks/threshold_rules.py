"""Round 5's threshold screen: how each threshold rule transfers to held-out slides it was not fitted on.

For the family ``run --full`` names (held-out AUROC, which no threshold changes) and for the fine-tuned CNN
alone, per store (one store per seed), it prints ``classifiers.thresholds.transfer_table`` from the stored
held-out probabilities, then the mean over the stores beside each rule's gain over ``val_youden`` and on
how many stores it was above. It also says which family each store would name by held-out balanced
accuracy instead of AUROC. It reads no test set: every figure is from the training slides' held-out parts.

Usage: python -m benchmarks.threshold_rules --store s0 --store s1 --store s2 [--splits 10]
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

from mitoprobe.classifiers.fusion import rank_by_heldout
from mitoprobe.classifiers.labels import label_of
from mitoprobe.classifiers.protocol import load_protocol
from mitoprobe.classifiers.thresholds import transfer_scores, transfer_table
from mitoprobe.store import Store
from mitoprobe.store.schema import HELDOUT_SET


def held_out(store: Store, runs: pd.DataFrame, family_ids: list[str]) -> pd.DataFrame:
    """patch_id, y, fold, slide, probability: each training patch's probability from the fold model that held
    it out, read from the families' fold rows (one family per fold for a fine-tuned fold set)."""
    mine = runs[runs["family_id"].isin(set(family_ids)) & (runs["fold"] >= 0)].drop_duplicates("run_id")
    preds = store.results.read("predictions", columns=["run_id", "patch_id", "fold", "test_set", "probability"])
    preds = preds[(preds["test_set"] == HELDOUT_SET) & preds["run_id"].isin(set(mine["run_id"]))]
    preds = preds.merge(mine[["run_id", "fold"]], on=["run_id", "fold"])
    train = load_protocol(store, test_sets=[], create=False).train[["patch_id", "y", "fold", "slide"]]
    out = train.merge(preds[["patch_id", "fold", "probability"]], on=["patch_id", "fold"], how="left")
    if out["probability"].isna().any():
        raise SystemExit(f"{store.root}: {int(out['probability'].isna().sum())} training patches have no held-out "
                         f"probability in families {family_ids}")
    return out


def screen(store: Store, n_splits: int) -> dict[str, pd.DataFrame]:
    runs = store.results.read("runs")
    ranked = rank_by_heldout(runs)
    named = ranked.iloc[0]
    cnn = ranked[ranked["family"] == "finetune"]
    by_ba = ranked.sort_values("heldout_balanced_accuracy", ascending=False, kind="stable").iloc[0]
    print(f"\n{store.root}: named (held-out AUROC) {label_of(runs, named['family_ids'].split(',')[0], named['model'])} "
          f"{named['heldout_auroc']:.3f} / {named['heldout_balanced_accuracy']:.3f}; by held-out balanced accuracy "
          f"{label_of(runs, by_ba['family_ids'].split(',')[0], by_ba['model'])} {by_ba['heldout_auroc']:.3f} / "
          f"{by_ba['heldout_balanced_accuracy']:.3f}")
    tables = {}
    for who, row in (("named family", named), *((("CNN alone", cnn.iloc[0]),) if len(cnn) else ())):
        d = held_out(store, runs, row["family_ids"].split(","))
        t = transfer_table(transfer_scores(d["y"], d["probability"], d["fold"], d["slide"], n_splits=n_splits))
        print(f"  {who}:\n" + t.round(4).to_string().replace("\n", "\n    "))
        tables[who] = t
    return tables


def summary(per_store: list[dict[str, pd.DataFrame]]) -> None:
    for who in per_store[0]:
        ba = pd.concat([t[who]["transfer_balanced_accuracy"] for t in per_store], axis=1)
        gain = ba.sub(ba.loc["val_youden"], axis=1)
        out = pd.DataFrame({"mean": ba.mean(axis=1), "seed std": ba.std(axis=1, ddof=1) if ba.shape[1] > 1 else np.nan,
                            "gain over val_youden": gain.mean(axis=1),
                            "stores above val_youden": (gain > 0).sum(axis=1)}).sort_values("mean", ascending=False)
        print(f"\n{who}, over {ba.shape[1]} store(s): transfer balanced accuracy\n" + out.round(4).to_string())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", action="append", required=True, help="a run --full store (repeat: one per seed)")
    ap.add_argument("--splits", type=int, default=10, help="seeded slide halvings of each fold's held-out part")
    a = ap.parse_args()
    summary([screen(Store(s), a.splits) for s in a.store])


if __name__ == "__main__":
    main()
