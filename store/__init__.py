"""mitoprobe's store: patches, embedding sets (Parquet + LanceDB) and results, queried with DuckDB.

Never imports torch, timm or streamlit (a test checks it)."""

from .dataset import DATASETS, LABELS, POSITIVE_LABEL, scan_benchmark, summarize_counts
from .errors import DataError, MitoprobeError, StaleFeaturesError, StoreError
from .features import EmbeddingSet, EmbeddingWriter, FeatureStore
from .hashing import config_hash
from .store import Store

__all__ = [
    "DATASETS", "LABELS", "POSITIVE_LABEL", "DataError", "EmbeddingSet", "EmbeddingWriter",
    "FeatureStore", "MitoprobeError", "StaleFeaturesError", "Store", "StoreError", "config_hash",
    "scan_benchmark", "summarize_counts",
]
