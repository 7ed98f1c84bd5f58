"""mitoprobe's store: patches, embedding sets (Parquet + LanceDB) and results, queried with DuckDB.

Never imports torch, timm or streamlit (a test checks it)."""

from .dataset import DATASETS, LABELS, POSITIVE_LABEL, scan_benchmark, summarize_counts
from .datasets import BENCHMARK, CsvSpec, DatasetSpec, spec_of
from .errors import DataError, MitoprobeError, StaleFeaturesError, StoreError
from .features import EmbeddingSet, EmbeddingWriter, FeatureStore
from .hashing import config_hash
from .store import Fingerprint, Store

__all__ = [
    "BENCHMARK", "DATASETS", "LABELS", "POSITIVE_LABEL", "CsvSpec", "DataError", "DatasetSpec",
    "EmbeddingSet", "EmbeddingWriter", "FeatureStore", "Fingerprint", "MitoprobeError",
    "StaleFeaturesError", "Store", "StoreError", "config_hash", "scan_benchmark", "spec_of",
    "summarize_counts",
]
