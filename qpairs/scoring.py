"""Batch scoring of question pairs.

The core is engine-neutral: `score_frame` maps a pandas frame of pairs to the same frame
plus score columns. The local streaming scorer, Ray Data and Spark's `mapInPandas` all
call it.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

PROBA_COL = "duplicate_probability"
PRED_COL = "predicted_duplicate"


def score_frame(det, frame: pd.DataFrame, q1_col: str = "question1", q2_col: str = "question2") -> pd.DataFrame:
    """Return `frame` with `duplicate_probability` and `predicted_duplicate` columns added (row order kept)."""
    out = frame.copy()
    probs = det.predict_proba(list(frame[q1_col].astype(str)), list(frame[q2_col].astype(str)))
    out[PROBA_COL] = np.asarray(probs, dtype=np.float64)
    out[PRED_COL] = (out[PROBA_COL] >= det.threshold).astype(int)
    return out
