"""`qpairs score --engine ray` on a local Ray instance (CPU, fractional CPU requests)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

ray = pytest.importorskip("ray", reason="needs the optional extra qpairs[ray]")

from qpairs import cli  # noqa: E402
from qpairs.data import DataError  # noqa: E402
from qpairs.ray_scoring import ROW_COL, score_with_ray  # noqa: E402
from qpairs.scoring import PRED_COL, PROBA_COL, score_frame  # noqa: E402

WORDS = "how do i learn python java the best way to get good at music chess cooking what is".split()


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A random tiny BiLSTM detector with a Platt calibration, saved as a run directory."""
    import torch

    from qpairs.calibration import Calibrator
    from qpairs.checkpoint import save_model, write_json
    from qpairs.encoders import LSTMEncoder
    from qpairs.model import SiameseModel
    from qpairs.vocab import WordVocab

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model")
    model = SiameseModel(LSTMEncoder(WordVocab.build(WORDS, min_freq=1), embedding_dim=8, hidden_size=8,
                                     projection_dim=8, dropout=0.0))
    save_model(model, path)
    d = np.linspace(0, 2, 40)
    y = (d < 1).astype(int)
    y[::7] ^= 1
    write_json(path / "calibration.json", Calibrator("platt").fit(d, y).to_dict())
    return path


def pairs(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"id": [f"{i:04d}" for i in range(n)],  # leading zeros: ids must stay text
                         "question1": [" ".join(rng.choice(WORDS, 5)) for _ in range(n)],
                         "question2": [" ".join(rng.choice(WORDS, 5)) for _ in range(n)]})


def test_ray_cli_scores_every_row_once_in_restorable_order(local_ray, tiny_model, tmp_path):
    frame = pairs(300)
    frame.to_csv(tmp_path / "in.csv", index=False)
    out = tmp_path / "scored"
    assert cli.main(["score", "--engine", "ray", str(tmp_path / "in.csv"), "-o", str(out), "--model", str(tiny_model),
                     "--workers", "2", "--rows-per-batch", "64"]) == 0

    got = pd.read_parquet(out)
    assert len(got) == len(frame)
    assert len(list(out.glob("*.parquet"))) > 1  # written as shards
    got = got.sort_values(ROW_COL).reset_index(drop=True)
    assert got[ROW_COL].tolist() == list(range(len(frame)))
    assert got["id"].tolist() == frame["id"].tolist()
    assert got["question1"].tolist() == frame["question1"].tolist()
    from qpairs.detector import load

    local = score_frame(load(tiny_model, device="cpu"), frame)  # the engine-neutral core, in this process
    np.testing.assert_allclose(got[PROBA_COL].to_numpy(), local[PROBA_COL].to_numpy(), rtol=1e-6)
    assert (got[PRED_COL].to_numpy() == local[PRED_COL].to_numpy()).all()


def test_ray_bad_row_names_row_id_and_column(local_ray, tiny_model, tmp_path):
    frame = pairs(50)
    frame.loc[7, "question2"] = "   "
    frame.to_parquet(tmp_path / "in.parquet", index=False)
    with pytest.raises(DataError, match=r"row 8 \(id 0007\), column 'question2': empty question"):
        score_with_ray(tmp_path / "in.parquet", tmp_path / "out", tiny_model, workers=1, rows_per_batch=16)


def test_ray_field_count_error_names_file_row_and_line(local_ray, tiny_model, tmp_path):
    pairs(20).to_csv(tmp_path / "in.csv", index=False)
    lines = (tmp_path / "in.csv").read_text().splitlines()
    lines[6] += ",extra"  # row 6 of the data, line 7 of the file
    (tmp_path / "in.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"in.csv: row 6 \(line 7\): field count"):
        score_with_ray(tmp_path / "in.csv", tmp_path / "out", tiny_model, workers=1, rows_per_batch=16)


def test_ray_refuses_an_existing_output(tiny_model, tmp_path):
    pairs(5).to_csv(tmp_path / "in.csv", index=False)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.parquet").write_text("x")
    with pytest.raises(FileExistsError, match="already exists"):
        score_with_ray(tmp_path / "in.csv", tmp_path / "out", tiny_model)


def test_ray_refuses_a_parquet_file_that_keeps_a_pandas_index(tiny_model, tmp_path):
    pairs(5).assign(id=range(10, 15)).set_index("id").to_parquet(tmp_path / "in.parquet")
    with pytest.raises(DataError, match=r"keeps a pandas index \(id\).*--engine local"):
        score_with_ray(tmp_path / "in.parquet", tmp_path / "out", tiny_model)
