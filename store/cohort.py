"""Import a user's own patch collection (a lab's cohort) as one named dataset of the ``patches`` table.

Three layouts, read the same way once listed:

* a manifest CSV, one row per patch: ``path`` (relative to the CSV's folder, inside it), ``label``
  (atypical/normal, AMF/NMF, 1/0, true/false, or empty = unlabelled), optional ``slide``, ``split``
  (train/test, default test), ``x``, ``y`` (the patch centre on the slide); every other column is kept
  as per-patch metadata (a JSON object in the ``metadata`` column);
* a labelled folder ``ROOT/{Atypical,Normal}/*`` (folder names as label values, any case);
* an unlabelled flat folder ``ROOT/*``.

Images may be PNG, JPEG or TIFF of any size (8-bit RGB); they are stored as PNG with their original
size, and each recipe's transform takes them from there. As with the benchmark, every problem is
collected and reported at once (with its row or file and the fix) and nothing is written on error.

Why a separate module from ``store.dataset``: the benchmark import reads published folders whose
shape is declared in ``DatasetSpec``s; a cohort is described by its user, row by row.
"""

from __future__ import annotations

import codecs
import csv
import itertools
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
import pyarrow as pa

from .dataset import ImportScan, Sink, _Problems, check_image, patch_id_for
from .datasets import BENCHMARK, BINARY_LABELS
from .errors import DataError
from .hashing import bytes_sha256
from .progress import progress as progress_bar
from .scanned import ScannedRows
from .schema import SUBTYPE_COLUMNS, VOTE_COLUMNS

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
SPLITS = ("train", "test")
DEFAULT_SPLIT = "test"
MANIFEST_COLUMNS = ("path", "label", "slide", "split", "x", "y")  # the ones with a meaning; others: metadata
_POSITIVE = next(lab for lab, y in BINARY_LABELS.items() if y == 1)  # "Atypical"
_NEGATIVE = next(lab for lab, y in BINARY_LABELS.items() if y == 0)  # "Normal"
LABEL_VALUES = {"atypical": _POSITIVE, "amf": _POSITIVE, "1": _POSITIVE, "true": _POSITIVE,
                "normal": _NEGATIVE, "nmf": _NEGATIVE, "0": _NEGATIVE, "false": _NEGATIVE, "": None}
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
IMAGE_FIX = "replace it with an 8-bit RGB PNG, JPEG or TIFF patch, or remove its row"


@dataclass(frozen=True)
class _Entry:
    """One patch as listed: where it is and what its row says (before the image is read)."""

    where: str  # "manifest.csv row 7" or the file path: how problems name it
    path: Path
    relpath: str  # as stored: posix, relative to the root
    label: str | None
    split: str
    slide: str | None = None
    x: int | None = None
    y: int | None = None
    metadata: str | None = None
    order: int = 0  # row (or sorted file) order: ``train_row`` of a train patch


def check_dataset_name(name: str) -> None:
    """A user dataset's name: a short identifier that is not a benchmark dataset (it is part of every
    patch id and names the dataset's test set)."""
    if not NAME_PATTERN.match(name or ""):
        raise DataError(f"dataset name {name!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a "
                        "letter or digit (e.g. --dataset MyLab-2025)")
    if name in {s.name for s in BENCHMARK} | {s.test_set for s in BENCHMARK}:
        raise DataError(f"dataset name {name!r} is a benchmark dataset; pick another name for your cohort "
                        "(the benchmark itself is imported with `mitoprobe data import` without --dataset)")


def label_of(value: str) -> str | None:
    """The stored label for a manifest cell or label folder name; KeyError when it is not one."""
    return LABEL_VALUES[str(value).strip().lower()]


def _int_cell(value: str) -> int | None:
    v = str(value).strip()
    if not v:
        return None
    f = float(v)
    if not np.isfinite(f) or f != int(f):
        raise ValueError(v)
    return int(f)


def _inside(root: Path, rel: str) -> Path | None:
    """``root / rel`` when it stays inside ``root`` (no absolute path, no ``..`` escape, no symlink out)."""
    if not rel or PurePosixPath(rel).is_absolute() or Path(rel).is_absolute():
        return None
    p = (root / rel).resolve()
    try:
        p.relative_to(root.resolve())
    except ValueError:
        return None
    return p


MANIFEST_DELIMITERS = {",": "comma", ";": "';'", "\t": "tab"}
MANIFEST_SAVE_HINT = "save it as CSV text (UTF-8, comma-separated) with a header"


class _NotText(Exception):
    pass


def _manifest_codec(manifest: Path) -> tuple[str, str | None]:
    """The codec that reads the manifest and, when it is not UTF-8, the encoding assumed: UTF-8 (a BOM is
    dropped), UTF-16 with a BOM (a spreadsheet's "Unicode text"), else Windows-1252 (a spreadsheet's CSV on
    Windows). DataError for bytes that are none of these or hold NUL characters (not text). The file is
    decoded a block at a time (never held whole)."""
    try:
        with open(manifest, "rb") as fh:
            head = fh.read(2)
        if head in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE):
            encodings = [("utf-16", "UTF-16")]
        else:
            encodings = [("utf-8-sig", None), ("cp1252", "Windows-1252")]
        for codec, assumed in encodings:
            decoder = codecs.getincrementaldecoder(codec)()
            try:
                with open(manifest, "rb") as fh:
                    for block in iter(lambda: fh.read(1 << 20), b""):
                        if "\x00" in decoder.decode(block):
                            raise _NotText
                    if "\x00" in decoder.decode(b"", final=True):
                        raise _NotText
            except UnicodeDecodeError:
                continue
            except _NotText:
                break
            return codec, assumed
    except OSError as exc:
        raise DataError(f"{manifest}: cannot be read ({exc.strerror or exc})") from exc
    raise DataError(f"{manifest}: is not a text file (neither UTF-8 nor Windows-1252; a spreadsheet workbook?); "
                    f"{MANIFEST_SAVE_HINT}")


def _manifest_delimiter(header: str) -> str:
    """The header line's delimiter among comma, ';' and tab: the one that makes a 'path' column when
    exactly one does, else ``csv.Sniffer``'s guess, else a comma."""
    def fields(d: str) -> list[str]:
        return [c.strip() for c in next(csv.reader([header], delimiter=d), [])]

    with_path = [d for d in MANIFEST_DELIMITERS if "path" in fields(d) and len(fields(d)) > 1]
    if len(with_path) == 1:
        return with_path[0]
    try:
        return csv.Sniffer().sniff(header, delimiters="".join(MANIFEST_DELIMITERS)).delimiter
    except csv.Error:  # one column, or nothing to tell them apart
        return ","


MANIFEST_CHUNK_ROWS = 4096  # manifest rows parsed at a time


def read_manifest(manifest: Path) -> tuple[Iterator[pd.DataFrame], str | None]:
    """The manifest as strings (header stripped), ``MANIFEST_CHUNK_ROWS`` rows at a time (a 10^5-row manifest is
    never one frame), and a note saying what was assumed when it is not plain comma-separated UTF-8: a
    spreadsheet often saves ';'-separated (a decimal-comma locale), tab-separated or Windows-1252 text.
    DataError for a file that cannot be read as such, whichever chunk finds it."""
    if not manifest.is_file():
        raise DataError(f"{manifest}: manifest not found; pass the path of a CSV with at least a 'path' column")
    codec, encoding = _manifest_codec(manifest)
    with open(manifest, encoding=codec, newline="") as fh:
        header = next(iter(fh.readline().splitlines()), "")
    sep = _manifest_delimiter(header)

    def chunks() -> Iterator[pd.DataFrame]:
        with open(manifest, encoding=codec, newline="") as fh:
            try:
                reader = pd.read_csv(fh, sep=sep, dtype=str, keep_default_na=False, chunksize=MANIFEST_CHUNK_ROWS)
                for df in reader:
                    df.columns = [c.strip() for c in df.columns]
                    yield df
            except Exception as exc:  # pandas raises many types for broken CSVs
                raise DataError(f"{manifest}: cannot be read as CSV ({exc}); {MANIFEST_SAVE_HINT}") from exc

    assumed = [f"{MANIFEST_DELIMITERS[sep]}-separated"] if sep != "," else []
    assumed += [encoding] if encoding else []
    note = f"{manifest}: read as {', '.join(assumed)} (assumed from its header line and bytes)" if assumed else None
    return chunks(), note


def count_manifest_rows(manifest: Path) -> int | None:
    """The manifest's data rows as the csv module counts them (a progress bar's total; blank lines left
    out); None when it cannot tell (the import's own reading then says what is wrong)."""
    try:
        codec, _ = _manifest_codec(manifest)
        with open(manifest, encoding=codec, newline="") as fh:
            sep = _manifest_delimiter(next(iter(fh.readline().splitlines()), ""))
            fh.seek(0)
            return max(sum(1 for r in csv.reader(fh, delimiter=sep) if r) - 1, 0)
    except (DataError, OSError, csv.Error):
        return None


def list_manifest(manifest: Path, problems: _Problems, notes: list[str] | None = None) -> Iterator[_Entry]:
    """The manifest's rows as entries, one at a time; every bad row is a problem naming the row and the fix.
    What was assumed to read it (a ';' or tab delimiter, Windows-1252) is added to ``notes``. Memory: one
    chunk of rows, and every listed path (a path listed twice is a problem)."""
    chunks, note = read_manifest(manifest)
    if note is not None and notes is not None:
        notes.append(note)
    first_chunk = next(chunks)
    cols = list(first_chunk.columns)
    if "path" not in cols:
        raise DataError(f"{manifest}: missing column 'path' (columns: {cols}); the manifest needs one row per patch "
                        f"with its path relative to the CSV, plus optional {list(MANIFEST_COLUMNS[1:])}")
    if len(set(cols)) != len(cols):
        raise DataError(f"{manifest}: duplicate column names {sorted({c for c in cols if cols.count(c) > 1})}; "
                        "rename them")
    if first_chunk.empty:
        raise DataError(f"{manifest}: has a header but no rows; list one patch per row")
    root = manifest.parent
    extra = [c for c in cols if c not in MANIFEST_COLUMNS]
    first: dict[str, int] = {}
    records = (r for df in itertools.chain([first_chunk], chunks) for r in df.to_dict("records"))
    for i, r in enumerate(records):
        where = f"{manifest} row {i + 2}"  # the header is line 1
        rel = r["path"].strip().replace("\\", "/")
        p = _inside(root, rel)
        ok = True
        if not rel:
            problems.add(f"{where}: empty path; give the patch's path relative to {root}")
            continue
        if p is None:
            problems.add(f"{where}: path {rel!r} lies outside the manifest's folder {root}; give paths relative to "
                         "the CSV, inside its folder (move the CSV up, or the images in)")
            continue
        key = str(p)
        if key in first:
            problems.add(f"{where}: path {rel!r} is listed twice (first at row {first[key] + 2}); delete one row")
            continue
        first[key] = i
        try:
            label = label_of(r.get("label", ""))
        except KeyError:
            problems.add(f"{where}: unknown label {r['label']!r}; use atypical/normal, AMF/NMF, 1/0 or leave "
                         "it empty for an unlabelled patch")
            ok = False
        split = (r.get("split", "") or DEFAULT_SPLIT).strip().lower()
        if split not in SPLITS:
            problems.add(f"{where}: split {r['split']!r}; use train or test (empty = {DEFAULT_SPLIT})")
            ok = False
        try:
            x, y = _int_cell(r.get("x", "")), _int_cell(r.get("y", ""))
        except (ValueError, OverflowError):
            problems.add(f"{where}: x/y {[r.get('x', ''), r.get('y', '')]} must be whole numbers (pixels) or empty")
            ok = False
        if not p.is_file():
            problems.add(f"{where}: {p} not found; fix the path (relative to {root}) or delete the row")
            ok = False
        if ok:
            meta = {c: r[c] for c in extra if r[c] != ""}
            yield _Entry(where, p, PurePosixPath(*Path(rel).parts).as_posix(), label, split,
                         (r.get("slide") or "").strip() or None, x, y,
                         json.dumps(meta, sort_keys=True, ensure_ascii=False) if meta else None, i)


def list_folder(root: Path, split: str, problems: _Problems) -> list[_Entry]:
    """A labelled ``ROOT/{Atypical,Normal}/*`` folder, or an unlabelled flat one."""
    if not root.is_dir():
        raise DataError(f"{root}: folder not found; pass a folder of patches (ROOT/Atypical, ROOT/Normal, or "
                        "images directly in ROOT) or --manifest FILE.csv")
    if split not in SPLITS:
        raise DataError(f"--split {split!r}: use train or test")
    visible = sorted(p for p in root.iterdir() if not p.name.startswith("."))
    dirs = [p for p in visible if p.is_dir()]
    files = [p for p in visible if p.is_file()]
    if dirs and files:
        problems.add(f"{root}: holds both label folders {[d.name for d in dirs]} and loose files "
                     f"({files[0].name}, ...); use either ROOT/{{{_POSITIVE},{_NEGATIVE}}}/* or images directly in ROOT")
        return []
    listed: list[tuple[Path, str | None]] = []
    if dirs:
        for d in dirs:
            try:
                label = label_of(d.name)
            except KeyError:
                label = None
            if label is None:
                problems.add(f"{d}: unknown label folder {d.name!r}; only {_POSITIVE} and {_NEGATIVE} (or AMF/NMF) "
                             "are allowed")
                continue
            listed += [(p, label) for p in sorted(d.rglob("*")) if p.is_file() and not p.name.startswith(".")]
    else:
        listed = [(p, None) for p in files]
    entries = []
    for i, (p, label) in enumerate(listed):
        if p.suffix.lower() not in IMAGE_SUFFIXES:
            problems.add(f"{p}: not an image file name (expected {', '.join(IMAGE_SUFFIXES)}); remove it")
            continue
        entries.append(_Entry(str(p), p, p.relative_to(root).as_posix(), label, split, order=i))
    if not entries and not problems.items:
        problems.add(f"{root}: no images found (expected {', '.join(IMAGE_SUFFIXES)} files)")
    return entries


def scan_cohort(dataset: str, *, manifest: str | Path | None = None, folder: str | Path | None = None,
                split: str = DEFAULT_SPLIT, stored: pa.Table | None = None, progress: bool = False,
                sink: Sink | None = None) -> ImportScan:
    """Validate a cohort (``manifest`` or ``folder``) and build its rows of the ``patches`` table.

    ``stored``: the dataset's rows already in the store (``patch_id``, ``width``, ``height``,
    ``content_sha256``; no pixels); a listed file whose bytes are unchanged keeps its stored row's
    facts and is neither decoded again nor handed to ``sink`` (a re-import of a grown folder checks
    and stages the added files only). Every other checked row, PNG included, goes to ``sink``; the
    rows (no PNG) are spooled to a file as they are checked (``store.scanned``), and the notes are
    queries over it. Raises DataError listing every problem; writes nothing."""
    check_dataset_name(dataset)
    if (manifest is None) == (folder is None):
        raise DataError("give exactly one of a manifest CSV (--manifest FILE.csv) or a folder of patches")
    problems = _Problems()
    notes: list[str] = []
    if manifest is not None:
        entries = list_manifest(Path(manifest), problems, notes)
        total = count_manifest_rows(Path(manifest)) if progress else None
    else:
        entries = list_folder(Path(folder), split, problems)
        total = len(entries)
    known = {}
    if stored is not None and stored.num_rows:
        known = dict(zip(stored["patch_id"].to_pylist(),
                         zip(*(stored[c].to_pylist() for c in ("width", "height", "content_sha256")))))
    rows = ScannedRows()
    try:
        for e in progress_bar(entries, desc=f"checking {dataset}", unit="patch", total=total, enabled=progress):
            _scan_entry(dataset, e, known, rows, problems, sink)
        problems.raise_if_any()
        rows.seal()
        return ImportScan(rows, notes + _cohort_notes(dataset, rows))
    except BaseException:
        rows.discard()
        raise


def _scan_entry(dataset: str, e: _Entry, known: dict, rows: ScannedRows, problems: _Problems,
                sink: Sink | None) -> None:
    """Read and check one listed patch: its row to ``rows``, to ``sink`` too when its PNG is new; a bad
    image is a problem."""
    raw = e.path.read_bytes()
    pid = patch_id_for(dataset, e.relpath, raw)
    if pid in known:
        png = None
        width, height, sha = known[pid]
    else:
        try:
            checked = check_image(raw, e.where if e.where.endswith(str(e.path)) else f"{e.where}: {e.path}", IMAGE_FIX)
        except DataError as exc:
            problems.add(str(exc))
            return
        png, width, height, sha = checked.png, checked.width, checked.height, bytes_sha256(checked.png)
    row = dict(
        patch_id=pid, dataset=dataset, split=e.split, label=e.label,
        y=None if e.label is None else BINARY_LABELS[e.label],
        filename=e.path.name, relpath=e.relpath, slide=e.slide, source=None,
        coord_x=e.x, coord_y=e.y, train_row=e.order if e.split == "train" else None, n_experts=0,
        **dict.fromkeys(VOTE_COLUMNS), **dict.fromkeys(SUBTYPE_COLUMNS),
        width=width, height=height, content_sha256=sha, png=png, duplicate_group=None, metadata=e.metadata)
    if sink is not None and png is not None and not problems.items:
        sink(row)
    rows.append(row)


def _cohort_notes(dataset: str, rows: ScannedRows) -> list[str]:
    """Duplicates (flagged in ``duplicate_group``), sizes other than 128x128 and unlabelled patches, from the
    spooled rows."""
    notes = []
    dup = rows.flag_duplicates()
    if dup:
        notes.append(f"{dup} of the {dataset} patches share their pixels with another of them; kept, "
                     "flagged in column duplicate_group")
    sizes = rows.sql("select width, height, count(*) as n from rows group by 1, 2 order by n desc, width, height")
    if not (len(sizes) == 1 and sizes[0][:2] == (128, 128)):
        shown = ", ".join(f"{w}x{h} ({n})" for w, h, n in sizes[:4])
        notes.append(f"{dataset}: patch sizes {shown}; each recipe resizes them its own way, and `handcrafted` "
                     "assumes a mitosis centred at AMi-Br's scale (docs/cohorts.md)")
    unlabelled = rows.sql("select count(*) from rows where label is null")[0][0]
    if unlabelled:
        notes.append(f"{dataset}: {unlabelled} unlabelled patch(es): predicted and searched, never scored")
    return notes
