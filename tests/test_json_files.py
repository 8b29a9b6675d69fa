"""Files the project writes as JSON are strict JSON: readable by any parser, whatever the numbers in them."""
import json

import numpy as np
import torch

from qpairs.checkpoint import read_json, write_json


def strict_load(path):
    def refuse(name):
        raise ValueError(f"{name} is not JSON")
    return json.loads(path.read_text(), parse_constant=refuse)


def test_non_finite_numbers_are_written_as_null(tmp_path):
    data = {"roc_auc": float("nan"), "best": -np.inf, "rows": [np.float32("nan"), np.float64(0.25), 3],
            "loss": torch.tensor(float("inf")), "nested": {"ok": np.float32(0.5), "n": np.int64(7)}}
    write_json(tmp_path / "m.json", data)
    loaded = strict_load(tmp_path / "m.json")
    assert loaded == {"roc_auc": None, "best": None, "rows": [None, 0.25, 3], "loss": None,
                      "nested": {"ok": 0.5, "n": 7}}
    assert read_json(tmp_path / "m.json") == loaded
    assert not list(tmp_path.glob(".*partial"))


def test_one_class_metrics_are_written_as_strict_json(tmp_path):
    from qpairs.metrics import classification_metrics

    metrics = classification_metrics(np.zeros(5, dtype=int), np.linspace(0.1, 0.4, 5), threshold=0.5)
    write_json(tmp_path / "metrics.json", metrics)
    loaded = strict_load(tmp_path / "metrics.json")
    assert loaded["roc_auc"] is None and loaded["accuracy"] == 1.0
