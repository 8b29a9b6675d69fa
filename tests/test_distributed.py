"""DDP training with 2 CPU processes (gloo), started as torchrun would start them.

Each worker sets torchrun's environment variables and runs `qpairs train` through the CLI.
Checked: both ranks end with identical weights, the loss goes down, and the 2-process run
with batch b per process matches a 1-process run with batch 2b (same data order, no dropout,
unweighted loss), i.e. "the same results as one process up to batch-size effects".
"""
from __future__ import annotations

import json
import os
import random
import socket
import time

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

TOPICS = ("python java rust golang haskell kotlin swift scala ruby perl physics chemistry biology algebra "
          "geometry calculus history poetry painting music guitar piano chess soccer tennis cooking baking "
          "running swimming cycling").split()
BATCH = 16  # per process; the single-process reference uses 2 * BATCH
ARGS = ["--encoder", "lstm", "--no-glove", "--embedding-dim", "16", "--hidden-size", "16", "--projection-dim", "16",
        "--dropout", "0", "--epochs", "2", "--balance", "none", "--max-train-pairs", "192", "--lr", "0.01",
        "--min-freq", "1", "--calibration", "platt", "--warmup", "0", "--no-progress"]


def make_pairs(path, n: int = 480, seed: int = 0) -> None:
    """Learnable pairs: duplicates share both topic words, non-duplicates share none."""
    rng = random.Random(seed)
    rows = ["id,qid1,qid2,question1,question2,is_duplicate"]
    for i in range(n):
        a, b, c, d = rng.sample(TOPICS, 4)
        dup = i % 2
        q2 = f"what is the best way to study {a} and {b} q{i}b" if dup else f"how can i get good at {c} and {d} q{i}b"
        rows.append(f"{i},{2 * i},{2 * i + 1},how do i learn {a} and {b} q{i}a,{q2},{dup}")
    path.write_text("\n".join(rows) + "\n")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rows(seed: int, n: int = 3) -> torch.Tensor:
    return torch.randn(n, 4, generator=torch.Generator().manual_seed(seed))


def _check_gather(rank: int, world: int, port: int, out: str) -> None:
    """all_gather_with_grad (uneven rows; an in-batch loss) on its own short-lived process group."""
    import torch.distributed as dist

    from qpairs.distributed import all_gather_with_grad
    from qpairs.losses import MultipleNegativesRankingLoss

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    x = torch.full((rank + 1, 2), float(rank + 1), requires_grad=True)
    gathered = all_gather_with_grad(x)
    (gathered * torch.arange(6.0).view(3, 2)).sum().backward()
    # in-batch InfoNCE over the gathered global batch, as qpairs.objective does under torchrun
    anchor = _rows(rank).requires_grad_()
    mnrl = MultipleNegativesRankingLoss()(all_gather_with_grad(anchor), all_gather_with_grad(_rows(10 + rank)))
    mnrl.backward()
    save_file({"gathered": gathered.detach(), "grad": x.grad, "mnrl": mnrl.detach().reshape(1),
               "mnrl_grad": anchor.grad}, os.path.join(out, f"gather{rank}.safetensors"))
    dist.destroy_process_group()


def _worker(rank: int, world: int, ports: tuple[int, int], out: str, data: str) -> None:
    torch.set_num_threads(1)
    _check_gather(rank, world, ports[1], out)
    # what torchrun sets; `qpairs train` joins the group from these
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(ports[0]))
    from qpairs import cli, distributed

    captured = {}
    wrap = distributed.wrap_for_training

    def spy(model, device):
        captured["model"] = model
        return wrap(model, device)

    distributed.wrap_for_training = spy
    assert cli.main(["train", "--data", data, "--out", os.path.join(out, "ddp"), "--batch-size", str(BATCH),
                     "--device", "cpu", *ARGS]) == 0
    params = {k: v.detach().contiguous() for k, v in captured["model"].named_parameters()}
    save_file(params, os.path.join(out, f"rank{rank}.safetensors"))


def _spawn(fn, args, nprocs: int = 2, timeout: float = 120) -> None:
    ctx = mp.spawn(fn, args=args, nprocs=nprocs, join=False)
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"distributed workers did not finish within {timeout:.0f} s (deadlock?)")


def test_two_gloo_processes_train_in_sync_and_match_one_process(tmp_path):
    from qpairs import cli

    data = tmp_path / "pairs.csv"
    make_pairs(data)
    _spawn(_worker, (2, (_free_port(), _free_port()), str(tmp_path), str(data)))

    rank0, rank1 = load_file(tmp_path / "rank0.safetensors"), load_file(tmp_path / "rank1.safetensors")
    assert rank0.keys() == rank1.keys()
    for k in rank0:
        assert torch.equal(rank0[k], rank1[k]), f"{k} differs between ranks"

    history = json.loads((tmp_path / "ddp" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    assert history[1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["val_roc_auc"] > 0.9
    assert (tmp_path / "ddp" / "metrics.json").exists() and (tmp_path / "ddp" / "model.safetensors").exists()

    # the same run in one process, with the two processes' batches put together
    single = tmp_path / "single"
    assert cli.main(["train", "--data", str(data), "--out", str(single), "--batch-size", str(2 * BATCH),
                     "--device", "cpu", *ARGS]) == 0
    single_hist = json.loads((single / "history.json").read_text())
    for a, b in zip(history, single_hist):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4)
    # same model: compare what it computes (a bias that cancels in e1 − e2 only drifts with float noise)
    import pandas as pd
    import qpairs

    pairs = pd.read_csv(data)
    q1, q2 = list(pairs["question1"]), list(pairs["question2"])
    ddp_d = qpairs.load(tmp_path / "ddp", device="cpu", backend="torch").distances(q1, q2)
    single_d = qpairs.load(single, device="cpu", backend="torch").distances(q1, q2)
    np.testing.assert_allclose(ddp_d, single_d, rtol=1e-3, atol=1e-4)

    for rank in range(2):  # all_gather_with_grad, checked in the same workers
        got = load_file(tmp_path / f"gather{rank}.safetensors")
        assert got["gathered"].tolist() == [[1.0, 1.0], [2.0, 2.0], [2.0, 2.0]]
        # each rank's rows get the gradient summed over both ranks' (identical) losses: 2 * coeff
        expected = 2 * torch.arange(6.0).view(3, 2)[[0] if rank == 0 else [1, 2]]
        assert torch.equal(got["grad"], expected)

    # the gathered in-batch loss is the one-process loss of the whole global batch, and each process's
    # rows get (world ×) its gradient, which DDP's averaging turns into exactly that gradient
    from qpairs.losses import MultipleNegativesRankingLoss

    anchors = torch.cat([_rows(0), _rows(1)]).requires_grad_()
    whole = MultipleNegativesRankingLoss()(anchors, torch.cat([_rows(10), _rows(11)]))
    whole.backward()
    for rank in range(2):
        got = load_file(tmp_path / f"gather{rank}.safetensors")
        torch.testing.assert_close(got["mnrl"][0], whole.detach())
        torch.testing.assert_close(got["mnrl_grad"], 2 * anchors.grad[3 * rank : 3 * rank + 3])
