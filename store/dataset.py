"""Import a benchmark folder (by default the public AMi-Br_Benchmark) into one ``patches`` table.

What each dataset looks like lives in ``store.datasets`` as data (one ``DatasetSpec`` each); this
module reads any tuple of specs the same way: check the folders and CSVs, collect every problem,
then build one row per patch.

Why PNG bytes inside the table (not paths): the embedder, the fine-tuning job and the dashboard all
read pixels from the store, so a store is self-contained (copy one folder to a GPU box and go) and
an image can never silently change under a stored vector. Parquet is columnar, so metadata queries
never read the ``png`` column; the whole table is ~210 MB for the 6,573 patches.
"""

from __future__ import annotations

import io
import logging
import os
import struct
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping

import numpy as np
import pandas as pd
import pyarrow as pa
from PIL import Image, UnidentifiedImageError

from .datasets import AMIBR_CSV, ANNOTATIONS, BENCHMARK, BINARY_LABELS, SPLIT, CsvSpec, DatasetSpec
from . import schema
from .errors import ConfigError, DataError
from .hashing import bytes_sha256
from .progress import progress as progress_bar
from .scanned import ScannedRows
from .schema import SUBTYPE_COLUMNS, VOTE_COLUMNS

log = logging.getLogger(__name__)

DATASETS = tuple(s.name for s in BENCHMARK)
LABELS = tuple(BINARY_LABELS)
POSITIVE_LABEL = next(lab for lab, y in BINARY_LABELS.items() if y == 1)  # "Atypical"
PATCH_SIZE = (128, 128)
MAX_REPORTED_PROBLEMS = 20
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# The largest image (width x height) any path decodes: imported patches, dashboard uploads, the
# embedder's decoder. Checked from the header, before a single pixel is decompressed, so a
# decompression bomb (a tiny file that inflates to gigabytes) is refused instead of exhausting
# memory. $MITOPROBE_MAX_IMAGE_PIXELS overrides it (read at each check).
MAX_IMAGE_PIXELS = 4096 * 4096
MAX_IMAGE_PIXELS_ENV = "MITOPROBE_MAX_IMAGE_PIXELS"
IMPORT_FIX = "replace it with a 128x128 8-bit RGB PNG or remove it (and its CSV row)"


@dataclass
class ImportScan:
    """What a scan found: the rows to store (every column but ``png``, spooled to a file as they were
    checked: ``store.scanned``; the scan hands each checked PNG to its ``sink`` as it goes and keeps
    none) and human-readable notes (conversions, duplicates)."""

    rows: ScannedRows
    notes: list[str] = field(default_factory=list)

    def counts(self) -> pd.DataFrame:
        """``summarize_counts`` of the rows, from the file."""
        return _with_unlabelled(self.rows.counts())


# A scan's sink: called once per checked patch with its row (``png`` included), in scan order; the
# store's import stages the rows it has to write (``store.patch_import.Staging``). None: PNGs are dropped.
Sink = Callable[[dict], None]


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


def max_image_pixels() -> int:
    """The pixel limit now: ``$MITOPROBE_MAX_IMAGE_PIXELS`` when set, else ``MAX_IMAGE_PIXELS``."""
    raw = os.environ.get(MAX_IMAGE_PIXELS_ENV, "").strip()
    if not raw:
        return MAX_IMAGE_PIXELS
    try:
        value = int(raw.replace("_", ""))
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigError(f"${MAX_IMAGE_PIXELS_ENV}={raw!r}: expected a positive whole number of pixels "
                          f"(default {MAX_IMAGE_PIXELS} = 4096 x 4096); unset it or fix it")
    return value


def check_pixel_limit(size: tuple[int, int], name: str, fix: str = IMPORT_FIX) -> None:
    """DataError when a ``(width, height)`` is above the pixel limit (call it before decoding)."""
    limit = max_image_pixels()
    w, h = size
    if w * h > limit:
        raise DataError(f"{name}: is {w}x{h} pixels ({w * h:,}), above the limit of {limit:,} pixels "
                        f"(${MAX_IMAGE_PIXELS_ENV}); refused before decoding; {fix}")


@dataclass(frozen=True)
class CheckedPng:
    """A patch that passed ``check_png``/``check_image``: 8-bit RGB PNG bytes (the input, or its
    lossless conversion), its size, and a note saying what was converted."""

    png: bytes
    note: str | None = None
    width: int = PATCH_SIZE[0]
    height: int = PATCH_SIZE[1]


def _png_header_size(data: bytes) -> tuple[int, int] | None:
    if data[:8] == PNG_SIGNATURE and len(data) >= 24 and data[12:16] == b"IHDR":
        return struct.unpack(">II", data[16:24])
    return None


@contextmanager
def open_image(data: bytes, name: str, fix: str = IMPORT_FIX) -> Iterator[Image.Image]:
    """``Image.open`` (which reads the header only) behind the pixel limit: a PNG's size is checked
    from its IHDR bytes before Pillow sees it, any image's size before a pixel is decoded, and
    Pillow's own decompression-bomb warning/error become the same DataError. Every decoder of
    untrusted bytes (import, uploads, the embedder's decode) opens images through here."""
    header = _png_header_size(data)
    if header is not None:
        check_pixel_limit(header, name, fix)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DataError(f"{name}: refused as a possible decompression bomb ({exc}); {fix}") from None
    with img:
        check_pixel_limit(img.size, name, fix)
        yield img


# Formats a user's own patches may come in (``check_image``); the benchmark's are PNG only.
USER_FORMATS = ("PNG", "JPEG", "TIFF")


def check_png(data: bytes, name: str, fix: str = IMPORT_FIX, size: tuple[int, int] = PATCH_SIZE) -> CheckedPng:
    """Validate one benchmark patch the way the import does, for every caller (import, dashboard
    uploads): a PNG of exactly ``size``, otherwise as ``check_image``."""
    return check_image(data, name, fix, size=size, formats=("PNG",))


def check_image(data: bytes, name: str, fix: str = IMPORT_FIX, size: tuple[int, int] | None = None,
                formats: tuple[str, ...] = USER_FORMATS) -> CheckedPng:
    """Validate one image and return it as 8-bit RGB PNG bytes: one of ``formats``, at most
    ``max_image_pixels()`` (read from the header, before decoding), exactly ``size`` when given
    (any size otherwise; the size is returned), 8-bit RGB (opaque RGBA and palette images are
    converted losslessly; a JPEG or TIFF is stored as the PNG of its decoded pixels, so every stored
    patch is a PNG whatever came in). Raises DataError naming ``name``, what is wrong and ``fix``."""
    if len(data) == 0:
        raise DataError(f"{name}: empty file (0 bytes); {fix}")
    header = _png_header_size(data)
    if header is not None:
        check_pixel_limit(header, name, fix)
        if len(data) >= 26 and data[24] == 16:
            # Pillow silently drops 16-bit RGB to 8 bits on open; refuse rather than guess the scaling.
            raise DataError(f"{name}: 16-bit per channel PNG, expected 8-bit RGB; {fix}")
    try:
        with open_image(data, name, fix) as img:
            return _check_open_image(img, data, name, fix, size, formats)
    except UnidentifiedImageError:
        raise DataError(f"{name}: not an image file (or not a {'/'.join(formats)} image Pillow can read); {fix}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        kind = "PNG" if formats == ("PNG",) else "image"
        raise DataError(f"{name}: truncated or corrupt {kind} ({exc}); {fix}") from None


def _check_open_image(img: Image.Image, data: bytes, name: str, fix: str, size: tuple[int, int] | None,
                      formats: tuple[str, ...]) -> CheckedPng:
    if img.format not in formats:
        wanted = "a PNG" if formats == ("PNG",) else f"one of {'/'.join(formats)}"
        raise DataError(f"{name}: is a {img.format} image, not {wanted}; {fix}")
    if size is not None and img.size != size:
        raise DataError(f"{name}: is {img.size[0]}x{img.size[1]} pixels, expected {size[0]}x{size[1]}; {fix}")
    if getattr(img, "n_frames", 1) > 1:
        raise DataError(f"{name}: holds {img.n_frames} images (pages/frames), expected one patch; {fix}")
    img.load()
    mode = img.mode
    w, h = img.size
    converted = None if img.format == "PNG" else f"{name}: {img.format} stored as the PNG of its decoded pixels"
    if mode == "RGB":
        return CheckedPng(data if converted is None else _encode_png(img), converted, w, h)
    if mode == "RGBA":
        alpha = np.asarray(img.getchannel("A"))
        if alpha.min() == 255:
            return CheckedPng(_encode_png(img.convert("RGB")), f"{name}: RGBA with fully opaque alpha, converted to RGB",
                              w, h)
        raise DataError(f"{name}: RGBA with transparent pixels (cannot convert safely); {fix}")
    if mode == "P" and "transparency" not in img.info:
        return CheckedPng(_encode_png(img.convert("RGB")), f"{name}: palette {img.format}, converted to RGB", w, h)
    kind = {"L": "grayscale", "LA": "grayscale+alpha", "I": "16/32-bit grayscale", "F": "32-bit float",
            "I;16": "16-bit grayscale", "I;16B": "16-bit grayscale", "1": "1-bit", "CMYK": "CMYK",
            "YCbCr": "YCbCr"}.get(mode, mode)
    if mode.startswith("I") or mode == "1" or mode.startswith("L") or mode == "F":
        raise DataError(f"{name}: {kind} image (mode {mode}), expected 8-bit RGB H&E; {fix}")
    raise DataError(f"{name}: unsupported pixel mode {mode} ({kind}), expected 8-bit RGB; {fix}")


def pixels_sha256(png: bytes) -> str:
    """sha256 of an image's decoded 8-bit RGB pixels (and shape): equal for pixel-identical PNGs
    whose bytes differ (another compressor, other metadata, a palette or opaque-RGBA copy)."""
    with open_image(png, "image", "use a 128x128 RGB PNG patch") as img:
        rgb = np.ascontiguousarray(np.asarray(img.convert("RGB"), dtype=np.uint8))
    return bytes_sha256(struct.pack(">II", *rgb.shape[:2]) + rgb.tobytes())


def _check_png(path: Path, data: bytes, problems: _Problems, notes: list[str]) -> bytes | None:
    """``check_png`` for the import: a problem is collected (reported with all others), not raised."""
    try:
        checked = check_png(data, str(path))
    except DataError as exc:
        problems.add(str(exc))
        return None
    if checked.note:
        notes.append(checked.note)
    return checked.png


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


def _as_bool(value: str, spec: DatasetSpec) -> bool | None:
    v = str(value).strip().lower()
    if v in ("true", "1", "yes", spec.positive.lower()):
        return True
    if v in ("false", "0", "no", spec.negative.lower()):
        return False
    return None


def _cell_label(spec: DatasetSpec, csv: CsvSpec, value: str) -> str | None:
    """The label a label or vote cell stands for; None when the cell is not a valid value."""
    if csv.values == "label":
        return value if value in spec.label_folders else None
    b = _as_bool(value, spec)
    return None if b is None else (spec.positive if b else spec.negative)


def _scan_folder(data_dir: Path, spec: DatasetSpec, problems: _Problems) -> dict[str, tuple[str, Path]]:
    """{filename: (label, path)} from ``<folder>/<label>/*.png``."""
    ds_dir = data_dir / spec.folder
    if not ds_dir.is_dir():
        expected = " and ".join(f"{spec.folder}/{lab}" for lab in spec.labels)
        problems.add(f"{ds_dir}: folder missing; expected {expected} with PNG patches")
        return {}
    extra = sorted(p.name for p in ds_dir.iterdir() if p.is_dir() and p.name not in spec.label_folders)
    if extra:
        problems.add(f"{ds_dir}: unknown label folder(s) {extra}; only {list(spec.labels)} are allowed")
    files: dict[str, tuple[str, Path]] = {}
    for label in spec.labels:
        lab_dir = ds_dir / label
        if not lab_dir.is_dir():
            problems.add(f"{lab_dir}: folder missing; create it with the {label} patches of {spec.name}")
            continue
        pngs = sorted(p for p in lab_dir.iterdir() if p.is_file() and not p.name.startswith("."))
        if not pngs:
            problems.add(f"{lab_dir}: folder is empty; expected the {label} PNG patches of {spec.name}")
        for p in pngs:
            if p.name in files:
                problems.add(f"{p}: the same patch is also in {files[p.name][1]} (two different labels); keep one")
                continue
            files[p.name] = (label, p)
    return files


def _csv_path(data_dir: Path, csv: CsvSpec, given: dict[str, Path]) -> Path | None:
    """Required CSVs sit in the benchmark folder; optional ones are read only when passed in."""
    return given.get(csv.file) if csv.optional else data_dir / csv.file


def _read_rows(spec: DatasetSpec, csv: CsvSpec, path: Path, df: pd.DataFrame, data_dir: Path,
               files: dict[str, tuple[str, Path]], problems: _Problems) -> dict[str, dict]:
    """Check one CSV against the patch folders; return what it says about each file name."""
    facts: dict[str, dict] = {}
    first: dict[str, int] = {}
    folders = f"{data_dir / spec.folder}/{{{','.join(spec.labels)}}}"
    for i, r in enumerate(df.to_dict("records")):
        row = i + 2  # the header is line 1
        cells = {}
        for col in (*csv.votes, csv.label):
            if col is None:
                continue
            cells[col] = _cell_label(spec, csv, r[col])
            if cells[col] is None:
                fix = f"unknown label {r[col]!r}; use one of {list(spec.labels)}" if csv.values == "label" \
                    else f"{col} must be True/False, got {r[col]!r}"
                problems.add(f"{path} row {row}: {fix}")
        fn = csv.filename.format(**r)
        if fn in first:
            problems.add(f"{path} row {row}: {fn} listed twice (first at row {first[fn] + 2}); delete one row")
            continue
        first[fn] = i
        label = cells.get(csv.label)
        if fn not in files:
            problems.add(f"{path} row {row}: {fn} is listed but absent from {folders}; "
                         "restore the file or delete the row")
        elif label is not None and label != files[fn][0]:
            problems.add(f"{path} row {row}: {fn} is labelled {label} (column {csv.label}) but lies in "
                         f"{files[fn][1].parent}: the CSV contradicts its folder (two different labels); "
                         "fix the CSV or move the file")
        f: dict = {}
        if csv.role == SPLIT:
            f.update(split=csv.split, train_row=i)
        if csv.slide:
            f["slide"] = r[csv.slide]
        if csv.source:
            f["source"] = r[csv.source]
        if csv.coords:
            try:
                f["coord_x"], f["coord_y"] = (int(float(r[c])) for c in csv.coords)
            except (ValueError, OverflowError):
                problems.add(f"{path} row {row}: coordinates {list(csv.coords)} must be numbers, "
                             f"got {[r[c] for c in csv.coords]}")
        if csv.votes:
            f["votes"] = [None if cells[c] is None else cells[c] == spec.positive for c in csv.votes]
        if csv.subtypes:
            f["subtypes"] = [r[c] or None for c in csv.subtypes]
        facts[fn] = f
    if csv.role == ANNOTATIONS:
        for fn, (_, p) in files.items():
            if fn not in facts:
                problems.add(f"{p}: present but not listed in {path}; add its row or remove the file")
    return facts


def _count_notes(counts: pd.DataFrame, specs: tuple[DatasetSpec, ...]) -> list[str]:
    """One note naming each dataset/split whose counts (``summarize_counts``) differ from the published
    ones (not an error: importing a subset is allowed, but a short download should not go unnoticed)."""
    got_by = {(r.dataset, r.split): (r.patches, r.atypical) for r in counts.itertuples()}
    diffs = []
    for spec in specs:
        for split, (n, pos) in spec.expected_counts.items():
            got = got_by.get((spec.name, split), (0, 0))
            if got != (n, pos):
                diffs.append(f"{spec.name} {split} has {got[0]} patches ({got[1]} {spec.positive.lower()}), "
                             f"published {n} ({pos})")
    if not diffs:
        return []
    return ["counts differ from the published benchmark (fine for a subset, otherwise check the download): "
            + "; ".join(diffs)]


def scan_benchmark(data_dir: str | Path, amibr_csv: str | Path | None = None, progress: bool = False,
                   specs: tuple[DatasetSpec, ...] = BENCHMARK,
                   csv_paths: Mapping[str, str | Path] | None = None, sink: Sink | None = None) -> ImportScan:
    """Validate the benchmark folder and build the ``patches`` table; raise DataError on any problem.

    ``specs`` say which datasets to read (in row order); an optional CSV is read from
    ``csv_paths[file name]`` (``amibr_csv`` is the path of AMI-BR.csv). Each checked row, PNG
    included, goes to ``sink``; the returned rows hold no PNG (memory does not grow with pixels).
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"{data_dir}: dataset folder not found; pass the path to AMi-Br_Benchmark "
                        f"(mitoprobe data import PATH) or set $MITOPROBE_DATA; nothing was imported, the store is unchanged")
    given = {k: Path(v) for k, v in (csv_paths or {}).items()}
    if amibr_csv is not None:
        given[AMIBR_CSV] = Path(amibr_csv)
    problems = _Problems()
    notes: list[str] = []

    # 1. folders and CSVs are there and readable
    folders = {spec.name: _scan_folder(data_dir, spec, problems) for spec in specs}
    tables: list[tuple[DatasetSpec, CsvSpec, Path, pd.DataFrame]] = []
    for spec in specs:
        for csv in spec.csvs:
            path = _csv_path(data_dir, csv, given)
            if path is None:
                continue
            if not path.is_file():
                problems.add(f"{path}: {csv.file} not found" if csv.optional else
                             f"{path}: missing; it {csv.purpose} (restore it from the published benchmark)")
                continue
            df = _read_csv(path, csv.columns, problems)
            if df is not None and df.empty:
                problems.add(f"{path}: has a header but no data rows; it {csv.purpose}"
                             + (f" (empty, every {spec.name} patch would silently become {spec.split})"
                                if csv.role == SPLIT else "")
                             + "; restore the published file")
            elif df is not None:
                tables.append((spec, csv, path, df))
    unused = sorted(set(given) - {c.file for s in specs for c in s.csvs if c.optional})
    for name in unused:
        problems.add(f"{given[name]}: no dataset being imported ({[s.name for s in specs]}) reads {name}")
    problems.raise_if_any()

    # 2. every CSV row agrees with the folders; merge what the CSVs say per patch (first CSV wins)
    facts: dict[str, dict[str, dict]] = {spec.name: {} for spec in specs}
    for spec, csv, path, df in tables:
        for fn, f in _read_rows(spec, csv, path, df, data_dir, folders[spec.name], problems).items():
            merged = facts[spec.name].setdefault(fn, {})
            for k, v in f.items():
                merged.setdefault(k, v)
    problems.raise_if_any()

    # 3. every image is a 128x128 RGB PNG; one row per patch, spooled to a file as it is checked
    rows = ScannedRows()
    try:
        _scan_images(specs, folders, facts, rows, problems, notes, sink, progress)
        problems.raise_if_any()
        rows.seal()
        return ImportScan(rows, notes + _benchmark_notes(rows, specs))
    except BaseException:
        rows.discard()
        raise


def _scan_images(specs: tuple[DatasetSpec, ...], folders: dict[str, dict[str, tuple[str, Path]]],
                 facts: dict[str, dict[str, dict]], rows: ScannedRows, problems: _Problems, notes: list[str],
                 sink: Sink | None, progress: bool) -> None:
    items = [(spec, fn, lab, p) for spec in specs for fn, (lab, p) in sorted(folders[spec.name].items())]
    for spec, fn, lab, p in progress_bar(items, desc="checking patches", unit="patch", enabled=progress):
        raw = p.read_bytes()
        png = _check_png(p, raw, problems, notes)
        if png is None:
            continue
        f = facts[spec.name].get(fn, {})
        votes = [*f.get("votes", ()), *[None] * len(VOTE_COLUMNS)][:len(VOTE_COLUMNS)]  # null = no such expert
        subtypes = [*f.get("subtypes", ()), *[None] * len(SUBTYPE_COLUMNS)][:len(SUBTYPE_COLUMNS)]
        row = dict(
            patch_id=patch_id_for(spec.name, fn, raw),
            dataset=spec.name,
            split=f.get("split", spec.split),
            label=lab,
            y=spec.label_folders[lab],
            filename=fn,
            relpath=f"{spec.folder}/{lab}/{fn}",
            slide=f.get("slide"),
            source=f.get("source"),
            coord_x=f.get("coord_x"),
            coord_y=f.get("coord_y"),
            train_row=f.get("train_row"),
            n_experts=sum(v is not None for v in votes),
            **dict(zip(VOTE_COLUMNS, votes)),
            **dict(zip(SUBTYPE_COLUMNS, subtypes)),
            width=PATCH_SIZE[0],
            height=PATCH_SIZE[1],
            content_sha256=bytes_sha256(png),
            png=png,
            duplicate_group=None,
            metadata=None,
        )
        if sink is not None and not problems.items:
            sink(row)
        rows.append(row)


def _benchmark_notes(rows: ScannedRows, specs: tuple[DatasetSpec, ...]) -> list[str]:
    """Patch ids must be unique (DataError); pixel-identical patches are flagged in ``duplicate_group`` and
    said; counts other than the published ones are said. Queries over the spooled rows."""
    twice = rows.sql("select relpath from rows where patch_id in (select patch_id from rows group by 1 "
                     "having count(*) > 1) order by file_row_number limit 10")
    if twice:
        raise DataError(f"duplicate patch ids: {[r[0] for r in twice]}")
    notes = []
    shared = rows.flag_duplicates()
    if shared:
        (groups, conflicting), = rows.sql(
            "select count(*), count(*) filter (where labels > 1) from (select count(distinct label) as labels "
            "from rows where duplicate_group is not null group by duplicate_group)")
        datasets = sorted(r[0] for r in rows.sql("select distinct dataset from rows where duplicate_group is not null"))
        notes.append(f"{shared} patches share their pixels with another patch "
                     f"({groups} groups, {conflicting} with conflicting labels; all in "
                     f"{datasets}); kept as published, flagged in column duplicate_group")
    return notes + _count_notes(_with_unlabelled(rows.counts()), specs)


def metadata_table(scan: ImportScan, where: str) -> pa.Table:
    """Every scanned row as the store's metadata columns (``schema.PATCHES`` less ``png``), checked: one
    table in memory, for a benchmark-sized scan (the import itself reads the rows a batch at a time)."""
    return schema.validate(scan.rows.table(), schema.PATCH_METADATA, where)


@dataclass(frozen=True)
class PatchDifference:
    """How a new patches table differs from the stored one, by patch id (pixels left out: a patch's
    id already hashes its bytes)."""

    only_new: int  # patches the import adds
    only_old: int  # stored patches the import would drop
    changed: int  # stored patches whose metadata the import would change
    columns: tuple[str, ...]  # the columns that change


def patch_difference(stored: pa.Table, new: pa.Table | ScannedRows) -> PatchDifference:
    """Compared by DuckDB (a full outer join on ``patch_id``), ``new`` read from its file when it is a scan's
    rows: memory is the stored table's, not a copy of both as Python rows."""
    import duckdb

    names = new.column_names if isinstance(new, pa.Table) else schema.PATCH_METADATA.names
    cols = [c for c in names if c in stored.column_names and c != "png"
            and not (c in schema.ADDED_PATCH_COLUMNS and stored[c].null_count == len(stored))]
    both = "o.patch_id is not null and n.patch_id is not null"
    differs = [f'(o."{c}" is distinct from n."{c}")' for c in cols]
    query = (f"select count(*) filter (where o.patch_id is null), count(*) filter (where n.patch_id is null), "
             f"count(*) filter (where {both} and ({' or '.join(differs)})), "
             + ", ".join(f"coalesce(bool_or({both} and {d}), false)" for d in differs)
             + " from old o full outer join new n on o.patch_id = n.patch_id")
    con = duckdb.connect()
    try:
        con.execute("set threads = 1")
        con.register("old", stored.select(cols))
        if isinstance(new, pa.Table):
            con.register("new", new.select(cols))
        else:
            path = str(new.path).replace("'", "''")
            quoted = ", ".join(f'"{c}"' for c in cols)
            con.execute(f"create view new as select {quoted} from read_parquet('{path}')")
        only_new, only_old, changed, *which = con.execute(query).fetchone()
    finally:
        con.close()
    return PatchDifference(only_new, only_old, changed, tuple(sorted(c for c, w in zip(cols, which) if w)))


def describe_difference(stored: pa.Table, new: pa.Table) -> str | None:
    """None when ``new`` holds exactly the ``stored`` patches (by id, every metadata column; the id and
    ``content_sha256`` stand for the pixels), else a short account of what differs (patches only on one
    side, patches whose metadata changed, and in which columns)."""
    d = patch_difference(stored, new)
    if not (d.only_new or d.only_old or d.changed):
        return None
    only_new, only_old, changed, which = d.only_new, d.only_old, d.changed, d.columns
    parts = [f"{only_new} patch(es) only in the data", f"{only_old} only in the store"]
    if changed:
        parts.append(f"{changed} with other {', '.join(which[:6])}")
    return "; ".join(parts)


def difference_from_stored(stored: pa.Table, data_dir: str | Path, amibr_csv: str | Path | None = None,
                           specs: tuple[DatasetSpec, ...] = BENCHMARK, progress: bool = False) -> str | None:
    """Validate ``data_dir`` like an import and compare it with the ``stored`` patch rows (metadata,
    of ``specs``' datasets) without writing anything: None when importing it would change nothing,
    else what differs."""
    scan = scan_benchmark(data_dir, amibr_csv, progress=progress, specs=specs)
    try:
        return describe_difference(stored, metadata_table(scan, "the scanned benchmark"))
    finally:
        scan.rows.discard()


def summarize_counts(patches: pd.DataFrame) -> pd.DataFrame:
    """Patches and atypical / normal / unlabelled counts per dataset/split, the figures the README promises."""
    g = patches.assign(_pos=patches["y"] == 1, _neg=patches["y"] == 0).groupby(["dataset", "split"], sort=False)
    return _with_unlabelled(g.agg(patches=("patch_id", "size"), atypical=("_pos", "sum"),
                                  normal=("_neg", "sum")).reset_index())


def _with_unlabelled(out: pd.DataFrame) -> pd.DataFrame:
    """Counts per dataset/split with an ``unlabelled`` column when some patches are neither."""
    out[["atypical", "normal"]] = out[["atypical", "normal"]].astype("int64")
    unlabelled = out["patches"] - out["atypical"] - out["normal"]
    if unlabelled.any():
        out["unlabelled"] = unlabelled
    return out
