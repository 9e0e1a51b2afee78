"""The peer: the least a script can do to train the same model on the same data.

read parquet -> stratified seeded split -> fit -> predict; prints its phase times as JSON.
Deliberately imports nothing from kubeloop.
"""

from __future__ import annotations

import json
import sys
import time


def main(argv: list[str]) -> int:
    start = time.perf_counter()
    import numpy as np
    import pandas as pd
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
    from sklearn.model_selection import train_test_split

    imported = time.perf_counter()
    data_path, estimator, params_json = argv
    frame = pd.read_parquet(data_path)
    features, target = frame.drop(columns="target"), frame["target"]
    loaded = time.perf_counter()
    x_train, x_test, y_train, y_test = train_test_split(
        features, target, test_size=0.2, random_state=42, shuffle=True, stratify=target
    )
    split = time.perf_counter()
    model_class = {"hgb": HistGradientBoostingClassifier, "rf": RandomForestClassifier}[estimator]
    model = model_class(**json.loads(params_json)).fit(x_train, y_train)
    fitted = time.perf_counter()
    predicted = model.predict(x_test)
    done = time.perf_counter()
    print(json.dumps({
        "accuracy": float(np.mean(predicted == y_test.to_numpy())),
        "timings": {"import": imported - start, "load": loaded - imported, "split": split - loaded,
                    "fit": fitted - split, "predict": done - fitted},
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
