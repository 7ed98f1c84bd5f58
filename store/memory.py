"""Giving back what Arrow freed, when a big Arrow step ends.

Arrow's memory pool (mimalloc) keeps the memory a large read, sort or hash lookup freed, for its own next
allocation; NumPy and Python allocate elsewhere and cannot use it, so a command's resident memory was the
sum of both allocators' high-water marks. ``releasing`` returns the pool's free memory to the OS as such a
step returns (a fraction of a millisecond): at a cohort's 200,000 patches it lowered ``probe``'s peak by
~25 MiB (docs/benchmarks.md, "Cohort scale, round 4").
"""

from __future__ import annotations

import functools

import pyarrow as pa


def release() -> None:
    """Return the memory Arrow's default pool holds free to the OS."""
    pa.default_memory_pool().release_unused()


def releasing(fn):
    """``fn``, then ``release()`` (also when it raises): for the store's big Arrow steps."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        finally:
            release()
    return wrapper
