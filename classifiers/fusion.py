"""Late fusion of run families from their stored predictions: no model is refitted, no test label is read
before scoring.

Why: a CNN's probability and a nucleus-morphology model's make different errors (the CNN sees texture and
colour, which shift between scanners and species; the shape of the figure does not), and their plain mean
beat concatenating the features outside the project (issue 13). Every probe and fine-tuning run stores
its held-out and out-of-fold probabilities (``predictions.split = "val"``), so a fusion is computed from
the tables alone, in seconds, for any two or more families.

The rule, per fold k (fold k of every member with fold k of every other, so a fused fold model is still
trained on the other four folds only):

* ``mean``: the mean of the members' probabilities, on fold k's held-out patches and on every test set;
* ``stack``: a logistic regression on the members' logits, fitted on the out-of-fold probabilities of the
  *other* folds' held-out patches (labels of fold k's training side only), applied to fold k's held-out
  part and to the test sets.

Then fold k's threshold is chosen on the fused held-out probabilities under a threshold rule
(``classifiers.thresholds``: by default ``val_youden``, fold k's own held-out part, as for the members; the
pooled rules read every fold's held-out part), the fold ensemble (``fold = -1``) as for any family
(``scoring.fold_ensemble``, threshold on the fused out-of-fold probabilities), and the test sets are
scored the one way (``scoring.score_test_set``). The fused family is written to ``runs``/``predictions``
(``family = "fusion"``, ``head`` = the rule) with its members' family ids in its config and options.

A member is one family, or the five fine-tuned fold families of one ``ft-<run>-folds`` set (each probed
under its own fold only): together they cover every fold once.

:func:`rank_by_heldout` orders families by held-out scores only (fold-mean held-out AUROC, then held-out
balanced accuracy): how ``mitoprobe run --full`` names its best offline family without a test label.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression

from mitoprobe.paper.naming import pooled_model_name
from mitoprobe.store.errors import ProtocolError
from mitoprobe.store.hashing import canonical_json, config_hash
from mitoprobe.store.integrity import preflight

from . import metrics as M
from . import runs as R
from .labels import check_name, without_name
from .protocol import Protocol, load_protocol
from .scoring import ENSEMBLE_RULE, fold_ensemble, heldout_frame, prediction_frame, score_test_set
from .thresholds import check_rule, ensemble_threshold, fold_thresholds

FAMILY = "fusion"
RULES = {
    "mean": "mean of the members' probabilities (fold k with fold k)",
    "stack": "logistic regression on the members' logits, fitted on the other folds' out-of-fold probabilities",
}
THRESHOLD_RULE = "val_youden"
_EPS = 1e-6


@dataclass(frozen=True)
class Member:
    """One fusion input: a label for people and the family ids whose fold rows it takes."""

    label: str
    family_ids: tuple[str, ...]


def _label(runs: pd.DataFrame, fam_ids) -> str:
    r = runs[runs["family_id"].isin(set(fam_ids))].iloc[0]
    return f"{pooled_model_name(str(r['model']))}:{r['head']}"


def resolve_member(runs: pd.DataFrame, spec: str) -> Member:
    """``MODEL:HEAD`` (the newest family of that model and head; ``ft-<run>-folds:HEAD`` = the newest family
    of each fold set), a family id (or a unique prefix), or several ids joined by ``,``."""
    model, sep, head = spec.rpartition(":")
    if sep and model:
        hits = runs[(runs["model"].map(pooled_model_name) == model) & (runs["head"] == head)]
        if hits.empty:
            raise ProtocolError(f"fusion member {spec!r}: no runs of model {model!r} with head {head!r}; "
                                "`mitoprobe report` lists them")
        newest = hits.sort_values("created_at").groupby("model")["family_id"].last()  # one per fold set
        return Member(spec, tuple(sorted(newest)))
    ids = []
    for part in spec.split(","):
        found = sorted({f for f in runs["family_id"].unique() if f.startswith(part.strip())})
        if len(found) != 1:
            raise ProtocolError(f"fusion member {part!r}: {'no' if not found else 'several'} run families match; "
                                "name one as MODEL:HEAD (e.g. morphology:lgbm) or by its family id")
        ids.append(found[0])
    return Member(_label(runs, ids), tuple(sorted(ids)))


def _fold_runs(runs: pd.DataFrame, member: Member, n_folds: int) -> dict[int, str]:
    """fold -> run id of the member's fold model (the newest repeat); every fold exactly once."""
    rows = runs[runs["family_id"].isin(set(member.family_ids)) & (runs["fold"] >= 0)]
    rows = rows.sort_values(["repeat", "created_at"]).drop_duplicates(["family_id", "fold"], keep="last")
    out: dict[int, str] = {}
    for fold, g in rows.groupby("fold"):
        if g["family_id"].nunique() > 1:
            raise ProtocolError(f"fusion member {member.label}: fold {fold} comes from several families")
        out[int(fold)] = str(g["run_id"].iloc[0])
    missing = sorted(set(range(n_folds)) - set(out))
    if missing:
        raise ProtocolError(f"fusion member {member.label} lacks fold(s) {missing}: fuse finished families only")
    return out


@dataclass
class MemberProba:
    """One member's stored probabilities, aligned with the protocol: ``oof`` in training-patch order
    (fold k's held-out rows from fold k's model), ``test[fold][name]`` in each test set's patch order."""

    oof: np.ndarray
    test: dict[int, dict[str, np.ndarray]]


def member_proba(preds: pd.DataFrame, fold_runs: dict[int, str], proto: Protocol, label: str) -> MemberProba:
    train_ids = proto.train["patch_id"].to_numpy()
    oof = np.full(len(train_ids), np.nan)
    test: dict[int, dict[str, np.ndarray]] = {}
    for k, rid in fold_runs.items():
        mine = preds[preds["run_id"] == rid]
        val = mine[mine["split"] == "val"].drop_duplicates("patch_id", keep="last").set_index("patch_id")
        idx = proto.fold_data(k).val_idx
        oof[idx] = val["probability"].reindex(train_ids[idx]).to_numpy(dtype=float)
        test[k] = {}
        for name, ts in proto.tests.items():
            t = mine[(mine["split"] == "test") & (mine["test_set"] == name)].drop_duplicates("patch_id", keep="last")
            test[k][name] = t.set_index("patch_id")["probability"].reindex(ts.patch_ids).to_numpy(dtype=float)
            if np.isnan(test[k][name]).any():
                raise ProtocolError(f"fusion member {label}: fold {k} has no stored {name} probability for "
                                    f"{int(np.isnan(test[k][name]).sum())} patches")
    if np.isnan(oof).any():
        raise ProtocolError(f"fusion member {label}: {int(np.isnan(oof).sum())} training patches lack a stored "
                            "held-out probability (a run from before held-out predictions were stored?)")
    return MemberProba(oof, test)


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, _EPS, 1 - _EPS)
    return np.log(p / (1 - p))


class Combiner:
    """Fold k's fusion of member probabilities (columns) -> one probability; fitted on training rows only."""

    def __init__(self, rule: str, X_fit: np.ndarray | None = None, y_fit: np.ndarray | None = None):
        if rule not in RULES:
            raise ProtocolError(f"unknown fusion rule {rule!r}; choose from {sorted(RULES)}")
        self.rule, self.weights, self.bias = rule, None, 0.0
        if rule == "stack":
            lr = LogisticRegression(C=1.0, class_weight="balanced", max_iter=1000).fit(_logit(X_fit), y_fit)
            self.weights, self.bias = lr.coef_[0].astype(float), float(lr.intercept_[0])

    def __call__(self, P: np.ndarray) -> np.ndarray:
        if self.rule == "mean":
            return P.mean(axis=1)
        return 1.0 / (1.0 + np.exp(-(_logit(P) @ self.weights + self.bias)))


@dataclass
class Fused:
    """What the fusion chose (training data only) and its fused probabilities."""

    thresholds: dict[int, float]
    weights: dict[int, list[float] | None]
    oof: np.ndarray
    test: dict[int, dict[str, np.ndarray]]
    val_auroc: dict[int, float]
    val_balanced_accuracy: dict[int, float]


def fuse_probabilities(members: list[MemberProba], proto: Protocol, rule: str = "mean",
                       threshold_rule: str = THRESHOLD_RULE) -> Fused:
    """The fused probabilities and every choice (stacker weights, thresholds), from training labels only:
    ``proto.tests`` supplies patch order, never labels."""
    y = proto.train["y"].to_numpy().astype(np.int64)
    folds = proto.train["fold"].to_numpy()
    oof_all = np.column_stack([m.oof for m in members])
    out = Fused({}, {}, np.full(len(y), np.nan), {}, {}, {})
    for k in range(proto.n_folds):
        val = folds == k
        fit = ~val  # the other folds' held-out rows: fold k's training side
        comb = Combiner(rule, oof_all[fit], y[fit]) if rule == "stack" else Combiner(rule)
        out.oof[val] = comb(oof_all[val])
        out.weights[k] = None if comb.weights is None else [comb.bias, *comb.weights]
        out.test[k] = {name: comb(np.column_stack([m.test[k][name] for m in members])) for name in proto.tests}
    out.thresholds = fold_thresholds(threshold_rule, y, out.oof, folds)  # after every fold: pooled rules read all
    for k, thr in out.thresholds.items():
        val = folds == k
        out.val_auroc[k] = M.auroc(y[val], out.oof[val])
        out.val_balanced_accuracy[k] = M.balanced_accuracy(y[val], M.predict(out.oof[val], thr))
    return out


def test_sets_of(runs: pd.DataFrame, family_ids) -> list[str]:
    """The test sets every member family scored (taken from the runs, never a fixed list)."""
    sets = None
    for fam in family_ids:
        mine = set(runs.loc[runs["family_id"] == fam, "test_set"].dropna())
        sets = mine if sets is None else sets & mine
    return sorted(sets or ())


def fuse(store, specs: list[str], rule: str = "mean", n_boot: int = M.N_BOOTSTRAP, seed: int = 0,
         protocol: Protocol | None = None, name: str | None = None,
         threshold_rule: str = THRESHOLD_RULE) -> pd.DataFrame | None:
    """Fuse the families named by ``specs`` (two or more) and append the fused family; returns its run rows,
    or None when that exact fusion is already stored. ``name``: the label tables show for it (kept in the
    rows' options, outside the family id; ``classifiers.labels``). ``threshold_rule``: ``thresholds.RULES``
    (it enters the family id, so each rule is its own family)."""
    name = check_name(name)
    if rule not in RULES:
        raise ProtocolError(f"unknown fusion rule {rule!r}; choose from {sorted(RULES)}")
    check_rule(threshold_rule)
    preflight(store, results=True, folds=True)  # a damaged store: refused before anything is read or written
    runs = store.results.read("runs")
    if runs.empty:
        raise ProtocolError("fusion needs stored runs; probe or fine-tune first")
    members = [resolve_member(runs, s) for s in specs]
    if len({m.family_ids for m in members}) < 2:
        raise ProtocolError("fusion needs at least two different members")
    all_ids = [f for m in members for f in m.family_ids]
    proto = protocol or load_protocol(store, test_sets_of(runs, all_ids))
    config = dict(family=FAMILY, rule=rule, rule_text=RULES[rule], threshold_rule=threshold_rule,
                  members=[dict(label=m.label, family_ids=list(m.family_ids)) for m in members],
                  code_version=R.code_version(), test_sets=sorted(proto.tests), n_boot=n_boot)
    fam = R.family_id(config)
    with R.family_lock(store, fam, f"fusion {fam}"):  # "stored yet?" and the append under one writer's lock
        return _fuse(store, runs, members, all_ids, proto, config, fam, rule, n_boot, seed, name)


def _fuse(store, runs: pd.DataFrame, members: list, all_ids: list[str], proto: Protocol, config: dict, fam: str,
          rule: str, n_boot: int, seed: int, name: str | None = None) -> pd.DataFrame | None:
    if R.next_repeat(store, fam) is not None:
        return None
    preds = store.results.read("predictions")
    preds = preds.assign(split=preds["split"].fillna("test")) if "split" in preds else preds.assign(split="test")
    probas = [member_proba(preds, _fold_runs(runs, m, proto.n_folds), proto, m.label) for m in members]
    thr_rule = config["threshold_rule"]
    fused = fuse_probabilities(probas, proto, rule, thr_rule)
    model = f"fusion({', '.join(m.label for m in members)})"
    recipe_id = config_hash({"fusion": sorted(all_ids)})
    options = dict(members=[m.label for m in members], **({"name": name} if name else {}),
                   **({"threshold": thr_rule} if thr_rule != THRESHOLD_RULE else {}))
    base = dict(family_id=fam, family=FAMILY, model=model, recipe_id=recipe_id, head=rule,
                options=canonical_json(options), code_version=config["code_version"], seed=seed, repeat=0,
                threshold_rule=thr_rule, fit_seconds=0.0, predict_seconds=0.0)
    train_ids = proto.train["patch_id"].to_numpy()
    folds = proto.train["fold"].to_numpy()
    rows, frames = [], []
    for k in range(proto.n_folds):
        rid = R.run_id(fam, k, 0)
        cfg = dict(config, fold=k, weights=fused.weights[k])
        frames.append(heldout_frame(rid, train_ids[folds == k], k, fused.oof[folds == k], fused.thresholds[k]))
        for name, ts in proto.tests.items():
            p = fused.test[k][name]
            rows.append(dict(base, run_id=rid, config_json=canonical_json(cfg), fold=k, test_set=name,
                             threshold=fused.thresholds[k], val_auroc=fused.val_auroc[k],
                             val_balanced_accuracy=fused.val_balanced_accuracy[k], n_train=int((folds != k).sum()),
                             **score_test_set(ts, p, fused.thresholds[k], n_boot, seed)))
            frames.append(prediction_frame(rid, ts, k, p, fused.thresholds[k]))
    y = proto.train["y"].to_numpy()
    ens = fold_ensemble(y, fused.oof, {name: [fused.test[k][name] for k in range(proto.n_folds)] for name in proto.tests},
                        threshold=ensemble_threshold(thr_rule, y, fused.oof, folds))
    rid = R.run_id(fam, -1, 0)
    cfg = canonical_json(dict(config, fold=-1, ensemble=ENSEMBLE_RULE))
    for name, ts in proto.tests.items():
        rows.append(dict(base, run_id=rid, config_json=cfg, fold=-1, test_set=name, threshold=ens.threshold,
                         val_auroc=ens.val_auroc, val_balanced_accuracy=ens.val_balanced_accuracy, n_train=ens.n_train,
                         **score_test_set(ts, ens.proba[name], ens.threshold, n_boot, seed)))
        frames.append(prediction_frame(rid, ts, -1, ens.proba[name], ens.threshold))
    frames.append(heldout_frame(rid, train_ids, -1, fused.oof, ens.threshold))
    R.append(store, rows, frames)
    return pd.DataFrame(rows)


def rank_by_heldout(runs: pd.DataFrame) -> pd.DataFrame:
    """Families ordered by fold-mean held-out AUROC, then held-out balanced accuracy: training data only, so
    naming the best is not a test-set choice. As in the report, the newest family per (family, model, head,
    options) counts, and fine-tuned fold sets pool into one ``ft-<run>-folds`` entry; only families with
    every fold are ranked."""
    keys = ["family", "model", "head", "options"]
    runs = runs.assign(options=runs["options"].map(without_name))  # a fusion's --name makes no other family
    last = runs.groupby(keys + ["family_id"], dropna=False)["created_at"].max().reset_index()
    keep = set(last.sort_values("created_at").groupby(keys, dropna=False).tail(1)["family_id"])
    rows = runs[runs["family_id"].isin(keep) & (runs["fold"] >= 0)]
    rows = rows.assign(model=rows["model"].map(pooled_model_name)).drop_duplicates(["family_id", "fold"])
    out = []
    for (family, model, head, options), g in rows.groupby(keys, dropna=False):
        if sorted(g["fold"]) != list(range(int(g["fold"].max()) + 1)):
            continue  # a fold missing, or one fold from two families: not comparable
        out.append(dict(family=family, model=model, head=head, options=options, n_folds=len(g),
                        heldout_auroc=float(g["val_auroc"].mean()),
                        heldout_balanced_accuracy=float(g["val_balanced_accuracy"].mean()),
                        family_ids=",".join(sorted(set(g["family_id"])))))
    df = pd.DataFrame(out, columns=["family", "model", "head", "options", "n_folds", "heldout_auroc",
                                    "heldout_balanced_accuracy", "family_ids"])
    return df.sort_values(["heldout_auroc", "heldout_balanced_accuracy"], ascending=False).reset_index(drop=True)


__all__ = ["FAMILY", "RULES", "Combiner", "Fused", "Member", "MemberProba", "fuse", "fuse_probabilities",
           "member_proba", "rank_by_heldout", "resolve_member", "test_sets_of"]
