"""mitoprobe's one error hierarchy (a leaf module: it imports nothing of the project).

Every error a user can fix derives from :class:`MitoprobeError`; its message names the offending
file, row, recipe or option and what to do. The CLI prints such an error as one line and exits 2.
Any other exception is a bug and keeps its traceback.

Which one to raise:

* :class:`DataError` - bad input data (an image, a CSV row); nothing in the store was changed.
* :class:`StoreError` - the store lacks something, or a write would break one of its invariants.
* :class:`DamagedStoreError` - a stored file cannot be read or breaks an invariant (a corrupt part,
  duplicate keys, a missing LanceDB table); ``mitoprobe store check`` lists it, ``store repair`` fixes it.
* :class:`StoreFormatError` - the store was written by a newer mitoprobe (a format this one cannot read).
* :class:`StoreLockedError` - another live process is writing the same embedding set.
* :class:`StaleFeaturesError` - stored vectors were made by another recipe id than the current one.
* :class:`RecipeError` - an unknown or invalid embedder recipe, layer, view set or engine.
* :class:`WeightsError` - model weights are missing, unreadable, unsafe to load or do not fit.
* :class:`ConfigError` - an option value that cannot work (device, engine, batch size, folds).
* :class:`ProtocolError` - a request the evaluation protocol forbids or cannot serve (unknown head,
  test set or pooling; a fine-tuned fold's vectors under another fold; a bad fold spec).
* :class:`HeadError` - your own head (``--head file.py:FACTORY``, an estimator object) raised, or returned
  what is not one probability per row in [0, 1]; the message names the head and the fold.
* :class:`FinetuneError` - a fine-tuning run that cannot start or resume as asked.
"""


class MitoprobeError(Exception):
    """Base class: the CLI prints these as one clean error line and exits 2."""


class DataError(MitoprobeError):
    """Bad input data (a file, a CSV row): nothing in the store was changed."""


class StoreError(MitoprobeError):
    """The store is missing something or a write would break an invariant."""


class DamagedStoreError(StoreError):
    """A stored file cannot be read or breaks an invariant; the message names the path and points at
    ``mitoprobe store check`` / ``mitoprobe store repair``."""


class StoreFormatError(StoreError):
    """The store (or one of its files) is a format newer than this mitoprobe reads: upgrade mitoprobe.
    Not a :class:`DamagedStoreError`: nothing may overwrite or quarantine it as damage."""


class StoreLockedError(StoreError):
    """Another live process holds the write lock of the same set; the message names it (pid, command, since)."""


class StaleFeaturesError(StoreError):
    """Stored vectors were made by a recipe that no longer matches the current one."""


class RecipeError(MitoprobeError):
    """An embedder recipe (or a name that should resolve to one) is unknown or invalid."""


class WeightsError(RecipeError):
    """Weights for a recipe are unavailable, unsafe to load, or do not fit its architecture."""


class ConfigError(MitoprobeError):
    """An option value that cannot work on this machine or with this store."""


class ProtocolError(MitoprobeError):
    """The evaluation protocol cannot serve the request as asked."""


class HeadError(ProtocolError):
    """An own head's code raised (the exception is chained: ``mitoprobe -v`` prints its traceback) or its
    ``predict_proba`` gave no probability per row; one line naming the head, the fold and the test set."""


class FinetuneError(MitoprobeError):
    """A fine-tuning run cannot start or resume as asked."""
