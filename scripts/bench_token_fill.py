"""Texts/s of the frozen base's token-state fill on this CPU: torch fp32, torch bf16 autocast, and ONNX Runtime fp32
(the pooled export, as a reference for the runtime's speed), on the same length-sorted batches.

    QPAIRS_CACHE=/tmp/qpairs_cache OMP_NUM_THREADS=1 python scripts/bench_token_fill.py --texts 300
"""
from __future__ import annotations

import argparse
import time

import pandas as pd
import torch

from qpairs import onnxrt
from qpairs.encoders import build_encoder, length_batches
from qpairs.tokencache import encode_states


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data/qqp/bimpm_dev.csv.gz")
    ap.add_argument("--texts", type=int, default=300)
    ap.add_argument("--max-length", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()
    frame = pd.read_csv(args.data, nrows=args.texts)
    texts = list(dict.fromkeys(list(frame["question1"].astype(str)) + list(frame["question2"].astype(str))))[: args.texts]
    enc = build_encoder(dict(type="transformer", pooling="mean", max_length=args.max_length, frozen_base=True)).eval()
    ref = None
    for precision in ("fp32", "bf16", "fp32", "bf16"):  # twice: the first pass warms up
        t0 = time.perf_counter()
        states = encode_states(enc, texts, "cpu", args.batch_size, precision)
        rate = len(texts) / (time.perf_counter() - t0)
        ref = ref if ref is not None or precision != "fp32" else states
        diff = max(float((a - b).abs().max()) for a, b in zip(states, ref))
        print(f"torch {precision}: {rate:.0f} texts/s (max |state − fp32 state| {diff:.1e})")
    runner = onnxrt.OnnxPooler(onnxrt.model_file(enc, "onnx"), torch.get_num_threads())
    for _ in range(2):
        t0 = time.perf_counter()
        for idx in length_batches(texts, args.batch_size):
            batch = enc.tokenize([texts[i] for i in idx])
            runner(batch["input_ids"], batch["attention_mask"])
        print(f"onnx fp32 (pooled): {len(texts) / (time.perf_counter() - t0):.0f} texts/s")


if __name__ == "__main__":
    main()
