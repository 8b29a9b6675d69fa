"""Evaluate a trained detector on labelled pairs: metrics table, JSON and PNG report."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .checkpoint import read_json, write_json
from .metrics import classification_metrics, format_table
from .plots import save_report_plots


def calibrated_metrics(calibrator, distances, labels, test_prior: float | None = None) -> tuple[dict, np.ndarray]:
    """(metrics, probabilities) of pair `distances` under `calibrator`, at its threshold (and `test_prior`).

    The one computation behind each epoch's validation row (history.json) and every evaluation
    (metrics.json, `qpairs evaluate`)."""
    probs = calibrator.at_prior(calibrator.predict_proba(distances), test_prior)
    return classification_metrics(labels, probs, calibrator.threshold), probs


def check_report_dir(report_dir) -> Path:
    """Refuse a report folder that is a file or a model folder (whose metrics.json is the model's own)."""
    from .detector import ENSEMBLE_FILE

    report_dir = Path(report_dir)
    if report_dir.exists() and not report_dir.is_dir():
        raise ValueError(f"{report_dir} is a file: the report goes into a folder; name another with -o")
    if any((report_dir / name).exists() for name in ("config.json", ENSEMBLE_FILE)):
        raise ValueError(f"{report_dir} is a model folder: its metrics.json is the model's own; write the report "
                         "into another folder with -o")
    return report_dir


def labelled_pairs(frame: pd.DataFrame, source: str | None = None) -> pd.DataFrame:
    """The rows of `frame` with a label (is_duplicate ≥ 0); none is a ValueError (naming `source`, if given)."""
    labelled = frame[frame["is_duplicate"] >= 0]
    if len(labelled) == 0:
        raise ValueError(f"{source + ': ' if source else ''}no labelled pairs to evaluate")
    return labelled


def evaluate_frame(det, frame: pd.DataFrame, report_dir=None, history=None,
                   test_prior: float | None = None, about: dict | None = None) -> tuple[dict, np.ndarray]:
    """Metrics of `det` on a frame with question1/question2/is_duplicate; optional report directory.

    `test_prior`: the duplicate rate the data is known to have (e.g. 0.5 for a balanced set); the calibrated
    probabilities are re-weighted to it by Bayes' rule before the stored threshold is applied.
    """
    from .progress import pairs_in_chunks

    labelled = labelled_pairs(frame)
    d = pairs_in_chunks(det.distances, list(labelled["question1"]), list(labelled["question2"]), "scoring pairs")
    return evaluate_distances(det.calibrator, d, labelled["is_duplicate"].to_numpy(), report_dir, history, test_prior,
                              about)


def evaluate_distances(calibrator, d, y, report_dir=None, history=None,
                       test_prior: float | None = None, about: dict | None = None) -> tuple[dict, np.ndarray]:
    """`evaluate_frame` from the pairs' distances `d` and labels `y`; `about` (e.g. the data files) goes into the
    report's metrics.json."""
    metrics, probs = calibrated_metrics(calibrator, d, y, test_prior)
    metrics.update(about or {})
    metrics["threshold"] = calibrator.threshold
    metrics["test_prior"] = test_prior
    point = calibrator.operating_point
    if point:  # what the stored operating point promised, beside what it reaches here
        metrics.update(operating_point=point["rule"], promised_precision=point["precision"],
                       promised_recall=point["recall"])
    if report_dir is not None:
        report_dir = check_report_dir(report_dir)
        report_dir.mkdir(parents=True, exist_ok=True)
        write_json(report_dir / "metrics.json", metrics)
        data = ", ".join(Path(f).name for f in (about or {}).get("data", []))
        save_report_plots(report_dir, y, probs, d, history, subject=data, threshold=calibrator.threshold)
    return metrics, probs


def _data_name(path) -> str:
    """A data file's name without its format and compression suffixes ('q.v1.csv.gz' -> 'q.v1')."""
    name = Path(path).name
    for suffix in (".gz", ".bz2", ".xz", ".csv", ".tsv", ".txt", ".parquet"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    return name


def report_dir(run_dir, files, prefix: str = "") -> Path:
    """Default report directory: RUN/eval/NAME, or ./qpairs-eval/NAME for the bundled model (never into the
    installed package); NAME joins the data file names."""
    from .config import EVAL_DIR
    from .detector import bundle_name, resolve_model_path

    name = (prefix + "_".join(_data_name(f) for f in files))[:80]
    bundled = run_dir is None or bundle_name(resolve_model_path(run_dir)) is not None
    base = Path(EVAL_DIR) / name if bundled else Path(run_dir) / "eval" / name
    data = data_files(files)
    for n in range(1, 1000):  # the folder of this data's report, or a free one: never another data's report
        out = base if n == 1 else base.with_name(f"{base.name}-{n}")
        if not (out / "metrics.json").exists() or read_json(out / "metrics.json").get("data") == data:
            return out
    raise ValueError(f"{base}: 999 reports of other data with this name; name the report folder with -o")


def data_files(files) -> list[str]:
    """The data files as a report records them (absolute paths)."""
    return [str(Path(f).resolve()) for f in files]


def evaluate_run(run_dir, files, out=None, device: str = "auto", on_bad_row: str = "error", backend: str = "auto",
                 test_prior: float | None = None, **column_names) -> dict:
    """`qpairs evaluate`: load the run (None: the bundled model), score the files, print the table and write
    the report (default directory: `report_dir`)."""
    from .data import LoadReport, load_pairs
    from .detector import load

    out = check_report_dir(out if out else report_dir(run_dir, files))  # before any work
    det = load(run_dir, device=device, backend=backend)
    loaded = LoadReport()
    frame = load_pairs(files, on_bad_row=on_bad_row, report=loaded, **column_names)
    labelled_pairs(frame, ", ".join(map(str, files)) + (f" ({loaded})" if loaded.dropped_bad else ""))
    hist_path = det.path / "history.json"
    history = read_json(hist_path) if hist_path.exists() else None
    metrics, _ = evaluate_frame(det, frame, out, history, test_prior,
                                about={"data": data_files(files), "backend": det.backend})
    print(format_table({", ".join(Path(f).name for f in files): metrics}))
    from .operating_point import describe

    line = describe(det.calibrator.operating_point, metrics)
    if line:
        print(line)
    if test_prior is not None:
        print(f"probabilities re-weighted from duplicate rate {det.calibrator.prior:.3f} to {test_prior}")
    if loaded.duplicates_removed or loaded.dropped_bad:
        print(f"pairs evaluated once each: {loaded}")
    print(f"report written to {out}")
    return metrics
