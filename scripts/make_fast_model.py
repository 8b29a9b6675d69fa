"""Copy a trained BiLSTM run into `qpairs/fast_model/` (the model `qpairs.load("fast")` and `--model fast` load).

Only what loading needs is copied (config, weights, calibration, vocabulary, metrics); the weights
are stored in fp16 (safetensors) and cast back to float32 when loaded. Prints the total size and
how far the fp16 copy's probabilities are from the run's; refuses anything over 15 MB.

    python scripts/make_fast_model.py runs/fast
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from qpairs.checkpoint import copy_run_files
from qpairs.detector import bundled_model_dir, load

KEEP = ("config.json", "calibration.json", "metrics.json", "history.json", "encoder")
MAX_BYTES = 15 * 2**20
SAMPLE = [("How do I learn Python?", "What is the best way to learn Python?"),
          ("How do I learn Python?", "How do I cook pasta?"),
          ("Is it hard to learn the piano as an adult?", "How difficult is the piano for a grown-up beginner?"),
          ("What is the capital of France?", "Which city is the capital of France?")]


def to_fp16(src: Path, dst: Path) -> None:
    """The safetensors file `src` with every float tensor stored as fp16."""
    state = load_file(src)
    save_file({k: v.half().contiguous() if v.is_floating_point() else v for k, v in state.items()}, dst)


def package(run, out) -> dict:
    """Write the fp16 bundle of `run` into `out`; returns its size and the largest probability change."""
    run, out = Path(run), Path(out)
    cfg = json.loads((run / "config.json").read_text())
    if cfg.get("encoder", {}).get("type") != "lstm" or "right_encoder" in cfg:
        raise SystemExit(f"{run}: the fast model must be a Siamese BiLSTM run, got encoder "
                         f"{cfg.get('encoder', {}).get('type')!r}{' (pseudo-Siamese)' if 'right_encoder' in cfg else ''}")
    new = out.with_name(out.name + ".new")  # the target is replaced only by a bundle within the limit
    shutil.rmtree(new, ignore_errors=True)
    copy_run_files(run, new, KEEP)
    to_fp16(run / "model.safetensors", new / "model.safetensors")
    size = sum(f.stat().st_size for f in new.rglob("*") if f.is_file())
    if size > MAX_BYTES:
        shutil.rmtree(new)
        raise SystemExit(f"{run} packs to {size / 2**20:.1f} MB, over the {MAX_BYTES // 2**20} MB limit; {out} is "
                         "left as it was")
    if out.exists():
        shutil.rmtree(out)
    new.rename(out)
    q1, q2 = [a for a, _ in SAMPLE], [b for _, b in SAMPLE]
    with torch.inference_mode():
        full = load(run, device="cpu", backend="torch").predict_proba(q1, q2)
        half = load(out, device="cpu", backend="torch").predict_proba(q1, q2)
    return {"bytes": size, "max_probability_change": float(abs(full - half).max())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="BiLSTM run directory written by qpairs train")
    ap.add_argument("--out", default=str(bundled_model_dir("fast")), help="target (default: qpairs/fast_model)")
    args = ap.parse_args()
    r = package(args.run, args.out)
    print(f"{args.out}: {r['bytes'] / 2**20:.2f} MB in total (fp16 weights); largest probability change against "
          f"{args.run} on {len(SAMPLE)} sample pairs: {r['max_probability_change']:.2e}")


if __name__ == "__main__":
    main()
