"""Exceptions raised by the store. Each message names the offending file/row and the fix."""


class MitoprobeError(Exception):
    """Base class: the CLI prints these as one clean error line and exits non-zero."""


class DataError(MitoprobeError):
    """Bad input data (a file, a CSV row): nothing in the store was changed."""


class StoreError(MitoprobeError):
    """The store is missing something or a write would break an invariant."""


class StaleFeaturesError(StoreError):
    """Stored vectors were made by a recipe that no longer matches the current one."""
