"""Not a drift tool: sorts every numerical column of both tables once (float64).

Any exact two-sample KS must at least order both samples, so this is the floor the others are
measured against. Each column is copied into one reused buffer and sorted in place, the
cheapest way numpy offers (np.sort would also pay for a fresh allocation per column).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import Timer, emit, load_columns


def main() -> None:
    timer = Timer()
    timer.mark("import")
    data_dir = Path(sys.argv[1])
    reference, numerical, _categorical = load_columns(data_dir, "reference")
    current, _, _ = load_columns(data_dir, "current")
    timer.mark("load")
    buffer = np.empty(max(reference[numerical[0]].size, current[numerical[0]].size))
    for name in numerical:
        for column in (reference[name], current[name]):
            view = buffer[: column.size]
            np.copyto(view, column)
            view.sort()
    timer.mark("compute")
    emit("sort-floor", timer, {}, floor=True)


if __name__ == "__main__":
    main()
