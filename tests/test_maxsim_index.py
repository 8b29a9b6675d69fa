"""A model-space index with a MaxSim weight: token-level matching mixed into the similarity, as measured."""
import numpy as np
import pandas as pd
import pytest

pytest.importorskip("faiss")
pytest.importorskip("bm25s")

from qpairs.late import TokenStore, flatten, maxsim, unit_token_states  # noqa: E402
from qpairs.search import QuestionIndex, SearchIndexError  # noqa: E402
from qpairs.title_body_eval import embed_posts, fused_pool_ranks  # noqa: E402

from test_bm25_search import _posts, _pseudo_run  # noqa: E402


@pytest.fixture(scope="module")
def bank(tmp_path_factory):
    titles, bodies = _posts(60)
    return _pseudo_run(tmp_path_factory.mktemp("run"), titles, bodies), titles, bodies


def _ranks_through_index(index, det, titles):
    hits = index.search_many(det, titles, k=len(index))
    return np.array([[h.id for h in hs].index(str(i)) + 1 for i, hs in enumerate(hits)])


@pytest.mark.parametrize("m, w", [(1.0, 0.0), (0.5, 0.3)])
def test_the_index_ranks_as_the_measured_fusion(bank, m, w):
    det, titles, bodies = bank
    index = QuestionIndex.build(det, bodies, side="body", bm25_weight=w, maxsim_weight=m, progress=False)
    assert len(index.tokens) == len(bodies) and index.maxsim_weight == m
    posts = pd.DataFrame({"title": titles, "body": bodies})
    stored = [s.astype(np.float16) for s in unit_token_states(det.model.side("right"), det.preprocess(bodies, "right"))]
    states = (unit_token_states(det.model.side("left"), det.preprocess(titles, "left")), stored)  # kept as float16
    want = fused_pool_ranks(det, posts, *embed_posts(det, posts), len(posts), 0, [w], token_states=states,
                            token_shares=(m,))[(m, w)]
    np.testing.assert_array_equal(_ranks_through_index(index, det, titles), want)
    plain = QuestionIndex.build(det, bodies, side="body", bm25_weight=w, progress=False)
    assert not np.array_equal(_ranks_through_index(plain, det, titles), want)  # MaxSim changed the order


def test_maxsim_alone_orders_hits_by_the_late_interaction_score(bank):
    det, titles, bodies = bank
    index = QuestionIndex.build(det, bodies, side="body", maxsim_weight=1.0, progress=False)
    assert index.fused and not index.bm25_weight
    late = maxsim(unit_token_states(det.model.side("left"), det.preprocess(titles[:3], "left")),
                  unit_token_states(det.model.side("right"), det.preprocess(bodies, "right")))
    for row, hits in zip(late, index.search_many(det, titles[:3], k=5)):
        assert [int(h.id) for h in hits] == list(np.argsort(-row, kind="stable")[:5])
    alone = index.search(det, titles[1], k=5)  # a query's hits do not depend on the others searched with it
    assert [h.id for h in alone] == [h.id for h in index.search_many(det, titles[:3], k=5)[1]]
    hit = index.search(det, titles[0], k=1)[0]  # the probability is still the model's for the pair
    assert hit.probability == pytest.approx(float(det.predict_proba([titles[0]], [bodies[int(hit.id)]])[0]), abs=1e-5)


def test_candidates_beyond_the_extra_come_from_a_bank_larger_than_them(bank, monkeypatch):
    import qpairs.search

    det, titles, bodies = bank
    monkeypatch.setattr(qpairs.search, "MAXSIM_EXTRA", 5)  # 8 candidates per query out of 60 stored bodies
    index = QuestionIndex.build(det, bodies, side="body", maxsim_weight=0.5, progress=False)
    for weight in (0.0, 0.3):  # MaxSim alone, and fused with BM25
        index.meta["bm25_weight"] = weight
        hits = index.search_many(det, titles[:10], k=3)
        assert [len(h) for h in hits] == [3] * 10 and all(np.isfinite(x.score) for h in hits for x in h)


def test_saved_index_keeps_its_token_states_and_grows(bank, tmp_path):
    det, titles, bodies = bank
    index = QuestionIndex.build(det, bodies[:40], side="body", bm25_weight=0.1, maxsim_weight=0.5, progress=False)
    index.save(tmp_path / "idx")
    loaded = QuestionIndex.load(tmp_path / "idx")
    assert isinstance(loaded.tokens.states, np.memmap) and len(loaded.tokens) == 40
    before = [[h.id for h in hs] for hs in index.search_many(det, titles[:10], k=5)]
    assert [[h.id for h in hs] for hs in loaded.search_many(det, titles[:10], k=5)] == before
    loaded.add(det, bodies[40:], [str(i) for i in range(40, 60)])
    assert len(loaded.tokens) == 60
    grown = QuestionIndex.build(det, bodies, side="body", bm25_weight=0.1, maxsim_weight=0.5, progress=False)
    for a, b in zip(loaded.search_many(det, titles, k=3), grown.search_many(det, titles, k=3)):
        assert [h.id for h in a] == [h.id for h in b]
        np.testing.assert_allclose([h.score for h in a], [h.score for h in b], rtol=1e-5, atol=1e-5)


def test_a_missing_or_short_token_file_is_named(bank, tmp_path):
    det, _, bodies = bank
    QuestionIndex.build(det, bodies[:10], side="body", maxsim_weight=0.5, progress=False).save(tmp_path / "a")
    (tmp_path / "a" / "token_states.npy").unlink()
    with pytest.raises(SearchIndexError, match="token_states.npy is missing"):
        QuestionIndex.load(tmp_path / "a")
    index = QuestionIndex.build(det, bodies[:10], side="body", maxsim_weight=0.5, progress=False)
    index.tokens.offsets = index.tokens.offsets[:-1]  # one text's states lost
    index.save(tmp_path / "b")
    with pytest.raises(SearchIndexError, match="token states of 9 texts for an index of 10"):
        QuestionIndex.load(tmp_path / "b")


def test_bad_weights_and_missing_states_are_refused(bank):
    det, _, bodies = bank
    with pytest.raises(ValueError, match=r"MaxSim weight must lie in \(0, 1\]"):
        QuestionIndex.empty(det, side="body", maxsim_weight=1.5)
    index = QuestionIndex.empty(det, side="body", maxsim_weight=0.5)
    vectors = index.query_vectors(det, bodies[:2], "right")
    with pytest.raises(ValueError, match="token states of each of the 2 texts"):
        index.add_embeddings(det, vectors, ["a", "b"], bodies[:2])


def test_index_file_append_keeps_the_weight(bank, tmp_path):
    from qpairs.search_commands import index_file

    det, _, bodies = bank
    path = tmp_path / "q.csv"
    pd.DataFrame({"id": range(10), "text": bodies[:10]}).to_csv(path, index=False)
    index_file(path, tmp_path / "idx", det.path, side="body", maxsim_weight=0.5, device="cpu", backend="torch")
    pd.DataFrame({"id": range(10, 20), "text": bodies[10:20]}).to_csv(path, index=False)
    with pytest.raises(ValueError, match="MaxSim weight 0.5; --append keeps it"):
        index_file(path, tmp_path / "idx", det.path, append=True, maxsim_weight=0.2, device="cpu", backend="torch")
    grown = index_file(path, tmp_path / "idx", det.path, append=True, device="cpu", backend="torch")
    assert len(QuestionIndex.load(tmp_path / "idx").tokens) == 20 and grown.maxsim_weight == 0.5


def test_token_store_rows_and_flatten():
    rng = np.random.default_rng(0)
    texts = [rng.normal(size=(n, 4)).astype(np.float32) for n in (2, 5, 1)]
    store = TokenStore()
    store.append(texts[:2])
    store.append(texts[2:])
    assert len(store) == 3 and store.states.dtype == np.float16
    for got, want in zip(store[[2, 0]], [texts[2], texts[0]]):
        np.testing.assert_allclose(got, want, atol=2e-3)
    flat, starts = flatten(texts)
    assert starts.tolist() == [0, 2, 7] and flat.shape == (8, 4)
    queries = [texts[1][:2]]
    np.testing.assert_allclose(maxsim(queries, (flat, starts)), maxsim(queries, texts), rtol=1e-6)



def test_the_cli_builds_and_searches_a_maxsim_index(bank, tmp_path, capsys):
    import json

    from qpairs.cli import main

    det, titles, bodies = bank
    pd.DataFrame({"id": range(len(bodies)), "question": bodies}).to_csv(tmp_path / "bodies.csv", index=False)
    assert main(["index", str(tmp_path / "bodies.csv"), "-o", str(tmp_path / "idx"), "--model", str(det.path),
                 "--side", "body", "--maxsim-weight", "0.5", "--backend", "torch"]) == 0
    assert "BM25 weight 0.1, MaxSim weight 0.5) written to" in capsys.readouterr().out
    assert (tmp_path / "idx" / "token_states.npy").exists()
    assert main(["search", str(tmp_path / "idx"), titles[7], "-k", "3", "--model", str(det.path), "--json",
                 "--backend", "torch"]) == 0
    out = capsys.readouterr().out
    api = QuestionIndex.build(det, bodies, side="body", bm25_weight=0.1, maxsim_weight=0.5,
                              progress=False).search(det, titles[7], k=3)
    assert [h["id"] for h in json.loads(out[out.index("["):])] == [h.id for h in api]
    with pytest.raises(SystemExit):
        main(["index", str(tmp_path / "bodies.csv"), "-o", str(tmp_path / "idx2"), "--maxsim-weight", "-0.1"])
    assert "expected a number in [0, 1], got -0.1" in capsys.readouterr().err


def test_saving_a_loaded_index_over_itself_keeps_its_token_states(bank, tmp_path):
    det, titles, bodies = bank
    QuestionIndex.build(det, bodies[:20], side="body", maxsim_weight=0.5, progress=False).save(tmp_path / "idx")
    loaded = QuestionIndex.load(tmp_path / "idx")  # memory-mapped from the files it is saved over
    before = [[h.id for h in hs] for hs in loaded.search_many(det, titles[:5], k=3)]
    loaded.save(tmp_path / "idx")
    again = QuestionIndex.load(tmp_path / "idx")
    assert [[h.id for h in hs] for hs in again.search_many(det, titles[:5], k=3)] == before
    np.testing.assert_array_equal(np.asarray(again.tokens.states), np.asarray(loaded.tokens.states))


def test_token_states_drop_only_a_transformers_special_tokens(bank):
    det, titles, _ = bank
    encoder = det.model.side("left")  # a BiLSTM: one state per word, none of them special
    states = unit_token_states(encoder, titles[:2])
    assert [len(s) for s in states] == [len(ids) for ids in encoder.token_ids(titles[:2])]
    np.testing.assert_allclose(np.linalg.norm(states[0], axis=1), 1.0, rtol=1e-5)


def test_a_transformers_token_states_leave_out_cls_and_sep(tiny_bert):
    from qpairs.encoders import build_encoder
    from qpairs.tokencache import encode_states

    enc = build_encoder({"type": "transformer", "pooling": "mean", "max_length": 32, "base_model": str(tiny_bert),
                         "projection_dim": None, "normalize": True, "frozen_base": True})
    text = "How do I salt a hash?"
    full = encode_states(enc, [text])[0]  # [CLS] pieces… [SEP]
    states = unit_token_states(enc, [text])[0]
    assert len(states) == len(full) - 2
    np.testing.assert_allclose(states, (full[1:-1] / full[1:-1].norm(dim=-1, keepdim=True)).numpy(), rtol=1e-5)
