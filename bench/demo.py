"""The quick start's cost: `python -m cxr.train experiment=demo` from an empty folder (data generation,
cache, training, evaluation, model logging), its wall and CPU time and the AUC it prints.

    python bench/demo.py            # the demo as shipped
    python bench/demo.py --before   # with the demo settings before issue 24 (96 px, 800 patients,
                                    # 128-px PNGs, 20 epochs); the small CNN's 3-channel input of then
                                    # is code: run this script at the commit before issue 24 for it

Run old and new back to back on one machine: on a shared one only their ratio means much.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BEFORE = [
    "dataset.image_size=96",
    "dataset.generator.n_patients=800",
    "dataset.generator.resolution=128",
    "trainer.epochs=20",
]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--before", action="store_true", help="the demo settings before issue 24")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cxr-demo-") as folder:
        command = [sys.executable, "-m", "cxr.train", "experiment=demo", f"hydra.run.dir={folder}/run"]
        command += BEFORE if args.before else []
        started = time.perf_counter()
        out = subprocess.run(command, cwd=folder, capture_output=True, text=True)
        wall = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode != 0:
        sys.exit(out.stderr[-3000:])
    auc = next(line for line in out.stdout.splitlines() if line.startswith("mean AUC"))
    print(
        f"{'before issue 24' if args.before else 'demo'}: wall {wall:.0f} s, "
        f"CPU {usage.ru_utime + usage.ru_stime:.0f} s; {auc}"
    )
    print(f"machine: {Path('/proc/loadavg').read_text().split()[:3]} load average (1, 5, 15 min)")


if __name__ == "__main__":
    main()
