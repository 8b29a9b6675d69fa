"""A model-space index with a BM25 weight: candidates from both scores, ranked by the fused standardised scores."""
import json

import numpy as np
import pytest
import torch

pytest.importorskip("faiss")
pytest.importorskip("bm25s")

import qpairs  # noqa: E402
from qpairs.bm25 import LexicalIndex, fused_scores, stats_rows  # noqa: E402
from qpairs.calibration import Calibrator  # noqa: E402
from qpairs.checkpoint import save_model, write_json  # noqa: E402
from qpairs.encoders import LSTMEncoder  # noqa: E402
from qpairs.model import SiameseModel  # noqa: E402
from qpairs.retrieval import pairwise_distances  # noqa: E402
from qpairs.search import QuestionIndex, other_side  # noqa: E402
from qpairs.vocab import WordVocab  # noqa: E402

WORDS = ("cipher key block hash salt nonce curve prime field group random stream padding mode signature proof "
         "protocol attack oracle secret share entropy seed round").split()
RARE = [f"zorblax{i}" for i in range(60)]  # one word per post that no other post uses


def _posts(n: int, seed: int = 0):
    """Titles and bodies of generated posts: post i's title and body share the rare word RARE[i]."""
    rng = np.random.default_rng(seed)
    titles = [" ".join(rng.choice(WORDS, 5)) + f" {RARE[i]}?" for i in range(n)]
    bodies = [" ".join(rng.choice(WORDS, 30)) + f" {RARE[i]} " + " ".join(rng.choice(WORDS, 10)) for i in range(n)]
    return titles, bodies


def _pseudo_run(directory, titles, bodies):
    """A random pseudo-Siamese run (two BiLSTMs, euclidean), trained as title → body."""
    vocab = WordVocab.build(titles + bodies, min_freq=1)
    torch.manual_seed(0)
    left = LSTMEncoder(vocab, embedding_dim=8, hidden_size=8, projection_dim=8, max_length=48)
    right = LSTMEncoder(vocab, embedding_dim=8, hidden_size=8, projection_dim=8, max_length=48)
    save_model(SiameseModel(left, "euclidean", right).eval(), directory, {"left_col": "title", "right_col": "body"})
    write_json(directory / "calibration.json", Calibrator("platt").fit(np.array([0.1, 0.2, 1.5, 2.0]),
                                                                       np.array([1, 1, 0, 0])).to_dict())
    return qpairs.load(directory, device="cpu", backend="torch")


@pytest.fixture(scope="module")
def bank(tmp_path_factory):
    titles, bodies = _posts(60)
    det = _pseudo_run(tmp_path_factory.mktemp("run"), titles, bodies)
    return det, titles, bodies


def test_hits_follow_the_fused_formula_over_the_whole_bank(bank):
    det, titles, bodies = bank
    index = QuestionIndex.build(det, bodies, side="body", bm25_weight=0.3, progress=False)
    assert index.side == "right" and index.bm25_weight == 0.3
    queries = titles[:5]
    hits = index.search_many(det, queries, k=len(bodies))
    t_emb = det.encode(queries, "left")
    b_emb = det.encode(bodies, "right")
    similarity = -pairwise_distances(t_emb, b_emb, det.model.distance_metric)
    lexical = LexicalIndex.build(bodies).scores(queries)
    want = fused_scores(similarity, lexical, 0.3)
    for row, query_hits in zip(want, hits):
        assert len(query_hits) == len(bodies)
        got = {int(h.id): h.score for h in query_hits}
        np.testing.assert_allclose([got[i] for i in range(len(bodies))], row, rtol=1e-4, atol=1e-4)
        assert [h.score for h in query_hits] == sorted((h.score for h in query_hits), reverse=True)
    for row, top3 in zip(want, index.search_many(det, queries, k=3)):  # standardised over the bank, not the hits
        np.testing.assert_allclose([h.score for h in top3], np.sort(row)[::-1][:3], rtol=1e-4, atol=1e-4)


def test_a_shared_rare_word_finds_the_body_that_the_random_model_misses(bank):
    det, titles, bodies = bank
    plain = QuestionIndex.build(det, bodies, side="body", bm25_weight=0.0, progress=False)
    fused = QuestionIndex.build(det, bodies, side="body", bm25_weight=0.5, progress=False)
    first_plain = [int(h[0].id) for h in plain.search_many(det, titles, k=3)]
    first_fused = [int(h[0].id) for h in fused.search_many(det, titles, k=3)]
    assert np.mean(np.array(first_plain) == np.arange(len(titles))) < 0.5  # an untrained model: mostly wrong
    assert first_fused == list(range(len(titles)))  # each title's rare word is in its own body only


def test_candidates_come_from_bm25_beyond_the_model_neighbours(bank):
    det, titles, bodies = bank
    index = QuestionIndex.build(det, bodies, side="body", bm25_weight=1.0, progress=False)
    for i, query_hits in enumerate(index.search_many(det, titles, k=1)):
        assert query_hits[0].id == str(i)  # found even where the model puts it far beyond k + RERANK_EXTRA
    probs = det.predict_proba(titles[:1], bodies[:1])
    np.testing.assert_allclose(index.search(det, titles[0], k=1)[0].probability, probs[0], atol=1e-6)


def test_the_bm25_part_is_saved_loaded_and_rebuilt_after_add(bank, tmp_path, monkeypatch):
    det, titles, bodies = bank
    index = QuestionIndex.build(det, bodies[:40], side="body", bm25_weight=0.5, progress=False)
    before = [[h.id for h in hs] for hs in index.search_many(det, titles[:40], k=5)]
    index.lexical(det)
    index.save(tmp_path / "idx")
    assert (tmp_path / "idx" / "bm25").is_dir()
    assert json.loads((tmp_path / "idx" / "meta.json").read_text())["bm25_weight"] == 0.5
    loaded = QuestionIndex.load(tmp_path / "idx")
    with monkeypatch.context() as m:  # read from the directory, not built again
        m.setattr(LexicalIndex, "build", classmethod(lambda cls, texts: pytest.fail("BM25 built again")))
        assert loaded.lexical(det).size == 40
        assert [[h.id for h in hs] for hs in loaded.search_many(det, titles[:40], k=5)] == before
    loaded.add(det, bodies[40:], [str(i) for i in range(40, 60)], progress=False)
    assert [hs[0].id for hs in loaded.search_many(det, titles[40:], k=1)] == [str(i) for i in range(40, 60)]


def test_auto_weight_is_set_for_title_body_sides_only(bank):
    det, titles, bodies = bank
    assert QuestionIndex.empty(det, side="body", bm25_weight="auto").bm25_weight == 0.1
    assert QuestionIndex.empty(det, side="right", bm25_weight="auto").bm25_weight == 0.0
    assert other_side(QuestionIndex.empty(det, side="title", bm25_weight="auto").side) == "right"


def test_a_weight_the_index_cannot_use_is_refused(bank, tmp_path, tiny_bert):
    det, _, _ = bank
    with pytest.raises(ValueError, match=r"must lie in \(0, 1\]"):
        QuestionIndex.empty(det, side="body", bm25_weight=1.5)
    from _tiny_models import tiny_matching_dir

    matching = qpairs.load(tiny_matching_dir(tmp_path / "m", tiny_bert), device="cpu", backend="torch")
    with pytest.raises(ValueError, match="model-space index"):
        QuestionIndex.empty(matching, space="base", bm25_weight=0.2)
    with pytest.raises(ValueError, match="distance between embeddings"):
        QuestionIndex.empty(matching, space="model", bm25_weight=0.2)
    assert QuestionIndex.empty(matching, side="right", bm25_weight="auto").bm25_weight == 0.0


def test_the_standardising_rows_are_all_rows_or_a_fixed_sample():
    assert stats_rows(10).tolist() == list(range(10))
    sample = stats_rows(100_000)
    assert len(sample) == 4096 and len(set(sample)) == 4096 and (sample == stats_rows(100_000)).all()


def test_the_cli_indexes_bodies_with_the_auto_weight_and_rejects_a_bad_one(bank, tmp_path, capsys, caplog):
    import logging

    import pandas as pd

    caplog.set_level(logging.DEBUG)

    from qpairs.cli import main

    det, titles, bodies = bank
    pd.DataFrame({"id": range(len(bodies)), "question": bodies}).to_csv(tmp_path / "bodies.csv", index=False)
    assert main(["index", str(tmp_path / "bodies.csv"), "-o", str(tmp_path / "idx"), "--model", str(det.path),
                 "--side", "body", "--backend", "torch"]) == 0
    assert json.loads((tmp_path / "idx" / "meta.json").read_text())["bm25_weight"] == 0.1
    assert "BM25 weight 0.1) written to" in capsys.readouterr().out
    assert not [r for r in caplog.records if r.name.startswith("bm25s")]  # no line per index build
    assert main(["search", str(tmp_path / "idx"), titles[7], "-k", "1", "--model", str(det.path), "--json",
                 "--backend", "torch"]) == 0
    out = capsys.readouterr().out
    api = QuestionIndex.build(det, bodies, side="body", bm25_weight=0.1, progress=False).search(det, titles[7], k=1)
    assert json.loads(out[out.index("["):])[0]["id"] == api[0].id
    with pytest.raises(SystemExit):
        main(["index", str(tmp_path / "bodies.csv"), "-o", str(tmp_path / "idx2"), "--bm25-weight", "1.5"])
    assert "expected a number in [0, 1], got 1.5" in capsys.readouterr().err


def test_queries_and_banks_without_a_word_to_match_fall_back_to_the_model(bank):
    det, titles, bodies = bank
    index = QuestionIndex.build(det, bodies, side="body", bm25_weight=1.0, progress=False)
    plain = QuestionIndex.build(det, bodies, side="body", bm25_weight=0.0, progress=False)
    for query in ["Is this it?", "C++ ?!", "qwertyuiop"]:  # stop words, symbols, an unknown word
        got = index.search(det, query, k=5)
        assert [h.id for h in got] == [h.id for h in plain.search(det, query, k=5)]  # ties broken by the model
        assert all(h.score == 0.0 for h in got)
    stop_words = QuestionIndex.build(det, ["the", "is it", "?"], side="body", bm25_weight=0.5, progress=False)
    assert len(stop_words.search(det, titles[0], k=3)) == 3
    assert stop_words.lexical(det).scores([titles[0]]).tolist() == [[0.0, 0.0, 0.0]]


def test_saving_another_bank_over_an_index_drops_the_old_bm25_part(bank, tmp_path):
    det, titles, bodies = bank
    first = QuestionIndex.build(det, bodies[:30], side="body", bm25_weight=1.0, progress=False)
    first.lexical(det)
    first.save(tmp_path / "idx")
    QuestionIndex.build(det, bodies[30:], [str(i) for i in range(30, 60)], side="body", bm25_weight=1.0,
                        progress=False).save(tmp_path / "idx")
    assert not (tmp_path / "idx" / "bm25").exists()
    assert QuestionIndex.load(tmp_path / "idx").search(det, titles[45], k=1)[0].id == "45"


def test_bm25_is_standardised_over_the_whole_bank_beyond_the_sample(bank, monkeypatch):
    import qpairs.bm25 as bm25

    det, titles, bodies = bank
    monkeypatch.setattr(bm25, "STATS_SAMPLE", 8)  # the model's similarity: 8 reference rows; BM25: all 60
    index = QuestionIndex.build(det, bodies, side="body", bm25_weight=0.3, progress=False)
    ref = bm25.stats_rows(len(bodies))
    assert len(ref) == 8
    hits = index.search_many(det, titles[:3], k=len(bodies))
    similarity = -pairwise_distances(det.encode(titles[:3], "left"), det.encode(bodies, "right"), "euclidean")
    lexical = LexicalIndex.build(bodies).scores(titles[:3])
    want = fused_scores(similarity, lexical, 0.3, similarity[:, ref], lexical)
    for row, query_hits in zip(want, hits):
        got = {int(h.id): h.score for h in query_hits}
        np.testing.assert_allclose([got[i] for i in range(len(bodies))], row, rtol=1e-4, atol=1e-4)


def test_appending_with_another_weight_is_refused(bank, tmp_path):
    import pandas as pd

    from qpairs.search_commands import index_file

    det, titles, bodies = bank
    pd.DataFrame({"question": bodies[:30]}).to_csv(tmp_path / "a.csv", index=False)
    index_file(tmp_path / "a.csv", tmp_path / "idx", det.path, side="body", backend="torch")
    with pytest.raises(ValueError, match="ranks with BM25 weight 0.1; --append keeps it"):
        index_file(tmp_path / "a.csv", tmp_path / "idx", det.path, append=True, backend="torch", bm25_weight=0.5)


def test_evaluation_ranks_each_pool_as_an_index_of_its_bodies_does(bank):
    import pandas as pd

    from qpairs.retrieval import candidate_pools
    from qpairs.title_body_eval import embed_posts, fused_pool_ranks

    det, titles, bodies = bank
    posts = pd.DataFrame({"title": titles, "body": bodies})
    title_emb, body_emb = embed_posts(det, posts)
    ranks = fused_pool_ranks(det, posts, title_emb, body_emb, 20, 0, [0.0, 0.3])
    assert set(ranks) == {(0.0, 0.0), (0.0, 0.3)}  # (token share, BM25 weight)
    assert not np.array_equal(ranks[(0.0, 0.0)], ranks[(0.0, 0.3)])
    for (_, w), want in ranks.items():
        got = np.empty(len(posts))
        for queries, cands in candidate_pools(len(posts), 20, 0):
            index = QuestionIndex.build(det, [bodies[c] for c in cands], [str(c) for c in cands], side="body",
                                        bm25_weight=w, progress=False)
            for q, hits in zip(queries, index.search_many(det, [titles[q] for q in queries], k=20)):
                got[q] = [h.id for h in hits].index(str(q)) + 1
        np.testing.assert_array_equal(got, want)


def test_maxsim_is_each_query_tokens_best_cosine_averaged():
    from qpairs.late import maxsim

    rng = np.random.default_rng(0)
    unit = [x / np.linalg.norm(x, axis=1, keepdims=True) for x in (rng.normal(size=(n, 8)) for n in (3, 5, 1, 4))]
    queries, docs = unit[:2], unit[1:]
    want = np.array([[(q @ d.T).max(1).mean() for d in docs] for q in queries])
    np.testing.assert_allclose(maxsim(queries, docs), want, rtol=1e-6)
    assert maxsim([unit[1]], [unit[1]])[0, 0] == pytest.approx(1.0)  # a text against itself


def test_a_token_share_ranks_by_the_late_interaction_score(bank):
    import pandas as pd

    from qpairs.retrieval import candidate_pools, true_ranks
    from qpairs.late import maxsim, unit_token_states
    from qpairs.title_body_eval import embed_posts, fused_pool_ranks

    det, titles, bodies = bank
    posts = pd.DataFrame({"title": titles, "body": bodies})
    title_emb, body_emb = embed_posts(det, posts)
    states = unit_token_states(det.model.encoder, list(titles)), unit_token_states(det.model.encoder, list(bodies))
    ranks = fused_pool_ranks(det, posts, title_emb, body_emb, 20, 0, [0.0], token_states=states,
                             token_shares=(0.0, 1.0))
    want = np.empty(len(posts))
    for queries, cands in candidate_pools(len(posts), 20, 0):  # share 1, no BM25: MaxSim alone decides
        late = maxsim([states[0][q] for q in queries], [states[1][c] for c in cands])
        want[queries] = true_ranks(-late, np.arange(len(queries)))
    np.testing.assert_array_equal(ranks[(1.0, 0.0)], want)
    assert not np.array_equal(ranks[(1.0, 0.0)], ranks[(0.0, 0.0)])
    with pytest.raises(ValueError, match="token states"):
        fused_pool_ranks(det, posts, title_emb, body_emb, 20, 0, [0.0], token_shares=(0.5,))


def test_lexical_scores_read_text_as_the_encoders_do():
    from qpairs.bm25 import LexicalIndex
    from qpairs.ngram import lexical_similarity

    index = LexicalIndex.build(["how to learn Py\u200bthon fast", "java basics"])  # a zero-width space in a word
    assert index.scores(["python"])[0, 0] > 0 and index.scores(["python"])[0, 1] == 0
    assert lexical_similarity("Python", ["Py\u00adthon", "Java"])[0] == pytest.approx(1.0)
