"""Import the public AMi-Br_Benchmark layout into one ``patches`` table.

Why PNG bytes inside the table (not paths): the embedder, the fine-tuning job and the dashboard all
read pixels from the store, so a store is self-contained (copy one folder to a GPU box and go) and
an image can never silently change under a stored vector. Parquet is columnar, so metadata queries
never read the ``png`` column; the whole table is ~210 MB for the 6,573 patches.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from .errors import DataError
from .hashing import bytes_sha256
from .progress import progress as progress_bar

log = logging.getLogger(__name__)

DATASETS = ("AMi-Br", "AtNorM-Br", "AtNorM-MD")
LABELS = ("Atypical", "Normal")
POSITIVE_LABEL = "Atypical"
PATCH_SIZE = (128, 128)
TRAIN_CSV = "amibr_train_split.csv"
MD_VOTES_CSV = "AtNorM-MD_expert_votes.csv"

TRAIN_CSV_COLUMNS = ("slide", "dataset_uid", "final_label")
AMIBR_CSV_COLUMNS = ("slide", "dataset", "uid", "x", "y", "expert1_label", "expert2_label",
                     "expert1_atypical", "expert2_atypical", "expert3_atypical", "majority_atypical")
MD_CSV_COLUMNS = ("Filename", "Expert_1", "Expert_2", "Expert_3", "Expert_4", "Expert_5", "Majority")
MAX_EXPERTS = 5
MAX_REPORTED_PROBLEMS = 20
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass
class ImportScan:
    """What a scan found: the table to store and human-readable notes (conversions, duplicates)."""

    patches: pd.DataFrame
    notes: list[str] = field(default_factory=list)


class _Problems:
    """Collect every bad-input problem, then raise them together (users fix all in one go)."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, msg: str) -> None:
        self.items.append(msg)

    def raise_if_any(self) -> None:
        if not self.items:
            return
        shown = self.items[:MAX_REPORTED_PROBLEMS]
        more = len(self.items) - len(shown)
        text = "\n".join(f"  - {m}" for m in shown)
        if more:
            text += f"\n  ... and {more} more"
        raise DataError(f"{len(self.items)} problem(s) in the input; nothing was imported, the store is unchanged:\n{text}")


def patch_id_for(dataset: str, filename: str, png: bytes) -> str:
    """Stable id derived from the image bytes and where the patch sits in the benchmark.

    The published AtNorM-Br has pixel-identical patches under different file names (some with
    different labels), so content alone cannot be the key; dataset + file name + content is.
    """
    return bytes_sha256(f"{dataset}/{filename}\0".encode() + png)[:16]


def _check_png(path: Path, data: bytes, problems: _Problems, notes: list[str]) -> bytes | None:
    """Validate one patch; return RGB PNG bytes (converted when that is lossless) or None."""
    fix = "replace it with a 128x128 8-bit RGB PNG or remove it (and its CSV row)"
    if len(data) == 0:
        problems.add(f"{path}: empty file (0 bytes); {fix}")
        return None
    if data[:8] == PNG_SIGNATURE and len(data) >= 26 and data[12:16] == b"IHDR" and data[24] == 16:
        # Pillow silently drops 16-bit RGB to 8 bits on open; refuse rather than guess the scaling.
        problems.add(f"{path}: 16-bit per channel PNG, expected 8-bit RGB; {fix}")
        return None
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt = img.format
            img.load()
            mode, size = img.mode, img.size
            if fmt != "PNG":
                problems.add(f"{path}: is a {fmt} image, not a PNG; {fix}")
                return None
            if size != PATCH_SIZE:
                problems.add(f"{path}: is {size[0]}x{size[1]} pixels, expected 128x128; {fix}")
                return None
            if mode == "RGB":
                return data
            if mode == "RGBA":
                alpha = np.asarray(img.getchannel("A"))
                if alpha.min() == 255:
                    notes.append(f"{path}: RGBA with fully opaque alpha, converted to RGB")
                    return _encode_png(img.convert("RGB"))
                problems.add(f"{path}: RGBA with transparent pixels (cannot convert safely); {fix}")
                return None
            if mode == "P" and "transparency" not in img.info:
                notes.append(f"{path}: palette PNG, converted to RGB")
                return _encode_png(img.convert("RGB"))
            kind = {"L": "grayscale", "LA": "grayscale+alpha", "I": "16/32-bit grayscale",
                    "I;16": "16-bit grayscale", "I;16B": "16-bit grayscale", "1": "1-bit"}.get(mode, mode)
            if mode.startswith("I") or mode == "1" or mode.startswith("L"):
                problems.add(f"{path}: {kind} image (mode {mode}), expected 8-bit RGB H&E; {fix}")
            else:
                problems.add(f"{path}: unsupported pixel mode {mode}; {fix}")
            return None
    except UnidentifiedImageError:
        problems.add(f"{path}: not an image file; {fix}")
    except (OSError, SyntaxError, ValueError) as exc:
        problems.add(f"{path}: truncated or corrupt PNG ({exc}); {fix}")
    return None


def _encode_png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _read_csv(path: Path, required: tuple[str, ...], problems: _Problems) -> pd.DataFrame | None:
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as exc:  # pandas raises many types for broken CSVs
        problems.add(f"{path}: cannot be read as CSV ({exc}); restore the published file")
        return None
    missing = [c for c in required if c not in df.columns]
    if missing:
        problems.add(f"{path}: missing column(s) {missing}; expected at least {list(required)} "
                     "(restore the published header)")
        return None
    return df


def _as_bool(value: str) -> bool | None:
    v = str(value).strip().lower()
    if v in ("true", "1", "yes", "atypical"):
        return True
    if v in ("false", "0", "no", "normal"):
        return False
    return None


def _check_label(path: Path, row: int, value: str, problems: _Problems) -> None:
    if value not in LABELS:
        problems.add(f"{path} row {row + 2}: unknown label {value!r}; use one of {list(LABELS)}")


def _scan_folders(data_dir: Path, problems: _Problems) -> dict[str, dict[str, tuple[str, Path]]]:
    """{dataset: {filename: (label, path)}} from ``<dataset>/<label>/*.png``."""
    found: dict[str, dict[str, tuple[str, Path]]] = {}
    for ds in DATASETS:
        ds_dir = data_dir / ds
        if not ds_dir.is_dir():
            problems.add(f"{ds_dir}: folder missing; expected {ds}/Atypical and {ds}/Normal with PNG patches")
            continue
        extra = sorted(p.name for p in ds_dir.iterdir() if p.is_dir() and p.name not in LABELS)
        if extra:
            problems.add(f"{ds_dir}: unknown label folder(s) {extra}; only {list(LABELS)} are allowed")
        files: dict[str, tuple[str, Path]] = {}
        for label in LABELS:
            lab_dir = ds_dir / label
            if not lab_dir.is_dir():
                problems.add(f"{lab_dir}: folder missing; create it with the {label} patches of {ds}")
                continue
            pngs = sorted(p for p in lab_dir.iterdir() if p.is_file() and not p.name.startswith("."))
            if not pngs:
                problems.add(f"{lab_dir}: folder is empty; expected the {label} PNG patches of {ds}")
            for p in pngs:
                if p.name in files:
                    problems.add(f"{p}: the same patch is also in {files[p.name][1]} (two different labels); keep one")
                    continue
                files[p.name] = (label, p)
        found[ds] = files
    return found


def scan_benchmark(data_dir: str | Path, amibr_csv: str | Path | None = None,
                   progress: bool = False) -> ImportScan:
    """Validate the benchmark folder and build the ``patches`` table; raise DataError on any problem."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"{data_dir}: dataset folder not found; pass the path to AMi-Br_Benchmark "
                        f"(mitoprobe data import PATH) or set $MITOPROBE_DATA; nothing was imported, the store is unchanged")
    problems = _Problems()
    notes: list[str] = []
    folders = _scan_folders(data_dir, problems)

    train_path = data_dir / TRAIN_CSV
    train = _read_csv(train_path, TRAIN_CSV_COLUMNS, problems) if train_path.is_file() else None
    if train is None and not train_path.is_file():
        problems.add(f"{train_path}: missing; it defines the AMi-Br train/test split (restore it from the published benchmark)")
    md_path = data_dir / MD_VOTES_CSV
    md = _read_csv(md_path, MD_CSV_COLUMNS, problems) if md_path.is_file() else None
    if md is None and not md_path.is_file():
        problems.add(f"{md_path}: missing; it holds the AtNorM-MD expert votes (restore it from the published benchmark)")
    amibr = None
    if amibr_csv is not None:
        amibr_csv = Path(amibr_csv)
        if not amibr_csv.is_file():
            problems.add(f"{amibr_csv}: AMI-BR.csv not found")
        else:
            amibr = _read_csv(amibr_csv, AMIBR_CSV_COLUMNS, problems)
    problems.raise_if_any()

    amibr_files = folders.get("AMi-Br", {})
    md_files = folders.get("AtNorM-MD", {})
    train_rows: dict[str, int] = {}
    train_slide: dict[str, str] = {}
    for i, r in train.iterrows():
        fn, lab = r["dataset_uid"], r["final_label"]
        _check_label(train_path, i, lab, problems)
        if fn in train_rows:
            problems.add(f"{train_path} row {i + 2}: {fn} listed twice (first at row {train_rows[fn] + 2}); delete one row")
            continue
        train_rows[fn] = i
        train_slide[fn] = r["slide"]
        if fn not in amibr_files:
            problems.add(f"{train_path} row {i + 2}: {fn} is listed but absent from {data_dir / 'AMi-Br'}/{{Atypical,Normal}}; "
                         "restore the file or delete the row")
        elif lab in LABELS and amibr_files[fn][0] != lab:
            problems.add(f"{train_path} row {i + 2}: {fn} is labelled {lab} but lies in {amibr_files[fn][1].parent}"
                         " (two different labels); fix the CSV or move the file")

    meta: dict[str, dict] = {}
    if amibr is not None:
        for i, r in amibr.iterrows():
            fn = f"{r['dataset']}_{r['uid']}.png"
            votes = [_as_bool(r[f"expert{k}_atypical"]) for k in (1, 2, 3)]
            maj = _as_bool(r["majority_atypical"])
            if None in votes or maj is None:
                problems.add(f"{amibr_csv} row {i + 2}: expert votes must be True/False, got "
                             f"{[r[f'expert{k}_atypical'] for k in (1, 2, 3)] + [r['majority_atypical']]}")
                continue
            if fn in meta:
                problems.add(f"{amibr_csv} row {i + 2}: {fn} listed twice; delete one row")
                continue
            meta[fn] = dict(slide=r["slide"], source=r["dataset"], coord_x=int(float(r["x"])),
                            coord_y=int(float(r["y"])), votes=votes,
                            subtypes=[r["expert1_label"] or None, r["expert2_label"] or None])
            if fn not in amibr_files:
                problems.add(f"{amibr_csv} row {i + 2}: {fn} is listed but absent from {data_dir / 'AMi-Br'}; "
                             "restore the file or delete the row")
            elif (amibr_files[fn][0] == POSITIVE_LABEL) != maj:
                problems.add(f"{amibr_csv} row {i + 2}: {fn} majority_atypical={maj} contradicts its folder "
                             f"{amibr_files[fn][1].parent} (two different labels); fix the CSV or move the file")
        for fn, (_, p) in amibr_files.items():
            if fn not in meta:
                problems.add(f"{p}: present but not listed in {amibr_csv}; add its row or remove the file")

    md_votes: dict[str, list[bool | None]] = {}
    for i, r in md.iterrows():
        fn = r["Filename"]
        for c in MD_CSV_COLUMNS[1:]:
            _check_label(md_path, i, r[c], problems)
        if fn in md_votes:
            problems.add(f"{md_path} row {i + 2}: {fn} listed twice; delete one row")
            continue
        md_votes[fn] = [r[f"Expert_{k}"] == POSITIVE_LABEL for k in range(1, 6)]
        if fn not in md_files:
            problems.add(f"{md_path} row {i + 2}: {fn} is listed but absent from {data_dir / 'AtNorM-MD'}; "
                         "restore the file or delete the row")
        elif r["Majority"] in LABELS and md_files[fn][0] != r["Majority"]:
            problems.add(f"{md_path} row {i + 2}: {fn} majority {r['Majority']} contradicts its folder "
                         f"{md_files[fn][1].parent} (two different labels); fix the CSV or move the file")
    for fn, (_, p) in md_files.items():
        if fn not in md_votes:
            problems.add(f"{p}: present but not listed in {md_path}; add its row or remove the file")
    # Without AMI-BR.csv every AMi-Br patch not in the train CSV is a test patch (nothing to check).
    problems.raise_if_any()

    rows = []
    items = [(ds, fn, lab, p) for ds in DATASETS for fn, (lab, p) in sorted(folders[ds].items())]
    for ds, fn, lab, p in progress_bar(items, desc="checking patches", unit="patch", enabled=progress):
        raw = p.read_bytes()
        png = _check_png(p, raw, problems, notes)
        if png is None:
            continue
        m = meta.get(fn, {}) if ds == "AMi-Br" else {}
        votes: list[bool | None] = [None] * MAX_EXPERTS
        if ds == "AMi-Br" and m:
            votes[:3] = m["votes"]
        elif ds == "AtNorM-MD":
            votes = list(md_votes[fn])
        subtypes = m.get("subtypes", [None, None])
        rows.append(dict(
            patch_id=patch_id_for(ds, fn, raw),
            dataset=ds,
            split=("train" if fn in train_rows else "test") if ds == "AMi-Br" else "test",
            label=lab,
            y=int(lab == POSITIVE_LABEL),
            filename=fn,
            relpath=f"{ds}/{lab}/{fn}",
            slide=train_slide.get(fn, m.get("slide")) if ds == "AMi-Br" else None,
            source=m.get("source") if ds == "AMi-Br" else None,
            coord_x=m.get("coord_x"),
            coord_y=m.get("coord_y"),
            train_row=train_rows.get(fn) if ds == "AMi-Br" else None,
            n_experts=sum(v is not None for v in votes),
            **{f"expert{k + 1}_atypical": votes[k] for k in range(MAX_EXPERTS)},
            subtype_expert1=subtypes[0],
            subtype_expert2=subtypes[1],
            width=PATCH_SIZE[0],
            height=PATCH_SIZE[1],
            content_sha256=bytes_sha256(png),
            png=png,
        ))
    problems.raise_if_any()

    df = pd.DataFrame(rows)
    dup = df["patch_id"].duplicated(keep=False)
    if dup.any():
        raise DataError(f"duplicate patch ids: {df.loc[dup, 'relpath'].tolist()[:10]}")
    shared = df.groupby("content_sha256")["relpath"].transform("size") > 1
    df["duplicate_group"] = np.where(shared, df["content_sha256"].str[:16], None)
    if shared.any():
        groups = df[shared].groupby("duplicate_group")
        conflicting = sum(g["label"].nunique() > 1 for _, g in groups)
        notes.append(f"{int(shared.sum())} patches share their pixels with another patch "
                     f"({len(groups)} groups, {conflicting} with conflicting labels; all in "
                     f"{sorted(df.loc[shared, 'dataset'].unique())}); kept as published, flagged in "
                     "column duplicate_group")
    for col in ("coord_x", "coord_y", "train_row"):
        df[col] = df[col].astype("Int64")
    for k in range(MAX_EXPERTS):
        df[f"expert{k + 1}_atypical"] = df[f"expert{k + 1}_atypical"].astype("boolean")
    return ImportScan(patches=df, notes=notes)


def summarize_counts(patches: pd.DataFrame) -> pd.DataFrame:
    """Patches and atypical counts per dataset/split, the figures the README promises."""
    g = patches.groupby(["dataset", "split"], sort=False)
    out = g.agg(patches=("patch_id", "size"), atypical=("y", "sum")).reset_index()
    out["normal"] = out["patches"] - out["atypical"]
    return out
