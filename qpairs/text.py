"""The one rule for what counts as a question text.

A value is a question when it is a string holding at least one visible character and is not
a spelled-out missing value ('nan', 'none', 'null': what a NaN becomes after a careless
``astype(str)``). Whitespace, zero-width characters (U+200B..U+200F, U+2060.., the U+FEFF
byte-order mark), NUL and other control or format characters are not visible. The Python API, scoring,
submissions, data loading, the search index, title/body posts and the HTTP service all use it.
"""
from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

import numpy as np
import pandas as pd

MISSING_TEXTS = frozenset({"nan", "none", "null"})
NOT_TEXT = "not text"  # how `text_problem` starts the reason for a value that is no string at all (a number, bytes)
# zero-width and other format characters (a soft hyphen, a zero-width space pasted into a word, a variation selector)
FORMAT_CHARACTERS = ("\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180e\u200b-\u200f\u202a-\u202e\u2060-\u206f"
                     "\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff9-\ufffb")
INVISIBLE = f"\\s\x00-\x1f\x7f-\x9f\u2800{FORMAT_CHARACTERS}"
_VISIBLE = re.compile(f"[^{INVISIBLE}]")
_FORMAT = re.compile(f"[{FORMAT_CHARACTERS}]")
_SURROGATE = re.compile("[\ud800-\udfff]")  # half of a UTF-16 pair: no encoding can write it
_EMOJI = re.compile("[\u231a-\u23ff\u2600-\u27bf\u2b00-\u2bff\U0001f000-\U0001faff]")
_SKIN_TONE = range(0x1F3FB, 0x1F400)
# compatibility forms that are the same letters (full-width and half-width forms, ligatures such as 'ﬁ', a no-break
# space, styled maths letters); superscripts, subscripts, fractions and circled digits keep their meaning
_SAME_LETTERS = ("<wide>", "<narrow>", "<compat>", "<noBreak>", "<font>")
TEXT_FOLDING = 1  # the version of `model_text`: what caches and indexes of encoded texts record


def model_text(text: str) -> str:
    """A text as every encoder reads it: Unicode NFC (a decomposed accent is one letter), compatibility forms of
    the same letters folded ('ﬁ' is 'fi', full-width 'Ｐｙｔｈｏｎ' is 'Python'; '10³' stays '10³'), zero-width and
    other format characters dropped, and each emoji spelt out by its Unicode name ('🍕' reads 'slice of pizza'):
    the vocabularies know words, not emoji."""
    text = _FORMAT.sub("", unicodedata.normalize("NFC", text))
    if not text.isascii():
        text = "".join(_same_letters(c) for c in text)
    return _EMOJI.sub(_emoji_words, text) if _EMOJI.search(text) else text


# sentence punctuation; not a point, comma or colon between digits, nor a minus sign or hyphen before a digit or
# between letters ("1.5" is not "15", "-5" not "5", "2-3" not "23")
_PUNCTUATION = re.compile(r"(?!(?<=\d)[.,:](?=\d))(?!-(?=\d))(?!(?<=\w)-(?=\w))[.,;:!?\"()\[\]{}¿¡…“”«»–—-]")
_APOSTROPHE = re.compile(r"\s*['‘’]|\s+(?=n['‘’]t\b)")  # with the spaces a tokenizer put before it ("do n't")
_AROUND_SYMBOL = re.compile(r"\s*([^\w\s])\s*")


def normalize_question(text: str) -> str:
    """Key under which two spellings of one question count as the same question: case folded, apostrophes and
    sentence punctuation dropped, no spaces around a symbol ("₹ 500" is "₹500"), words kept apart by one space
    ("ice cream" is not "icecream"); every letter and mark (any script), digit and symbol kept ("C++" is not
    "C", "1.5" is not "15"); read as the encoders read it (`model_text`: "nai\u0308ve" is "naïve")."""
    text = _PUNCTUATION.sub(" ", _APOSTROPHE.sub("", model_text(str(text)).casefold()))
    return " ".join(_AROUND_SYMBOL.sub(r"\1", text).split())


_TRAILING_MARKS = re.compile(r"[\s?.!？！。]+$")


def same_question_key(text: str) -> str:
    """Key under which two texts are one question spelt twice: read as the encoders read it (`model_text`), case
    folded, apostrophes and repeated spaces dropped, and the closing ?, ! or . ("How do I learn Python?" is "how do i
    learn python"). Narrower than `normalize_question`: "What is .NET?" is not "What is NET?", nor "0!" "0"."""
    text = " ".join(_APOSTROPHE.sub("", model_text(text).casefold()).split())
    return _TRAILING_MARKS.sub("", text)


def same_questions(q1: list[str], q2: list[str]) -> np.ndarray:
    """Per pair: True when its two texts are one question spelt twice (`same_question_key`); each distinct text keyed
    once per call."""
    keys: dict[str, str] = {}

    def key(text: str) -> str:
        if text not in keys:
            keys[text] = same_question_key(text)
        return keys[text]

    return np.fromiter((a == b or key(a) == key(b) for a, b in zip(q1, q2)), dtype=bool, count=len(q1))


def folds_otherwise(texts) -> str | None:
    """The first of `texts` that `model_text` changes (None if none does): what a cache or index of encoded texts
    made before the folding holds in another form than its encoder now reads."""
    return next((t for t in texts if model_text(t) != t), None)


def _same_letters(char: str) -> str:
    if char.isascii() or not unicodedata.decomposition(char).startswith(_SAME_LETTERS):
        return char
    return unicodedata.normalize("NFKC", char)


def _emoji_words(match: re.Match) -> str:
    char = match.group()
    return " " if ord(char) in _SKIN_TONE else f" {unicodedata.name(char, '').lower()} "


def is_blank(text: str) -> bool:
    """True when `text` has no visible character (empty, whitespace, zero-width or control characters only)."""
    return _VISIBLE.search(text) is None


def question_problem(text: str) -> str:
    """Why the string `text` is not a question text ('' when it is one)."""
    if is_blank(text):
        return "empty question"
    if text.strip().lower() in MISSING_TEXTS:
        return "missing question (text 'nan'/'none'/'null')"
    surrogate = _SURROGATE.search(text)
    if surrogate:
        return (f"invalid text (a lone surrogate U+{ord(surrogate.group()):04X} at character {surrogate.start()}: "
                "half of a character, e.g. an emoji cut in two)")
    return ""


def text_problem(value, max_chars: int | None = None) -> str:
    """Why `value` is not a question text ('' when it is one); over `max_chars` characters is bad."""
    if isinstance(value, str):
        problem = question_problem(value)
        if not problem and max_chars is not None and len(value) > max_chars:
            return f"over-long question ({len(value)} characters > --max-chars {max_chars})"
        return problem
    if pd.isna(value) is True:  # None, NaN, pd.NA, NaT (an array's isna is not `True`)
        return "missing question (NaN/null)"
    return f"{NOT_TEXT} ({type(value).__name__})"


def bad_reasons(values: pd.Series, max_chars: int | None = None) -> pd.Series:
    """Per value: why it is not a question text ('' when it is fine), as `text_problem` says."""
    return pd.Series([text_problem(v, max_chars) for v in values.astype(object)], index=values.index, dtype=object)


def as_text_list(x, name: str, single: bool = True) -> list[str]:
    """`x` as a list of strings: one string (when `single`) or an ordered sequence of them; anything else is a
    TypeError (a string where a sequence is needed would otherwise be read as its characters, a DataFrame as its
    column names)."""
    if isinstance(x, str):
        if single:
            return [x]
        raise TypeError(f"{name} must be a sequence of strings, not a single string (wrap it in a list)")
    if isinstance(x, (bytes, bytearray)) or not isinstance(x, (Sequence, np.ndarray)) and not hasattr(x, "__iter__"):
        raise TypeError(f"{name} must be {'a string or ' if single else ''}a sequence of strings, not "
                        f"{type(x).__name__}")
    if isinstance(x, (set, frozenset, dict)):  # no order to pair its items with anything else
        raise TypeError(f"{name} must be an ordered sequence of strings (a list, tuple or array), not a "
                        f"{type(x).__name__}")
    if isinstance(x, pd.DataFrame):  # iterating one gives its column names
        raise TypeError(f"{name} must be a sequence of strings, not a DataFrame: pass one column of it "
                        f"(df['question1'], not df[['question1']])")
    if isinstance(x, np.ndarray) and x.ndim != 1:
        raise TypeError(f"{name} must be a one-dimensional sequence of strings, not a {x.ndim}-d array of shape "
                        f"{x.shape}")
    items = list(x)
    for i, item in enumerate(items):
        if not isinstance(item, str):
            if item is None or pd.isna(item) is True:  # a None may reach here as NaN (a pandas string column)
                raise TypeError(f"{name}[{i}] is missing (None/NaN), not a question text")
            raise TypeError(f"{name}[{i}] must be a string, not {type(item).__name__} ({item!r})")
    return items


def refuse_non_questions(texts: list[str], name: str, single: bool = False) -> None:
    """A ValueError naming the first text that is not a question (`question_problem`)."""
    for i, text in enumerate(texts):
        problem = question_problem(text)
        if problem:
            raise ValueError(f"{name}{'' if single else f'[{i}]'} is not a question: {problem} ({text!r})")


def blank_mask(values: pd.Series) -> np.ndarray:
    """Boolean array: True where the value is missing or has no visible character."""
    return (values.isna() | ~values.astype(str).str.contains(_VISIBLE)).to_numpy()


def bad_mask(values: pd.Series) -> np.ndarray:
    """Boolean array: True where the value is not a question text."""
    return (bad_reasons(values) != "").to_numpy()
