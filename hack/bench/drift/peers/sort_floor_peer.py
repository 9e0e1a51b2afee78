"""Not a drift tool: sorts every numerical column of both tables once (np.sort, float64).

Any exact two-sample KS must at least order both samples, so this is the floor the others are
measured against.
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
    for name in numerical:
        np.sort(reference[name])
        np.sort(current[name])
    timer.mark("compute")
    emit("sort-floor", timer, {}, floor=True)


if __name__ == "__main__":
    main()
