"""What `qpairs index`, `search` and `dedup` do around a `QuestionIndex`: load the model, check it built the index,
read and index a question file."""
from __future__ import annotations

from pathlib import Path

from . import detector
from .data import DataError, read_questions
from .search import META, ModelMismatchError, QuestionIndex


def load_detector(model=None, index: QuestionIndex | None = None, device: str = "auto", backend: str = "auto"):
    """`model` (None: the bundled default model) as a detector; with `index`, refused unless it built the index.

    The model always comes from the caller, never from the index: ``meta.json`` records the fingerprint of
    the model that built it (a hash of its config, weights and vocabulary), which must match, and its path,
    only quoted in the error."""
    det = detector.load(model, device=device, backend=backend)
    if index is not None:
        try:
            index.check_model(det)
        except ModelMismatchError as exc:
            if not _built_by_the_earlier_default(index, det):
                raise
            raise ModelMismatchError(f"{exc} (the bundled default model is an ensemble now: an index built with an "
                                     "earlier bundled default opens with --model matching)") from None
    return det


def _built_by_the_earlier_default(index: QuestionIndex, det) -> bool:
    """True when the index names the bundled default folder but was built by what is now the bundled `matching`
    model (the default before it became an ensemble), and `det` is not that model."""
    from .search import model_fingerprint

    if (Path(str(index.meta.get("model_path"))).name != detector.BUNDLES["default"]
            or detector.bundle_name(getattr(det, "path", None)) == "matching"):
        return False
    try:
        matching = detector.load("matching", device="cpu", backend="torch")
    except (detector.ModelDirError, OSError):  # no bundle to compare with: no hint
        return False
    return model_fingerprint(matching) == index.meta.get("model_fingerprint")


def _check_ids_are_new(path, ids: list[str] | None, n: int, index: QuestionIndex, out) -> None:
    """Refuse, naming the file's row, an id of `path`'s `n` questions (None: numbered as `add` numbers them) that
    the index in `out` holds already."""
    from .tableio import row_where

    numbered = ids is None
    for r, x in enumerate(index.next_ids(n) if numbered else ids):
        if index.has_id(x):
            what = f"its number {x!r} (no id column)" if numbered else f"id {x!r}"
            raise DataError(f"{path}: {row_where(path, r)}: {what} is already in the index {out}; ids must be unique "
                            "across the files of one index" + ("; give the file an id column" if numbered else ""))


def _refuse_another_layout(index: QuestionIndex, det, out, kind, space, side) -> None:
    """Refuse an --append whose --kind, --space or --side (None: not given) differs from what the index was built
    with: the questions it adds would be stored otherwise than the rest."""
    from .search import resolve_side

    asked = {"--kind": (kind, index.meta["kind"]), "--space": (None if space == "auto" else space, index.space),
             "--side": (None if side is None else resolve_side(det, side), index.side)}
    for option, (given, stored) in asked.items():
        if given is not None and given != stored:
            raise ValueError(f"{out} was built with {option} {stored}; --append keeps it (leave {option} out, or build "
                             f"a new index for {option} {given})")


def index_file(path, out, model=None, text_col=None, id_col=None, kind: str | None = None, append: bool = False,
               device: str = "auto", batch_size: int | None = None, backend: str = "auto",
               space: str | None = None, side: str | None = None, bm25_weight: float | str = "auto",
               maxsim_weight: float | None = None) -> QuestionIndex:
    """`qpairs index`: read a question file, encode it and write (or, with `append`, extend) an index directory.
    `kind`, `space`, `side` and `maxsim_weight` left None take, for a new index, flat, auto, right and 0, and when
    appending the index's own (a different one is refused)."""
    out = Path(out)
    exists = (out / META).exists()
    if exists and not append:
        raise FileExistsError(f"{out} already holds an index: pass --append to add questions or choose another -o")
    ids, texts = read_questions(path, text_col, id_col)
    if exists:
        index = QuestionIndex.load(out)
        if bm25_weight != "auto" and float(bm25_weight) != index.bm25_weight:
            raise ValueError(f"{out} ranks with BM25 weight {index.bm25_weight}; --append keeps it (build a new index "
                             f"for weight {bm25_weight})")
        if maxsim_weight is not None and float(maxsim_weight) != index.maxsim_weight:
            raise ValueError(f"{out} ranks with MaxSim weight {index.maxsim_weight}; --append keeps it (build a new "
                             f"index for weight {maxsim_weight})")
        _check_ids_are_new(path, ids, len(texts), index, out)
        det = load_detector(model, index, device, backend)
        _refuse_another_layout(index, det, out, kind, space, side)
        index.add(det, texts, ids, batch_size=batch_size)
    else:
        det = load_detector(model, None, device, backend)
        index = QuestionIndex.build(det, texts, ids, kind=kind or "flat", batch_size=batch_size, space=space or "auto",
                                    side=side or "right", bm25_weight=bm25_weight, maxsim_weight=maxsim_weight or 0.0)
    if index.bm25_weight:
        index.lexical(det)  # saved beside the vectors
    index.save(out)
    return index
