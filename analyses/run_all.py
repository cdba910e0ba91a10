"""Run every analysis script in turn (``--quick`` and other flags are passed through).

    python -m analyses.run_all            # default sizes (each script < 15 min on 2 cores)
    python -m analyses.run_all --quick    # smoke run of everything
    python -m analyses.run_all --only table_3_1_linear figures_5_12_5_13
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

SCRIPTS = [
    "table_3_1_linear",
    "figures_5_12_5_13",
    "table_4_2_random_mlps",
    "table_4_3_trained_mlps",
    "table_5_1_cnns",
    "table_5_3_lrn",
    "figure_4_3_regulariser",
    "beyond_tightness",
]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--only", nargs="+", choices=SCRIPTS, default=SCRIPTS)
    args, rest = p.parse_known_args()
    root = Path(__file__).resolve().parents[1]
    failed = []
    for name in args.only:
        t0 = time.perf_counter()
        print(f"=== {name} {' '.join(rest)}", flush=True)
        rc = subprocess.call([sys.executable, "-m", f"analyses.{name}", *rest], cwd=root)
        print(f"=== {name}: exit {rc}, {time.perf_counter() - t0:.0f} s", flush=True)
        if rc:
            failed.append(name)
    subprocess.call([sys.executable, "-m", "analyses.make_readme"], cwd=root)
    if failed:
        print("failed:", ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
