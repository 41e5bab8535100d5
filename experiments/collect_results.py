"""Print one line per run of a sweep (or of several): its overrides and results.json.

.venv/bin/python experiments/collect_results.py outputs/train-multirun/<time>
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

COLUMNS = ("val_haversine_km", "test_haversine_km", "test_median_km", "baseline_test_haversine_km")


def main(folders: list[str]) -> None:
    rows = []
    for folder in folders:
        for path in sorted(Path(folder).glob("**/results.json")):
            results = json.loads(path.read_text())
            rows.append((path.parent.name, *(results[c] for c in COLUMNS)))
    if not rows:
        sys.exit(f"no results.json under {', '.join(folders)}")
    width = max(len(r[0]) for r in rows)
    print(f"{'run':<{width}}  " + "  ".join(f"{c:>26}" for c in COLUMNS))
    for name, *values in sorted(rows, key=lambda r: (r[1] is None, r[1] or 0.0)):
        cells = "  ".join(f"{v:>26.1f}" if v is not None else f"{'n/a':>26}" for v in values)
        print(f"{name:<{width}}  {cells}")


if __name__ == "__main__":
    main(sys.argv[1:] or ["outputs/train-multirun"])
