"""Row shards: Python threads with single-threaded torch ops give the results of one thread."""
from __future__ import annotations

import threading

import pytest
import torch

from conftest import make_pairs
from qpairs.encoders import LSTMEncoder
from qpairs.matching import MatchingHead
from qpairs.model import SiameseModel
from qpairs.threads import run_shards, split
from qpairs.pair_scores import pair_distances
from qpairs.vocab import WordVocab


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_split_deals_every_item_once():
    parts = split(list(range(7)), 3)
    assert parts == [[0, 3, 6], [1, 4], [2, 5]]
    assert split([1, 2], 1) == [[1, 2]]


def test_run_shards_keeps_order_carries_the_callers_modes_and_restores_threads(two_threads):
    def probe(shard):
        return (shard, torch.is_inference_mode_enabled(), torch.is_autocast_enabled("cpu"),
                torch.get_autocast_dtype("cpu"), torch.get_num_threads(), threading.current_thread().name)

    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        got = run_shards(probe, list(range(6)), 2)
    assert [g[0] for g in got] == list(range(6))
    assert all(g[1:5] == (True, True, torch.bfloat16, 1) for g in got)
    assert all(g[5].startswith("qpairs-shard") for g in got)
    assert torch.get_num_threads() == 2
    assert run_shards(probe, [0], 2)[0][1:5] == (False, False, torch.bfloat16, 1)  # one shard: inline, ops single-threaded
    assert torch.get_num_threads() == 2


def _bilstm_matching_model() -> tuple[SiameseModel, list[str], list[str]]:
    torch.manual_seed(0)
    pairs = make_pairs(400, seed=3)
    q1, q2 = list(pairs["question1"]), list(pairs["question2"])
    vocab = WordVocab.build(q1 + q2, min_freq=1)
    encoder = LSTMEncoder(vocab, embedding_dim=16, hidden_size=16, projection_dim=16, max_length=20)
    model = SiameseModel(encoder, "cosine", pair_head=MatchingHead(encoder.hidden_out, encoder.dim, proj=8, mlp=8))
    return model.eval(), q1, q2


@pytest.mark.parametrize("bf16", [False, True])
def test_sharded_matching_scores_equal_one_threads_and_singles(two_threads, bf16):
    model, q1, q2 = _bilstm_matching_model()
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)
    with autocast:
        sharded = pair_distances(model, q1, q2, "cpu", batch_size=32, block=128)
        torch.set_num_threads(1)
        one_thread = pair_distances(model, q1, q2, "cpu", batch_size=32, block=128)
        singles = torch.cat([pair_distances(model, [a], [b], "cpu") for a, b in zip(q1[:40], q2[:40])])
    assert sharded.std() > 0
    if bf16:  # the unpacked bf16 LSTM is batch-invariant bit for bit
        assert torch.equal(sharded, one_thread) and torch.equal(sharded[:40], singles)
    else:
        torch.testing.assert_close(sharded, one_thread, rtol=0, atol=1e-5)
        torch.testing.assert_close(sharded[:40], singles, rtol=0, atol=1e-5)
