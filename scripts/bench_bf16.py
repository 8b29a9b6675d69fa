#!/usr/bin/env python
"""Is bf16 autocast worth it on this CPU? One all-MiniLM-L6-v2 layer, fp32 against bf16 autocast, in the same run.

Times a training step (forward + backward) and an inference forward of the base's last layer on a batch of
``--batch`` texts of ``--length`` pieces, and prints the bf16 / fp32 time ratio beside what qpairs decides
(`qpairs.onnxrt.native_bf16`: bf16 autocast only on a CPU with AVX-512 BF16 or AMX).

    python scripts/bench_bf16.py --batch 32 --length 256
"""
from __future__ import annotations

import argparse
import time

import torch

from qpairs.encoders import resolve_base_model
from qpairs.onnxrt import native_bf16


def best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--length", type=int, default=256)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args(argv)
    from transformers import AutoModel

    layer = AutoModel.from_pretrained(resolve_base_model(None)).encoder.layer[-1]
    x = torch.randn(args.batch, args.length, layer.attention.self.query.in_features)
    mask = torch.zeros(args.batch, 1, 1, args.length)

    def train_step():
        layer(x, attention_mask=mask)[0].float().sum().backward()

    def forward():
        with torch.inference_mode():
            layer(x, attention_mask=mask)

    print(f"CPU capability {torch.backends.cpu.get_cpu_capability()}, native bf16: {native_bf16()}, "
          f"{torch.get_num_threads()} threads, batch {args.batch} x {args.length} pieces")
    print("| step | fp32 s | bf16 autocast s | bf16 / fp32 |\n|---|---|---|---|")
    for name, fn in (("training step (one layer)", train_step), ("inference forward (one layer)", forward)):
        fp32 = best_time(fn, args.repeats)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = best_time(fn, args.repeats)
        print(f"| {name} | {fp32:.2f} | {bf16:.2f} | {bf16 / fp32:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
