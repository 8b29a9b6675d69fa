"""Per-side text preparation of a model: what each input side does to a text before its encoder sees it.

A model's ``sides`` config maps a side (``left``, ``right``) to its steps, e.g.
``{"right": {"clean_body": {"max_words": 100, "policy": "head_tail"}}}`` for a title/body run, whose
body side turns HTML into text (`html_to_text`) and truncates long bodies by a stated policy
(`truncate_words`). Runs saved before the config held ``sides`` get theirs from their training settings
(`sides_from_train`).
"""
from __future__ import annotations

import re
from functools import partial

TRUNCATION_POLICIES = ("head", "head_tail", "none")
# Default body policy: 100 words (the tokenizers then see ~128 word pieces), the first 75% and the
# last 25% of them. Zero-shot MiniLM on 1,000 validation posts (docs/results.md, "Title vs body"): head+tail
# recall@1 0.950 / MRR 0.966 against 0.943 / 0.962 for the head alone.
DEFAULT_TRUNCATION = "head_tail"
DEFAULT_BODY_MAX_WORDS = 100
DEFAULT_HEAD_FRACTION = 0.75
ELLIPSIS = "…"
SIDES = ("left", "right")

_HTML_RE = re.compile(r"<(p|pre|code|br|div|ul|ol|li|blockquote|a|img|h[1-6]|strong|em|b|i|hr|table|sup|sub)\b[^>]*>",
                      re.IGNORECASE)


def looks_like_html(text: str) -> bool:
    """True when `text` contains an HTML tag of the kind Stack Exchange bodies use."""
    return bool(_HTML_RE.search(text))


def html_to_text(html: str) -> str:
    """Visible text of an HTML body, whitespace collapsed; code (inline and blocks) is kept as text."""
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(html, "lxml")
    for tag in soup.find_all(["script", "style"]):
        tag.decompose()
    return " ".join(soup.get_text(" ").split())


def truncate_words(text: str, max_words: int | None = DEFAULT_BODY_MAX_WORDS, policy: str = DEFAULT_TRUNCATION,
                   head_fraction: float = DEFAULT_HEAD_FRACTION) -> str:
    """Cut `text` to at most `max_words` whitespace-separated words.

    policy: ``head`` keeps the first words; ``head_tail`` keeps the first ``head_fraction`` of
    the budget and the last words, joined by one ``…`` word (counted in the budget, so the cut is
    idempotent); ``none`` keeps everything.
    """
    if policy not in TRUNCATION_POLICIES:
        raise ValueError(f"truncation policy must be one of {TRUNCATION_POLICIES}, not {policy!r}")
    words = text.split()
    if policy == "none" or max_words is None or len(words) <= max_words:
        return " ".join(words)
    if max_words < 1:
        raise ValueError(f"max_words must be at least 1, got {max_words}")
    if policy == "head" or max_words < 3:
        return " ".join(words[:max_words])
    budget = max_words - 1  # one word for the ellipsis
    head = max(1, min(budget - 1, int(round(budget * head_fraction))))
    return " ".join(words[:head] + [ELLIPSIS] + words[len(words) - (budget - head):])


def clean_body(text: str, max_words: int | None = DEFAULT_BODY_MAX_WORDS, policy: str = DEFAULT_TRUNCATION,
               head_fraction: float = DEFAULT_HEAD_FRACTION) -> str:
    """HTML → text (only when it looks like HTML), then `truncate_words`."""
    if looks_like_html(text):
        text = html_to_text(text)
    return truncate_words(text, max_words, policy, head_fraction)


STEPS = {"clean_body": clean_body}  # step name in a sides config → text function (its settings as keywords)


def resolve_col(name: str) -> str:
    """Map a --left-col/--right-col value onto ``title`` or ``body`` (``content`` is an alias of body)."""
    key = {"content": "body"}.get(name, name)
    if key not in ("title", "body"):
        raise ValueError(f"title/body columns must be 'title' or 'body' (or 'content'), not {name!r}")
    return key


def title_body_sides(train: dict | None) -> tuple[str, str]:
    """(side of the titles, side of the bodies) of a run from its training settings: the body is on the right
    unless a title/body run put it on the left (``left_col`` body or content)."""
    left_col = (train or {}).get("left_col")
    return ("right", "left") if left_col and resolve_col(left_col) == "body" else ("left", "right")


def sides_from_train(train: dict | None) -> dict:
    """The sides config of a run from its training settings: a title/body run (``left_col`` set) cleans
    its body side (``right`` unless the body is on the left) by its truncation policy; ``{}`` otherwise."""
    train = train or {}
    if not train.get("left_col"):
        return {}
    return {title_body_sides(train)[1]: {"clean_body": {"max_words": train.get("body_max_words", DEFAULT_BODY_MAX_WORDS),
                                       "policy": train.get("body_truncation", DEFAULT_TRUNCATION)}}}


def preprocessors(sides: dict) -> dict:
    """Side → text function of a sides config (sides without steps are left out); a bad config raises a
    ValueError naming the side and step."""
    out = {}
    for side, steps in sides.items():
        if side not in SIDES:
            raise ValueError(f"sides: unknown side {side!r}; use {' or '.join(SIDES)}")
        if not isinstance(steps, dict):
            raise ValueError(f"sides.{side} must be an object of steps, got {steps!r}")
        fns = []
        for name, kwargs in steps.items():
            if name not in STEPS or not isinstance(kwargs, dict):
                raise ValueError(f"sides.{side}.{name}: unknown step or settings not an object; steps are "
                                 f"{', '.join(STEPS)}")
            if kwargs.get("policy", DEFAULT_TRUNCATION) not in TRUNCATION_POLICIES:
                raise ValueError(f"sides.{side}.{name}.policy must be one of {TRUNCATION_POLICIES}, "
                                 f"not {kwargs['policy']!r}")
            fns.append(partial(STEPS[name], **kwargs))
        if fns:
            out[side] = fns[0] if len(fns) == 1 else partial(_chain, fns)
    return out


def _chain(fns, text: str) -> str:
    for fn in fns:
        text = fn(text)
    return text
