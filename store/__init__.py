"""mitoprobe's store: patches, embedding sets (Parquet + LanceDB) and results, queried with DuckDB.

Never imports torch, timm or streamlit (a test checks it)."""

from .dataset import DATASETS, LABELS, POSITIVE_LABEL, scan_benchmark, summarize_counts
from .datasets import BENCHMARK, CsvSpec, DatasetSpec, spec_of
from .errors import (DamagedStoreError, DataError, MitoprobeError, StaleFeaturesError, StoreError, StoreFormatError,
                     StoreLockedError)
from .features import EmbeddingSet, EmbeddingWriter, FeatureStore
from .hashing import config_hash
from .integrity import Action, Problem
from .lock import SetLock
from .store import Fingerprint, Store
from . import integrity

__all__ = [
    "BENCHMARK", "DATASETS", "LABELS", "POSITIVE_LABEL", "Action", "CsvSpec", "DamagedStoreError", "DataError",
    "DatasetSpec", "EmbeddingSet", "EmbeddingWriter", "FeatureStore", "Fingerprint", "MitoprobeError",
    "Problem", "SetLock", "StaleFeaturesError", "Store", "StoreError", "StoreFormatError", "StoreLockedError",
    "config_hash", "integrity", "scan_benchmark", "spec_of", "summarize_counts",
]
