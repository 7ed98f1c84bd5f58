"""Time ``mitoprobe run --full`` (or any mitoprobe command) from an empty store, with the CPU facts.

Prints the core count, torch's CPU capability (AVX2 / AVX512 / AMX decide the fine-tuning precision)
and the load average before and after, beside the wall time: a CPU figure without them means nothing.

Usage: python benchmarks/run_full_timing.py run --full --store /tmp/empty-store [--threads N]
"""

from __future__ import annotations

import os
import time

from mitoprobe.finetune.precision import cpu_capability
from mitoprobe.cli import main

if __name__ == "__main__":
    print(f"{os.cpu_count()} cores, CPU capability {cpu_capability()}, load avg {os.getloadavg()}", flush=True)
    t0 = time.perf_counter()
    try:
        main()
    finally:
        print(f"wall time {time.perf_counter() - t0:.0f} s; load avg {os.getloadavg()}", flush=True)
