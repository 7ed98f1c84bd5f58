"""Time ``mitoprobe run --full`` (or any mitoprobe command) from an empty store, with the CPU facts.

Prints the machine (``benchmarks.machine.header``: cores, torch's CPU capability, whose AVX2 / AVX512 / AMX
decide the fine-tuning precision, load average, ...) before and the load average after, beside the wall
time: a CPU figure without them means nothing.

Usage: python -m benchmarks.run_full_timing run --full --store /tmp/empty-store [--threads N]
"""

from __future__ import annotations

import time

from mitoprobe.cli import main

from .machine import header, load_average

if __name__ == "__main__":
    print(header(), flush=True)
    t0 = time.perf_counter()
    try:
        main()
    finally:
        print(f"wall time {time.perf_counter() - t0:.0f} s; load average {load_average()}", flush=True)
