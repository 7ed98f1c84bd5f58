"""The benchmark's datasets as data: one declarative ``DatasetSpec`` per dataset.

A benchmark-style dataset is a folder of ``<label folder>/<file>.png`` patches plus CSVs that say
which split a patch belongs to and what the experts voted. ``store.dataset.scan_benchmark`` reads
any tuple of specs with the same checks, so a new dataset of this shape is one spec here (added to
``BENCHMARK`` when it belongs to the default import), not new code.

Never rename a published ``DatasetSpec.name``: it is part of every patch id.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field

from .schema import SUBTYPE_COLUMNS, VOTE_COLUMNS

BINARY_LABELS = {"Atypical": 1, "Normal": 0}  # label folder -> y

# What a CSV is for (CsvSpec.role):
SPLIT = "split"  # lists the patches of one split (unlisted ones keep the dataset's split); row -> train_row
ANNOTATIONS = "annotations"  # describes every patch of the dataset: a patch without a row is an error


@dataclass(frozen=True)
class CsvSpec:
    """One CSV and what its columns mean. Column fields name CSV columns (None or () = not given)."""

    file: str
    role: str  # SPLIT or ANNOTATIONS
    filename: str  # the patch's file name, as a template over the row's columns: "{Filename}"
    purpose: str  # completes "it ..." in the message when a required CSV is missing
    optional: bool = False  # read only when the caller passes its path (it lives outside the benchmark folder)
    values: str = "label"  # how the label and vote cells are written: "label" (a label folder name) or "bool"
    label: str | None = None  # a label per row, checked against the folder the file lies in
    votes: tuple[str, ...] = ()  # one vote per expert, expert 1 first (True / the positive label = atypical)
    split: str | None = None  # SPLIT role: the split of the listed patches
    slide: str | None = None
    source: str | None = None  # where the patch comes from (e.g. MIDOG21)
    coords: tuple[str, str] | None = None  # x, y
    subtypes: tuple[str, ...] = ()  # one subtype label per expert, expert 1 first

    def __post_init__(self) -> None:
        if self.role not in (SPLIT, ANNOTATIONS):
            raise ValueError(f"{self.file}: role must be {SPLIT!r} or {ANNOTATIONS!r}, not {self.role!r}")
        if (self.role == SPLIT) != (self.split is not None):
            raise ValueError(f"{self.file}: a {SPLIT} CSV names the split it lists (and only it does)")
        if self.values not in ("label", "bool"):
            raise ValueError(f"{self.file}: values must be 'label' or 'bool', not {self.values!r}")
        if len(self.votes) > len(VOTE_COLUMNS) or len(self.subtypes) > len(SUBTYPE_COLUMNS):
            raise ValueError(f"{self.file}: the patches table holds at most {len(VOTE_COLUMNS)} votes "
                             f"and {len(SUBTYPE_COLUMNS)} subtypes")

    @property
    def columns(self) -> tuple[str, ...]:
        """Every column the import reads: the CSV must have at least these."""
        template = [f for _, f, _, _ in string.Formatter().parse(self.filename) if f]
        used = [*template, self.slide, self.source, *(self.coords or ()), *self.votes, self.label, *self.subtypes]
        return tuple(dict.fromkeys(c for c in used if c))


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset of a benchmark: where its patches lie, which CSVs describe them, what to expect."""

    name: str  # the ``dataset`` column and part of every patch id
    folder: str = ""  # folder under the benchmark root (default: name)
    label_folders: dict[str, int] = field(default_factory=lambda: dict(BINARY_LABELS))  # folder -> y
    csvs: tuple[CsvSpec, ...] = ()
    split: str = "test"  # split of every patch no SPLIT CSV lists
    # split -> (patches, positives) as published; a mismatch is a note (subsets are allowed)
    expected_counts: dict[str, tuple[int, int]] = field(default_factory=dict)
    test_set: str = ""  # the name its test split is scored under (the paper's; default: name)

    def __post_init__(self) -> None:
        if not self.folder:
            object.__setattr__(self, "folder", self.name)
        if not self.test_set:
            object.__setattr__(self, "test_set", self.name)
        if sorted(self.label_folders.values()) != [0, 1]:
            raise ValueError(f"{self.name}: label_folders must map one label to 1 and one to 0 (a binary task)")
        if sum(bool(c.votes) for c in self.csvs) > 1:
            raise ValueError(f"{self.name}: expert votes may come from one CSV only")

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(self.label_folders)

    @property
    def positive(self) -> str:
        """The label with y = 1 (a True vote)."""
        return next(lab for lab, y in self.label_folders.items() if y == 1)

    @property
    def negative(self) -> str:
        return next(lab for lab, y in self.label_folders.items() if y == 0)


AMIBR_CSV = "AMI-BR.csv"

AMIBR = DatasetSpec(
    name="AMi-Br",
    csvs=(
        CsvSpec("amibr_train_split.csv", SPLIT, filename="{dataset_uid}", split="train",
                purpose="defines the AMi-Br train/test split", label="final_label", slide="slide"),
        CsvSpec(AMIBR_CSV, ANNOTATIONS, filename="{dataset}_{uid}.png", optional=True, values="bool",
                purpose="holds the AMi-Br slides, coordinates and expert votes",
                label="majority_atypical", votes=("expert1_atypical", "expert2_atypical", "expert3_atypical"),
                slide="slide", source="dataset", coords=("x", "y"), subtypes=("expert1_label", "expert2_label")),
    ),
    expected_counts={"train": (2894, 648), "test": (826, 184)},
    test_set="AMi-Br-test",  # the paper's name: AMi-Br's own test split, beside the two hold-out sets
)
ATNORM_BR = DatasetSpec(name="AtNorM-Br", expected_counts={"test": (746, 128)})
ATNORM_MD = DatasetSpec(
    name="AtNorM-MD",
    csvs=(CsvSpec("AtNorM-MD_expert_votes.csv", ANNOTATIONS, filename="{Filename}",
                  purpose="holds the AtNorM-MD expert votes", label="Majority",
                  votes=tuple(f"Expert_{k}" for k in range(1, 6))),),
    expected_counts={"test": (2107, 219)},
)

BENCHMARK = (AMIBR, ATNORM_BR, ATNORM_MD)  # the AMi-Br_Benchmark folder, in import (row) order


def spec_of(name: str, specs: tuple[DatasetSpec, ...] = BENCHMARK) -> DatasetSpec:
    """The spec of dataset ``name`` (KeyError naming the known ones otherwise)."""
    for s in specs:
        if s.name == name:
            return s
    raise KeyError(f"unknown dataset {name!r}; known: {[s.name for s in specs]}")


def test_sets(specs: tuple[DatasetSpec, ...] = BENCHMARK) -> dict[str, tuple[str, str]]:
    """Test-set name -> (dataset, split) for every spec with a published test split, in spec order."""
    return {s.test_set: (s.name, "test") for s in specs if "test" in s.expected_counts}
