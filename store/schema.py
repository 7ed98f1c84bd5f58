"""The schema of every table a store holds, in one place, and the check writers run before writing
(the derived views' files, which are rebuilt rather than migrated, keep theirs in ``store/derived.py``).

Why: the tables are read by DuckDB (``union_by_name`` over many parts), pyarrow, pandas and the
dashboard, often without mitoprobe. A part whose column is ``double`` where the others have
``int64``, or ``null`` because a small import had no values, makes those readers disagree. So every
writer validates against these schemas, and readers take column names from here instead of
repeating them.

The types are the ones the store has always written (strings are ``large_string`` because pandas
3 strings convert to it); changing one (or the layout of the store's files) is a store format change:
bump ``SCHEMA_VERSION`` and add the step from the old format to ``store/migrations.py``.
"""

from __future__ import annotations

import pyarrow as pa

from .errors import StoreError

# The store's format, the one number: written into FORMAT.json and the patches manifest, and the
# highest format this mitoprobe reads (``store/migrations.py`` refuses a newer store, upgrades an older one).
# 1: one patches.parquet; 2: patches/ parts + MANIFEST.json.
SCHEMA_VERSION = 2

_STR = pa.large_string()

# -- metric names (the classifiers compute them; ``runs`` stores one column per name) ------------
METRICS = ("balanced_accuracy", "auroc", "auprc", "sensitivity", "specificity", "f1", "brier", "ece")
CI_METRICS = ("balanced_accuracy", "auroc", "sensitivity", "specificity")  # with a 95% bootstrap CI

# -- patches/part-*.parquet (a format-1 store: one patches.parquet) --------------------------------
VOTE_COLUMNS = tuple(f"expert{k}_atypical" for k in range(1, 6))  # True = voted atypical, null = no vote
SUBTYPE_COLUMNS = ("subtype_expert1", "subtype_expert2")

PATCHES = pa.schema([
    ("patch_id", _STR), ("dataset", _STR), ("split", _STR), ("label", _STR), ("y", pa.int64()),
    ("filename", _STR), ("relpath", _STR), ("slide", _STR), ("source", _STR),
    ("coord_x", pa.int64()), ("coord_y", pa.int64()), ("train_row", pa.int64()), ("n_experts", pa.int64()),
    *((c, pa.bool_()) for c in VOTE_COLUMNS),
    *((c, _STR) for c in SUBTYPE_COLUMNS),
    ("width", pa.int64()), ("height", pa.int64()), ("content_sha256", _STR), ("png", pa.binary()),
    ("duplicate_group", _STR),
    ("metadata", _STR),  # a user manifest's extra columns, as a JSON object (null for the benchmark)
])
PATCH_COLUMNS = tuple(n for n in PATCHES.names if n != "png")  # metadata only: never read the pixels by accident
PATCH_METADATA = pa.schema([f for f in PATCHES if f.name != "png"])
# Columns added after a store format was published: a patches table written before lacks them and is
# still whole (readers treat the column as all-null; the next import writes it).
ADDED_PATCH_COLUMNS = ("metadata",)

# -- folds.parquet -------------------------------------------------------------------------------
FOLDS = pa.schema([("patch_id", _STR), ("train_row", pa.int64()), ("slide", _STR), ("label", _STR),
                   ("y", pa.int64()), ("fold", pa.int64())])
FOLD_COLUMNS = tuple(FOLDS.names)

# -- embeddings/<recipe_id>/part-*.parquet ---------------------------------------------------------
KEY_COLUMNS = ("patch_id", "view")


def embedding_schema(outputs: dict[str, int]) -> pa.Schema:
    """Keys, then one fixed-size float32 vector column per output, in the recipe's order."""
    return pa.schema([("patch_id", pa.string()), ("view", pa.string()),
                      *((name, pa.list_(pa.float32(), int(dim))) for name, dim in outputs.items())])


# -- results/runs, results/predictions ------------------------------------------------------------
KAPPA_COLUMNS = (*(f"kappa_expert{k}" for k in range(1, 6)), "kappa_experts_mean")
RUNS = pa.schema([
    *((c, _STR) for c in ("run_id", "family_id", "family", "model", "recipe_id", "head", "options",
                          "config_json", "code_version")),
    ("seed", pa.int64()), ("fold", pa.int64()), ("test_set", _STR), ("repeat", pa.int64()),
    ("n", pa.int64()), ("n_pos", pa.int64()),
    *((m, pa.float64()) for m in METRICS),
    *((f"{m}_ci_{s}", pa.float64()) for m in CI_METRICS for s in ("low", "high")),
    ("threshold", pa.float64()), ("threshold_rule", _STR), ("val_auroc", pa.float64()),
    ("val_balanced_accuracy", pa.float64()), ("n_train", pa.int64()),
    *((c, pa.float64()) for c in KAPPA_COLUMNS),
    ("fit_seconds", pa.float64()), ("predict_seconds", pa.float64()),
    ("created_at", pa.timestamp("ns", tz="UTC")),
])
RUN_COLUMNS = tuple(RUNS.names)
# ``split``: "test" rows score a test set; "val" rows (``test_set`` = HELDOUT_SET) are the held-out
# probabilities selection saw: fold k's held-out part for fold k, and for the fold ensemble (fold -1)
# the out-of-fold probability of every training patch, what an audit or a stacker may use.
# Parts written before ``split`` existed hold test rows only (read back as null -> "test").
HELDOUT_SET = "held-out"
PREDICTIONS = pa.schema([("run_id", _STR), ("patch_id", _STR), ("fold", pa.int64()), ("test_set", _STR),
                         ("probability", pa.float64()), ("threshold", pa.float64()), ("prediction", pa.int64()),
                         ("split", _STR)])
PREDICTION_COLUMNS = tuple(PREDICTIONS.names)


# -- validation ----------------------------------------------------------------------------------
def _kind(t: pa.DataType) -> str:
    """Coarse type family: a cast within one family can be checked for loss, across families it
    reinterprets values (a string parsed as a number), which a writer must never do silently."""
    checks = (("null", pa.types.is_null), ("number", lambda x: pa.types.is_integer(x) or pa.types.is_floating(x)),
              ("bool", pa.types.is_boolean), ("string", lambda x: pa.types.is_string(x) or pa.types.is_large_string(x)),
              ("binary", lambda x: pa.types.is_binary(x) or pa.types.is_large_binary(x)),
              ("timestamp", pa.types.is_timestamp),
              ("list", lambda x: pa.types.is_list(x) or pa.types.is_large_list(x) or pa.types.is_fixed_size_list(x)))
    return next((name for name, test in checks if test(t)), str(t))


def type_problems(actual: pa.Schema, expected: pa.Schema, *, missing_ok: bool | tuple[str, ...]) -> list[str]:
    """Columns of ``actual`` whose type family differs from ``expected`` (vectors: exact type).
    ``missing_ok``: True, or the names of the columns that may be missing (added in a later version)."""
    out = []
    for f in expected:
        if f.name not in actual.names:
            if missing_ok is not True and f.name not in (missing_ok or ()):
                out.append(f"column {f.name!r} missing")
            continue
        t = actual.field(f.name).type
        exact = _kind(f.type) == "list"
        if t != f.type and (exact or _kind(t) not in ("null", _kind(f.type))):
            out.append(f"column {f.name!r} is {t}, expected {f.type}")
    return out


def validate(table: pa.Table, schema: pa.Schema, where: str, *, fill_missing: bool = False,
             keep_extra: bool = False) -> pa.Table:
    """``table`` with exactly ``schema``'s columns, in its order and types; raise ``StoreError``
    naming ``where`` and every offending column otherwise.

    Casts are safe only: int <-> float where no value changes, null -> anything (pandas gives an
    all-missing column no type), string -> large_string. Never string <-> number, never a lossy cast.
    ``fill_missing`` adds absent columns as nulls and ``keep_extra`` keeps unknown columns after the
    schema's: for append-only tables whose parts are read with ``union_by_name``.
    The pandas metadata of ``table`` is kept, so nullable dtypes (Int64, boolean) read back as written.
    """
    names = table.column_names
    problems = []
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        problems.append(f"duplicate column(s) {dup}")
    missing = [n for n in schema.names if n not in names]
    extra = [n for n in names if n not in schema.names]
    if missing and not fill_missing:
        problems.append(f"missing column(s) {missing}")
    if extra and not keep_extra:
        problems.append(f"unexpected column(s) {extra}")
    columns = []
    for f in schema:
        if f.name not in names or f.name in dup:
            columns.append(pa.nulls(table.num_rows, f.type))
            continue
        col = table[f.name]
        if col.type == f.type:
            columns.append(col)
            continue
        if _kind(col.type) not in ("null", _kind(f.type)):
            problems.append(f"column {f.name!r} is {col.type}, expected {f.type}")
            continue
        try:
            columns.append(col.cast(f.type, safe=True))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
            problems.append(f"column {f.name!r} ({col.type}) does not fit {f.type} without loss: {exc}")
    if problems:
        raise StoreError(f"{where}: refusing to write a table that does not match the store schema: "
                         + "; ".join(problems))
    fields = list(schema)
    if keep_extra:
        columns += [table[n] for n in extra]
        fields += [table.schema.field(n) for n in extra]
    return pa.Table.from_arrays(columns, schema=pa.schema(fields, metadata=table.schema.metadata))
