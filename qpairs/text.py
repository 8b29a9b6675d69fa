"""The one rule for what counts as a question text.

A value is a question when it is a string holding at least one visible character and is not
a spelled-out missing value ('nan', 'none', 'null': what a NaN becomes after a careless
``astype(str)``). Whitespace, zero-width characters (U+200B..U+200F, U+2060.., the U+FEFF
byte-order mark), NUL and other control or format characters are not visible. Scoring,
submissions, data loading, the search index, title/body posts and the HTTP service all use it.
"""
from __future__ import annotations

import re

import numpy as np
import pandas as pd

MISSING_TEXTS = frozenset({"nan", "none", "null"})
INVISIBLE = ("\\s\x00-\x1f\x7f-\x9f\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180e\u200b-\u200f\u202a-\u202e"
             "\u2060-\u206f\u2800\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff9-\ufffb")
_VISIBLE = re.compile(f"[^{INVISIBLE}]")


def is_blank(text: str) -> bool:
    """True when `text` has no visible character (empty, whitespace, zero-width or control characters only)."""
    return _VISIBLE.search(text) is None


def text_problem(value, max_chars: int | None = None) -> str:
    """Why `value` is not a question text ('' when it is one)."""
    return str(bad_reasons(pd.Series([value], dtype=object), max_chars).iloc[0])


def bad_reasons(values: pd.Series, max_chars: int | None = None) -> pd.Series:
    """Per value: why it is not a question text ('' when it is fine); over `max_chars` characters is bad."""
    values = values.astype(object)  # a nullable (e.g. Int64) column takes no '' below
    is_str = values.map(lambda v: isinstance(v, str)).astype(bool)
    text = values.where(is_str, "").astype(str)
    reason = pd.Series("", index=values.index, dtype=object)
    reason[is_str & ~text.str.contains(_VISIBLE)] = "empty question"
    reason[is_str & text.str.strip().str.lower().isin(MISSING_TEXTS)] = "missing question (text 'nan'/'none'/'null')"
    if max_chars is not None:
        lengths = text.str.len()
        long = is_str & (lengths > max_chars)
        reason[long] = "over-long question (" + lengths[long].astype(str) + f" characters > --max-chars {max_chars})"
    na = ~is_str & values.isna()
    reason[na] = "missing question (NaN/null)"
    other = ~is_str & ~na
    reason[other] = "not text (" + values[other].map(lambda v: type(v).__name__) + ")"
    return reason


def blank_mask(values: pd.Series) -> np.ndarray:
    """Boolean array: True where the value is missing or has no visible character."""
    return (values.isna() | ~values.astype(str).str.contains(_VISIBLE)).to_numpy()


def bad_mask(values: pd.Series) -> np.ndarray:
    """Boolean array: True where the value is not a question text."""
    return (bad_reasons(values) != "").to_numpy()
