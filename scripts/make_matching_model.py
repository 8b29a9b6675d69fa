"""Copy a trained run into `qpairs/matching_model/` (the bundled `matching` model, the primary member of the
bundled default ensemble; `qpairs ensemble matching fast ... -o qpairs/default_model` refits that ensemble).

Only what loading needs is copied (config, head weights, calibration, tokenizer files, metrics);
the run must have a frozen, packaged base (``--freeze-base`` with the default ``--base-model``)
so the bundled directory stays small. Refuses anything over 10 MB.

    python scripts/make_matching_model.py runs/default
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from qpairs.checkpoint import copy_run_files
from qpairs.detector import bundled_model_dir, load
from qpairs.encoders import DEFAULT_BASE

READ_LENGTH = 256  # tokens per question a bundled model reads at inference, as many as all-MiniLM-L6-v2 reads
KEEP = ("config.json", "model.safetensors", "calibration.json", "metrics.json", "history.json", "encoder")
MAX_BYTES = 10 * 2**20


PATH_KEYS = ("out", "data", "extra_train", "teacher_labels", "teacher", "embedding_cache")


def portable(path: str) -> str:
    """A training path as the bundle records it: relative to the working directory, never absolute."""
    p = Path(path)
    if not p.is_absolute():
        return path
    try:
        return str(p.relative_to(Path.cwd()))
    except ValueError:
        return p.name


def strip_local_paths(config_file: Path) -> None:
    """Rewrite the absolute paths of the run's training settings in the bundled config.json."""
    config = json.loads(config_file.read_text())
    train = config.get("train") or {}
    for key in PATH_KEYS:
        value = train.get(key)
        if isinstance(value, str):
            train[key] = portable(value)
        elif isinstance(value, list):
            train[key] = [portable(v) for v in value]
    config_file.write_text(json.dumps(config, indent=2) + "\n")


def set_max_length(config_file: Path, tokens: int) -> None:
    """Make the bundled model read `tokens` tokens (words for a BiLSTM) per question at inference.

    Training may have kept fewer (a cache of short token states; ``train.max_length`` records that):
    longer questions, such as forum posts, were cut short at that length."""
    config = json.loads(config_file.read_text())
    for side in ("encoder", "right_encoder"):
        if side in config:
            config[side]["max_length"] = int(tokens)
    config_file.write_text(json.dumps(config, indent=2) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="run directory written by qpairs train")
    ap.add_argument("--out", default=str(bundled_model_dir("matching")), help="target (default: qpairs/matching_model)")
    ap.add_argument("--max-length", type=int, default=READ_LENGTH,
                    help=f"tokens read per question at inference (default: {READ_LENGTH})")
    args = ap.parse_args()
    run, out = Path(args.run), Path(args.out)
    enc = json.loads((run / "config.json").read_text())["encoder"]
    if not enc.get("frozen_base") or enc.get("base_model") != DEFAULT_BASE:
        raise SystemExit(f"{run}: the matching model must have a frozen base named {DEFAULT_BASE!r}, "
                         f"got frozen_base={enc.get('frozen_base')}, base_model={enc.get('base_model')!r}")
    new = out.with_name(out.name + ".new")  # the target is replaced only by a bundle within the limit
    shutil.rmtree(new, ignore_errors=True)
    copy_run_files(run, new, KEEP)
    strip_local_paths(new / "config.json")
    set_max_length(new / "config.json", args.max_length)
    size = sum(f.stat().st_size for f in new.rglob("*") if f.is_file())
    if size > MAX_BYTES:
        shutil.rmtree(new)
        raise SystemExit(f"{run} packs to {size / 2**20:.1f} MB, over the 10 MB limit; {out} is left as it was")
    if out.exists():
        shutil.rmtree(out)
    new.rename(out)
    det = load(out, device="cpu")
    p = det.predict_proba("How do I learn Python?", "What is the best way to learn Python?")
    print(f"{out}: {size / 2**20:.2f} MB, loads as {det}; sample probability {p:.3f}")


if __name__ == "__main__":
    main()
