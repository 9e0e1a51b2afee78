"""The peer: the least a script can do to train the same model on the same data.

read parquet -> stratified seeded split -> fit -> predict; prints its phase times as JSON.
Deliberately imports nothing from kubeloop.

With ``--freeze-gc-at-exit`` it ends as ``kubeloop train`` does (``gc.freeze`` in an atexit
handler, so the interpreter's teardown runs no full collections): the like-for-like peer,
which shows the trainer's overhead without the ~0.5 CPU-s both sides can save at exit.
"""

from __future__ import annotations

import json
import sys
import time


def main(argv: list[str]) -> int:
    marks = [(time.perf_counter(), time.process_time())]
    import numpy as np
    import pandas as pd
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
    from sklearn.model_selection import train_test_split

    marks.append((time.perf_counter(), time.process_time()))
    data_path, estimator, params_json = argv
    frame = pd.read_parquet(data_path)
    features, target = frame.drop(columns="target"), frame["target"]
    marks.append((time.perf_counter(), time.process_time()))
    x_train, x_test, y_train, y_test = train_test_split(
        features, target, test_size=0.2, random_state=42, shuffle=True, stratify=target
    )
    marks.append((time.perf_counter(), time.process_time()))
    model_class = {"hgb": HistGradientBoostingClassifier, "rf": RandomForestClassifier}[estimator]
    model = model_class(**json.loads(params_json)).fit(x_train, y_train)
    marks.append((time.perf_counter(), time.process_time()))
    predicted = model.predict(x_test)
    marks.append((time.perf_counter(), time.process_time()))
    phases = ("import", "load", "split", "fit", "predict")
    print(json.dumps({
        "accuracy": float(np.mean(predicted == y_test.to_numpy())),
        "timings": {p: marks[i + 1][0] - marks[i][0] for i, p in enumerate(phases)},
        "cpuTimings": {p: marks[i + 1][1] - marks[i][1] for i, p in enumerate(phases)},
    }))
    return 0


if __name__ == "__main__":
    arguments = sys.argv[1:]
    if "--freeze-gc-at-exit" in arguments:
        import atexit
        import gc

        arguments.remove("--freeze-gc-at-exit")
        atexit.register(gc.freeze)
    sys.exit(main(arguments))
