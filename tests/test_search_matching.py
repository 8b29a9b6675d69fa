"""Search and dedup with a matching pair head: pooled candidates, re-scored on both questions' token states."""
import json

import numpy as np
import pandas as pd
import pytest

import qpairs
from qpairs.cli import main
from qpairs.dedup import dedup, duplicate_edges
from qpairs.search import QuestionIndex
from _tiny_models import tiny_matching_dir
from tiny_search_model import bank_csv, bank_questions, make_tiny_model

QUERY = "How do I learn python fast?"


@pytest.fixture(scope="module")
def matching_det(tiny_bert, tmp_path_factory):
    return qpairs.load(tiny_matching_dir(tmp_path_factory.mktemp("matching"), tiny_bert), device="cpu")


@pytest.fixture(scope="module")
def bank():
    return bank_questions()


@pytest.mark.parametrize("space", ["base", "model"])
def test_search_ranks_by_the_pair_probability_of_the_matching_head(matching_det, bank, space):
    det = matching_det
    index = QuestionIndex.build(det, bank, [f"q{i}" for i in range(len(bank))], space=space)
    everything = index.search(det, QUERY, k=8, rerank=len(bank))  # every stored question re-scored
    p = det.predict_proba([QUERY] * len(bank), bank)
    assert [h.text for h in everything] == [bank[i] for i in np.argsort(-p, kind="stable")[:8]]
    np.testing.assert_allclose([h.probability for h in everything], np.sort(p)[::-1][:8], rtol=0, atol=1e-6)
    assert [h.score for h in everything] == [h.probability for h in everything]  # the shown probability ranks

    vectors = index.query_vectors(det, [QUERY])
    for k, rerank in [(5, None), (5, 30), (3, 2)]:  # candidates re-scored: the pooled best max(k, rerank)
        n = max(k, rerank or k)
        rows = index.shortlist([QUERY], vectors, index.knn(vectors, n + 20, few_fast=True), n)[0]
        cand = [bank[r] for r in rows]
        pc = det.predict_proba([QUERY] * len(cand), cand)
        hits = index.search(det, QUERY, k=k, rerank=rerank)
        assert [h.text for h in hits] == [cand[i] for i in np.argsort(-pc, kind="stable")[:k]]
        np.testing.assert_allclose([h.probability for h in hits], np.sort(pc)[::-1][:k], rtol=0, atol=1e-6)
        np.testing.assert_allclose([h.distance for h in hits], det.distances([QUERY] * k, [h.text for h in hits]),
                                   rtol=0, atol=1e-5)
    many = index.search_many(det, [QUERY, bank[7]], k=4)
    assert [h.id for h in many[0]] == [h.id for h in index.search(det, QUERY, k=4)]
    assert det.search(index, QUERY, k=3, rerank=30) == index.search(det, QUERY, k=3, rerank=30)
    assert len(index.search(det, QUERY, k=10_000)) == len(bank)  # k larger than the bank
    with pytest.raises(ValueError, match="rerank must be a whole number of at least 1"):
        index.search(det, QUERY, k=3, rerank=0)


def test_dedup_edges_are_the_pair_probabilities_of_the_matching_head(matching_det, bank, monkeypatch):
    from qpairs import pair_scores

    det = matching_det
    texts = bank[:60]
    index = QuestionIndex.build(det, texts)
    encoded = []
    real = pair_scores.encode_states
    monkeypatch.setattr(pair_scores, "encode_states", lambda enc, todo, *a, **kw: encoded.extend(todo) or real(enc, todo, *a, **kw))
    src, dst, prob = duplicate_edges(det, index, k=4, threshold=0.0, chunk_size=25)
    assert sorted(encoded) == sorted(texts)  # each text's token states computed once across the chunks
    monkeypatch.undo()
    assert len(src) == 4 * len(texts) and not (src == dst).any()  # k neighbours each, never itself
    pairs = det.predict_proba([texts[i] for i in src], [texts[j] for j in dst])
    np.testing.assert_allclose(prob, pairs, rtol=0, atol=1e-6)
    frame = dedup(det, texts, k=4)
    best = {i: max(prob[src == i]) for i in range(len(texts))}
    np.testing.assert_allclose(frame["best_probability"], [best[i] for i in range(len(texts))], rtol=0, atol=1e-6)


def test_cli_search_rerank_with_a_matching_run_and_refused_for_a_pooled_one(matching_det, tmp_path, capsys):
    model = str(matching_det.path)
    bank_csv(tmp_path / "bank.csv")
    assert main(["index", str(tmp_path / "bank.csv"), "-o", str(tmp_path / "idx"), "--model", model]) == 0
    capsys.readouterr()
    assert main(["search", str(tmp_path / "idx"), QUERY, "-k", "4", "--rerank", "40", "--model", model,
                 "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert len(hits) == 4 and [h["score"] for h in hits] == [h["probability"] for h in hits]
    assert [h["probability"] for h in hits] == sorted((h["probability"] for h in hits), reverse=True)
    np.testing.assert_allclose([h["probability"] for h in hits],
                               matching_det.predict_proba([QUERY] * 4, [h["text"] for h in hits]), rtol=0, atol=1e-6)

    pooled = str(make_tiny_model(tmp_path / "pooled"))
    assert main(["index", str(tmp_path / "bank.csv"), "-o", str(tmp_path / "pidx"), "--model", pooled]) == 0
    capsys.readouterr()
    assert main(["search", str(tmp_path / "pidx"), QUERY, "--rerank", "40", "--model", pooled]) == 2
    err = capsys.readouterr().err.strip()
    assert "--pair-head matching" in err and len(err.splitlines()) == 1


def test_service_search_batches_give_each_query_its_own_search(matching_det, bank):
    from qpairs.service import search_each

    index = QuestionIndex.build(matching_det, bank)
    queries = [(QUERY, 2), (bank[3], 6), (QUERY, 6), (bank[3], 1)]
    batched = search_each(matching_det, index, queries)
    assert [[h.id for h in hits] for hits in batched] == [[h.id for h in index.search(matching_det, q, k)]
                                                          for q, k in queries]


def test_state_memo_drops_the_oldest_states_past_its_budget():
    import torch

    from qpairs.pair_scores import StateMemo

    memo = StateMemo(max_values=16)
    memo.add({"a": torch.zeros(2, 4), "b": torch.zeros(1, 4)})
    memo.add({"a": torch.ones(2, 4), "c": torch.zeros(2, 4)})  # "a" is kept as first computed; then over budget
    assert list(memo) == ["b", "c"] and memo.values == 12


def test_score_runs_a_matching_head_at_the_asked_batch_size_and_refuses_a_cache_size(matching_det, bank, tmp_path,
                                                                                     monkeypatch):
    import qpairs.detector
    from qpairs import pair_scores
    from qpairs.scoring import score_file

    pd.DataFrame({"id": range(20), "question1": bank[:20], "question2": bank[20:40]}).to_csv(tmp_path / "in.csv",
                                                                                           index=False)
    sizes = []
    real = pair_scores.pair_distances
    monkeypatch.setattr(qpairs.detector, "pair_distances",
                        lambda model, a, b, device, batch_size=256, *r, **kw: sizes.append(batch_size)
                        or real(model, a, b, device, batch_size, *r, **kw))
    score_file(tmp_path / "in.csv", tmp_path / "a.csv", matching_det, batch_size=3, progress=False)
    assert sizes and set(sizes) == {3} and matching_det.batch_size == 256  # the caller's detector is left as it was
    score_file(tmp_path / "in.csv", tmp_path / "b.csv", matching_det, progress=False)
    assert sizes[-1] == 256
    a, b = pd.read_csv(tmp_path / "a.csv"), pd.read_csv(tmp_path / "b.csv")
    np.testing.assert_allclose(a["duplicate_probability"], b["duplicate_probability"], atol=1e-5)
    with pytest.raises(ValueError, match="leave --cache-size out"):
        score_file(tmp_path / "in.csv", tmp_path / "c.csv", matching_det, cache_size=100, progress=False)
