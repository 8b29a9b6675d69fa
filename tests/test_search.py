"""Question index, search, dedup and their CLI, on a tiny random BiLSTM and generated questions."""
import numpy as np
import pandas as pd
import pytest

import qpairs
from qpairs.cli import main
from qpairs.data import DataError
from qpairs.dedup import connected_clusters, dedup, duplicate_edges
from qpairs.retrieval import first_relevant_ranks, retrieval_metrics
from qpairs.search import ModelMismatchError, QuestionIndex, SearchIndexError, read_questions
from tiny_search_model import bank_csv, bank_questions, groups_with_copies, make_tiny_model


@pytest.fixture(scope="module", params=["euclidean", "cosine"])
def det(request, tmp_path_factory):
    path = make_tiny_model(tmp_path_factory.mktemp(request.param), request.param)
    return qpairs.load(path, device="cpu")


@pytest.fixture(scope="module")
def other_det(tmp_path_factory):
    return qpairs.load(make_tiny_model(tmp_path_factory.mktemp("other"), seed=1), device="cpu")


@pytest.fixture(scope="module")
def bank():
    return bank_questions()


def test_flat_search_equals_brute_force_model_scores(det, bank):
    index = QuestionIndex.build(det, bank, [f"q{i}" for i in range(len(bank))])
    query = "how do i learn PYTHON?"  # same tokens as bank question "How do I learn python?"
    hits = index.search(det, query, k=8)
    dist = det.distances([query] * len(bank), bank)  # the model's own scores for every bank question
    best = np.argsort(dist, kind="stable")[:8]
    assert [h.text for h in hits] == [bank[i] for i in best]
    np.testing.assert_allclose([h.distance for h in hits], dist[best], atol=1e-6)
    np.testing.assert_allclose([h.probability for h in hits], det.predict_proba([query] * 8, [bank[i] for i in best]),
                               rtol=1e-3)
    assert hits[0].text == "How do I learn python?" and hits[0].id == f"q{bank.index('How do I learn python?')}"
    assert hits[0].duplicate and not any(h.duplicate for h in hits[1:])
    assert [h.distance for h in hits] == sorted(h.distance for h in hits)
    assert index.meta["metric"] == det.model.distance_metric


def test_hnsw_finds_the_same_neighbours_on_a_small_bank(det, bank):
    flat = QuestionIndex.build(det, bank)
    hnsw = QuestionIndex.build(det, bank, kind="hnsw")
    queries = ["is java hard?", "Who invented tennis?", "what makes cats so popular?"]
    for a, b in zip(flat.search_many(det, queries, 5), hnsw.search_many(det, queries, 5)):
        assert [h.id for h in a] == [h.id for h in b]


def test_save_load_and_detector_search(det, bank, tmp_path):
    QuestionIndex.build(det, bank).save(tmp_path / "idx")
    loaded = QuestionIndex.load(tmp_path / "idx")
    assert len(loaded) == len(bank) and loaded.texts == bank
    hits = det.search(tmp_path / "idx", "Is Java hard?", k=3)
    assert hits[0].text == "Is java hard?" and len(hits) == 3
    many = det.search(loaded, ["Is Java hard?", "who invented dogs?"], k=2)
    assert [m[0].text for m in many] == ["Is java hard?", "Who invented dogs?"]
    assert len(det.search(loaded, "Is Java hard?", k=10_000)) == len(bank)  # k larger than the bank


def test_refuses_a_different_model(det, other_det, bank, tmp_path):
    index = QuestionIndex.build(other_det, bank[:20])
    index.save(tmp_path / "idx")
    with pytest.raises(ModelMismatchError, match="rebuild the index"):
        index.search(det, "Is java hard?")
    with pytest.raises(ModelMismatchError):
        index.add(det, ["a new question"], ["new"])
    with pytest.raises(ModelMismatchError):
        det.search(tmp_path / "idx", "Is java hard?")


def test_add_appends_and_rejects_repeated_ids(det, bank):
    index = QuestionIndex.build(det, bank[:10], [f"a{i}" for i in range(10)])
    index.add(det, bank[10:15], [f"b{i}" for i in range(5)])
    assert len(index) == 15 and index.index.ntotal == 15
    assert index.search(det, bank[12], k=1)[0].id == "b2"
    with pytest.raises(ValueError, match="already in the index"):
        index.add(det, ["x"], ["a3"])
    with pytest.raises(ValueError, match="repeated"):
        index.add(det, ["x", "y"], ["c", "c"])
    assert len(index) == 15


def test_api_ids_are_refused_when_missing_and_whole_numbers_stored_as_digits(det, bank):
    index = QuestionIndex.build(det, bank[:3], [7, np.int64(8), 9.0])
    assert index.ids == ["7", "8", "9"]
    for bad, error, message in ((["1", None, "3"], ValueError, "id of item 1 is missing"),
                                ([1.0, float("nan"), 3.0], ValueError, "id of item 1 is missing"),
                                (["1", "", "3"], TypeError, "id of item 1 must be a non-empty string"),
                                ([1, 2.5, 3], TypeError, "id of item 1 must be"),
                                ("abc", TypeError, "not a single string")):
        with pytest.raises(error, match=message):
            QuestionIndex.build(det, bank[:3], bad)
    with pytest.raises(TypeError, match="not bytes"):
        det.search(index, b"How do I learn Python?")
    with pytest.raises(ValueError, match="id of item 1 is missing"):  # dedup takes ids by the same rule
        dedup(det, bank[:3], ["1", None, "3"])
    assert list(dedup(det, bank[:3], [7, 8.0, "x"])["id"]) == ["7", "8", "x"]


def test_an_index_built_before_text_folding_loads_unless_a_text_folds_otherwise(det, bank, tmp_path):
    import json

    for name, texts in (("plain", bank[:5]), ("zero_width", bank[:4] + ["How do I learn Py\u200bthon?"])):
        QuestionIndex.build(det, texts).save(tmp_path / name)
        meta = json.loads((tmp_path / name / "meta.json").read_text())
        del meta["text_folding"]  # as an index written before it was recorded
        (tmp_path / name / "meta.json").write_text(json.dumps(meta))
    assert len(QuestionIndex.load(tmp_path / "plain")) == 5
    with pytest.raises(SearchIndexError, match="built before qpairs read Unicode text in folded form.*rebuild"):
        QuestionIndex.load(tmp_path / "zero_width")


def test_corrupt_or_missing_index_is_reported(det, bank, tmp_path):
    with pytest.raises(SearchIndexError, match="not a qpairs index"):
        QuestionIndex.load(tmp_path)
    QuestionIndex.build(det, bank[:5]).save(tmp_path / "idx")
    for name in ("index.faiss", "questions.parquet"):  # cut short, as by a full disk or an interrupted copy
        whole = (tmp_path / "idx" / name).read_bytes()
        (tmp_path / "idx" / name).write_bytes(whole[:100])
        with pytest.raises(SearchIndexError, match=f"idx/{name} is corrupt .*build the index again"):
            QuestionIndex.load(tmp_path / "idx")
        (tmp_path / "idx" / name).write_bytes(whole)
    (tmp_path / "idx" / "questions.parquet").unlink()
    with pytest.raises(SearchIndexError, match="questions.parquet is missing"):
        QuestionIndex.load(tmp_path / "idx")


def test_format_1_indexes_still_load_as_model_space(det, bank, tmp_path):
    import json

    QuestionIndex.build(det, bank[:20]).save(tmp_path / "v1")
    meta = json.loads((tmp_path / "v1" / "meta.json").read_text())
    meta["format_version"] = 1
    del meta["space"]  # what indexes written before the space field look like
    (tmp_path / "v1" / "meta.json").write_text(json.dumps(meta))
    old = QuestionIndex.load(tmp_path / "v1")
    assert old.space == "model" and old.search(det, bank[3], k=1)[0].text == bank[3]
    meta["format_version"] = 7
    (tmp_path / "v1" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(SearchIndexError, match="index format 7 is not supported"):
        QuestionIndex.load(tmp_path / "v1")


def test_read_questions_validates_rows(tmp_path):
    good = tmp_path / "good.csv"
    bank_csv(good, ["Is java hard?", "Who invented tennis?"], ["7", "9"])
    assert read_questions(good) == (["7", "9"], ["Is java hard?", "Who invented tennis?"])
    empty = tmp_path / "empty.csv"
    pd.DataFrame({"id": [1, 2, 3], "question": ["ok?", "  ", "fine?"]}).to_csv(empty, index=False)
    with pytest.raises(DataError, match=r"empty.csv: row 2 \(line 3\), column 'question': empty"):
        read_questions(empty)
    repeated = tmp_path / "repeated.csv"
    pd.DataFrame({"id": [1, 2, 1], "question": ["a?", "b?", "c?"]}).to_csv(repeated, index=False)
    with pytest.raises(DataError, match=r"row 1 \(line 2\) and row 3 \(line 4\), column 'id': repeated id '1'"):
        read_questions(repeated)
    gap = tmp_path / "gap.csv"  # in a one-column file a blank line is an empty question; blank lines at the end are not
    gap.write_text("question\nIs java hard?\n\nWho invented tennis?\n\n\n")
    with pytest.raises(DataError, match=r"gap.csv: row 2 \(line 3\), column 'question': empty"):
        read_questions(gap)
    gap.write_text("question\nIs java hard?\nWho invented tennis?\n\n\n")
    assert read_questions(gap) == (None, ["Is java hard?", "Who invented tennis?"])
    blank_id = tmp_path / "blank_id.csv"
    blank_id.write_text("id,question\n7,a?\n,b?\n")
    with pytest.raises(DataError, match=r"blank_id.csv: row 2 \(line 3\), column 'id': empty id \(1 such rows\)"):
        read_questions(blank_id)
    null_id = tmp_path / "null_id.parquet"  # a nullable int id column with a null, and another such column
    pd.DataFrame({"id": pd.array([1, None], dtype="Int64"), "qid": pd.array([None, 4], dtype="Int64"),
                  "question": ["a?", "b?"]}).to_parquet(null_id)
    with pytest.raises(DataError, match=r"null_id.parquet: row 2, column 'id': empty id"):
        read_questions(null_id)
    assert read_questions(null_id, id_col="question") == (["a?", "b?"], ["a?", "b?"])  # the null qid is no trouble
    invisible = tmp_path / "invisible.csv"
    pd.DataFrame({"id": [1, 2], "question": ["ok?", "\u200b\ufeff"]}).to_csv(invisible, index=False)
    with pytest.raises(DataError, match=r"invisible.csv: row 2 \(line 3\), column 'question': empty"):
        read_questions(invisible)
    with pytest.raises(DataError, match="no question text column"):
        read_questions(_no_text(tmp_path))
    with pytest.raises(DataError, match="column 'nope' not found"):
        read_questions(good, text_col="nope")


def _no_text(tmp_path):
    path = tmp_path / "no_text.csv"
    pd.DataFrame({"id": [1], "body": ["x"]}).to_csv(path, index=False)
    return path


def test_connected_clusters_follow_chains():
    labels = connected_clusters(7, np.array([0, 2, 5, 4]), np.array([1, 1, 4, 5]))
    assert labels.tolist() == [0, 0, 0, 1, 2, 2, 3]  # {0,1,2} {3} {4,5} {6}


def test_dedup_recovers_groups_of_copies(det):
    texts, groups = groups_with_copies()
    clusters = dedup(det, texts, [f"t{i}" for i in range(len(texts))], k=5)
    # same partition as the truth: a one-to-one map between found clusters and true groups
    pairs = set(zip(clusters["cluster"], groups))
    assert len(pairs) == clusters["cluster"].nunique() == len(set(groups))
    sizes = pd.Series(groups).map(pd.Series(groups).value_counts())
    assert clusters["cluster_size"].tolist() == sizes.tolist()
    multi = clusters[clusters["cluster_size"] > 1]
    assert (multi["best_probability"] >= det.threshold).all() and (multi["best_match"] != "").all()
    alone = clusters[clusters["cluster_size"] == 1]  # still told their best (non-duplicate) match
    assert (alone["best_match"] != "").all() and (alone["best_probability"] < det.threshold).all()
    first = alone.index[0]
    match = texts[int(alone.loc[first, "best_match"][1:])]
    assert alone.loc[first, "best_probability"] == pytest.approx(
        float(det.predict_proba([texts[first]], [match])[0]), abs=1e-4)
    assert alone.loc[first, "best_probability"] > 0


def test_dedup_edges_do_not_depend_on_chunking(det):
    texts, _ = groups_with_copies(seed=3)
    index = QuestionIndex.build(det, texts)
    whole = duplicate_edges(det, index, k=4, chunk_size=10_000)
    chunked = duplicate_edges(det, index, k=4, chunk_size=7)
    for a, b in zip(whole, chunked):
        np.testing.assert_array_equal(a, b)
    assert len(whole[0]) > 0


def test_retrieval_metrics_by_hand():
    ranked = [["a", "b", "c"], ["x", "y", "z"], ["m", "n", "o"]]
    relevant = [{"a"}, {"z", "q"}, {"zz"}]
    m = retrieval_metrics(first_relevant_ranks(ranked, relevant), ks=(1, 3))
    assert m["recall@1"] == pytest.approx(1 / 3) and m["recall@3"] == pytest.approx(2 / 3)
    assert m["mrr"] == pytest.approx((1 + 1 / 3 + 0) / 3) and m["n_queries"] == 3


def test_cli_index_search_dedup(det, tmp_path, capsys):
    model = str(det.path)
    bank_csv(tmp_path / "bank.csv")
    assert main(["index", str(tmp_path / "bank.csv"), "-o", str(tmp_path / "idx"), "--model", model]) == 0
    assert main(["search", str(tmp_path / "idx"), "who invented PIANO?", "-k", "3", "--model", model]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "Who invented piano?" in out[2] and "yes" in out[2] and len(out) == 5
    assert main(["index", str(tmp_path / "bank.csv"), "-o", str(tmp_path / "idx"), "--model", model]) == 2
    assert "--append" in capsys.readouterr().err

    texts, groups = groups_with_copies()
    pd.DataFrame({"question": texts}).to_csv(tmp_path / "qs.csv", index=False)
    assert main(["dedup", str(tmp_path / "qs.csv"), "-o", str(tmp_path / "clusters.csv"), "--model", model]) == 0
    clusters = pd.read_csv(tmp_path / "clusters.csv", keep_default_na=False)
    assert clusters["cluster"].nunique() == len(set(groups)) and clusters["text"].tolist() == texts
    assert main(["dedup", str(tmp_path / "qs.csv"), "-o", str(tmp_path / "single.csv"), "--model", model,
                 "--linkage", "single"]) == 0  # copies only: every linkage finds the same groups
    assert pd.read_csv(tmp_path / "single.csv", keep_default_na=False).equals(clusters)



@pytest.mark.parametrize("out, message", [("missing/c.csv", "the folder"), ("c.xlsx", "gives its format"),
                                          ("qs.csv", "is the input file")])
def test_cli_dedup_refuses_an_unwritable_output_before_any_work(tmp_path, capsys, monkeypatch, out, message):
    import qpairs.search_commands

    pd.DataFrame({"question": ["How?", "Why?"]}).to_csv(tmp_path / "qs.csv", index=False)
    monkeypatch.setattr(qpairs.search_commands, "load_detector", lambda *a, **k: pytest.fail("the model was loaded"))
    assert main(["dedup", str(tmp_path / "qs.csv"), "-o", str(tmp_path / out)]) == 2
    assert message in capsys.readouterr().err


def test_search_never_loads_the_model_the_index_names(det, tmp_path, capsys, monkeypatch):
    """Without --model, search runs the default model and refuses an index built by another one."""
    import json

    import qpairs.detector

    bank_csv(tmp_path / "bank.csv")
    assert main(["index", str(tmp_path / "bank.csv"), "-o", str(tmp_path / "idx"), "--model", str(det.path)]) == 0
    loaded = []
    real_load = qpairs.detector.load
    monkeypatch.setattr(qpairs.detector, "load", lambda path=None, **kw: loaded.append(path) or real_load(det.path, **kw)
                        if path is None else real_load(path, **kw))
    meta_path = tmp_path / "idx" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["model_fingerprint"] = "0" * 64  # the index claims another model, at the same recorded path
    meta_path.write_text(json.dumps(meta))
    capsys.readouterr()
    assert main(["search", str(tmp_path / "idx"), "Is java hard?"]) == 2
    assert loaded == [None]  # the default model was asked for, not meta.model_path
    err = capsys.readouterr().err
    assert f"was built with model {det.path.resolve()}" in err and "pass that model with --model" in err


def test_cli_refuses_another_model(det, other_det, tmp_path, capsys):
    bank_csv(tmp_path / "bank.csv")
    assert main(["index", str(tmp_path / "bank.csv"), "-o", str(tmp_path / "idx"), "--model", str(det.path)]) == 0
    assert main(["search", str(tmp_path / "idx"), "Is java hard?", "--model", str(other_det.path)]) == 2
    assert "was built with model" in capsys.readouterr().err
    assert main(["index", str(tmp_path / "bank.csv"), "-o", str(tmp_path / "idx"), "--append",
                 "--model", str(other_det.path)]) == 2


def test_cli_append_numbers_id_less_files_on_and_names_a_repeated_id(det, bank, tmp_path, capsys):
    import pandas as pd

    pd.DataFrame({"question": bank[:5]}).to_csv(tmp_path / "one.csv", index=False)
    pd.DataFrame({"question": bank[5:8]}).to_csv(tmp_path / "two.csv", index=False)
    out, model = str(tmp_path / "idx"), str(det.path)
    assert main(["index", str(tmp_path / "one.csv"), "-o", out, "--model", model]) == 0
    assert main(["index", str(tmp_path / "two.csv"), "-o", out, "--append", "--model", model]) == 0
    index = QuestionIndex.load(out)
    assert list(index.ids) == [str(i) for i in range(8)] and list(index.texts) == bank[:8]
    pd.DataFrame({"id": ["new", "3"], "question": ["x?", "y?"]}).to_csv(tmp_path / "ids.csv", index=False)
    capsys.readouterr()
    assert main(["index", str(tmp_path / "ids.csv"), "-o", out, "--append", "--model", model]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'ids.csv'}: row 2 (line 3): id '3' is already in the index" in err
    assert len(QuestionIndex.load(out)) == 8
    pd.DataFrame({"id": ["9"], "question": ["w?"]}).to_csv(tmp_path / "nine.csv", index=False)
    assert main(["index", str(tmp_path / "nine.csv"), "-o", out, "--append", "--model", model]) == 0
    pd.DataFrame({"question": ["y?", "z?"]}).to_csv(tmp_path / "bare.csv", index=False)  # numbered 9 and 10
    capsys.readouterr()
    assert main(["index", str(tmp_path / "bare.csv"), "-o", out, "--append", "--model", model]) == 2
    err = capsys.readouterr().err
    assert "bare.csv: row 1 (line 2): its number '9' (no id column) is already in the index" in err
    assert "give the file an id column" in err and len(QuestionIndex.load(out)) == 9


def test_cli_append_keeps_the_index_layout_and_refuses_another(det, bank, tmp_path, capsys):
    pd.DataFrame({"id": ["a", "b"], "question": bank[:2]}).to_csv(tmp_path / "one.csv", index=False)
    pd.DataFrame({"id": ["c"], "question": bank[2:3]}).to_csv(tmp_path / "two.csv", index=False)
    out, model = str(tmp_path / "idx"), str(det.path)
    assert main(["index", str(tmp_path / "one.csv"), "-o", out, "--model", model, "--kind", "hnsw"]) == 0
    for option, value, stored in [("--kind", "flat", "hnsw"), ("--side", "left", "right"), ("--space", "base", "model")]:
        capsys.readouterr()
        assert main(["index", str(tmp_path / "two.csv"), "-o", out, "--append", "--model", model, option, value]) == 2
        assert f"was built with {option} {stored}; --append keeps it" in capsys.readouterr().err
    assert len(QuestionIndex.load(out)) == 2
    assert main(["index", str(tmp_path / "two.csv"), "-o", out, "--append", "--model", model, "--kind", "hnsw"]) == 0
    index = QuestionIndex.load(out)
    assert len(index) == 3 and index.meta["kind"] == "hnsw" and index.side == "right"


@pytest.mark.parametrize("k, threshold, message", [(0, 0.5, r"k \(neighbours per question\) must be a whole number"),
                                                   (10, 1.5, r"threshold must lie in \[0, 1\]")])
def test_dedup_refuses_k_or_threshold_out_of_range(det, bank, k, threshold, message):
    with pytest.raises(ValueError, match=message):
        dedup(det, bank[:5], k=k, threshold=threshold)


def test_dedup_keeps_every_copy_of_a_question_in_one_group(det, bank):
    copies = ["Which is the tallest mountain on Mars?"] * 25 + ["which is the tallest mountain on mars"] * 5
    texts = bank[:40] + copies
    ids = [f"b{i}" for i in range(40)] + [f"c{i}" for i in range(30)]
    out = dedup(det, texts, ids, k=3)
    assert len(out) == 70 and out["id"].tolist() == ids and out["text"].tolist() == texts
    group = out[out["id"].str.startswith("c")]
    assert group["cluster"].nunique() == 1 and (group["cluster_size"] >= 30).all()
    assert group["best_match"].str.startswith("c").all() and (group["best_match"] != group["id"]).all()
    assert group.loc[40, "best_match"] == "c1" and group.loc[41, "best_match"] == "c0"  # first copy ↔ second
    expected = det.predict_proba(["which is the tallest mountain on mars"], ["Which is the tallest mountain on Mars?"])[0]
    assert group.loc[69, "best_probability"] == pytest.approx(expected, abs=1e-6)  # c29 → c0: that pair's own
    assert (out.loc[:39, "best_match"].isin(ids[:40])).all()  # copies of one question stand for it once
    with pytest.raises(ValueError, match="id 'c0' is repeated"):  # also between copies, which share one node
        dedup(det, texts, ids[:41] + ["c0"] + ids[42:], k=3)


@pytest.mark.parametrize("texts, error, message", [
    ("How do I learn Python?", TypeError, "not a single string"),
    (["a question", ""], ValueError, r"texts\[1\] is not a question: empty question"),
    (["a question", "None"], ValueError, r"texts\[1\] is not a question: missing question"),
    (["a question", None], TypeError, r"texts\[1\] is missing \(None/NaN\)"),
])
def test_index_and_dedup_refuse_what_is_not_a_list_of_questions(det, texts, error, message):
    with pytest.raises(error, match=message):
        QuestionIndex.build(det, texts)
    with pytest.raises(error, match=message):
        dedup(det, texts)


@pytest.mark.parametrize("k", [0, 1.5, True, "3"])
def test_search_refuses_a_k_that_is_not_a_count(det, bank, k):
    index = QuestionIndex.build(det, bank[:5])
    with pytest.raises(ValueError, match="k must be a whole number of at least 1"):
        index.search(det, "Is java hard?", k=k)


@pytest.mark.parametrize("query", ["", "   ", "\u200b", ["Is java hard?", "\t"]])
def test_search_refuses_an_empty_question(det, bank, query):
    index = QuestionIndex.build(det, bank[:5])
    with pytest.raises(ValueError, match="empty question"):
        index.search_many(det, query)


def test_add_embeddings_equals_encoding_and_checks_shape(det, bank):
    encoded = QuestionIndex.build(det, bank[:30])
    pre = QuestionIndex.empty(det)
    pre.add_embeddings(det, det.encode(bank[:30]), range(30), bank[:30])
    assert [h.id for h in pre.search(det, bank[7], 5)] == [h.id for h in encoded.search(det, bank[7], 5)]
    with pytest.raises(ValueError, match=r"need vectors \[n, 16\]"):
        pre.add_embeddings(det, np.zeros((2, 8)), ["x", "y"], ["x", "y"])


def _random_flat_index(rng, n: int, dim: int, metric: str, scale: float = 1.0):
    """A flat QuestionIndex over n random vectors (unit length for cosine), and the vectors."""
    import faiss

    from qpairs.search import QuestionIndex

    x = rng.standard_normal((n, dim)).astype("float32") * scale
    if metric == "cosine":
        x /= np.linalg.norm(x, axis=1, keepdims=True)
    flat = faiss.IndexFlatIP(dim) if metric == "cosine" else faiss.IndexFlatL2(dim)
    flat.add(x)
    meta = {"kind": "flat", "metric": metric, "normalized": metric == "cosine"}
    return QuestionIndex(flat, [str(i) for i in range(n)], ["q"] * n, meta), x


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_flat_search_of_few_queries_matches_faiss(metric):
    """Few queries run as a NumPy product over FAISS's storage: same neighbours, same order as FAISS."""
    import faiss

    rng = np.random.default_rng(0)
    index, x = _random_flat_index(rng, 3000, 24, metric)
    flat = index.index
    queries = rng.standard_normal((5, 24)).astype("float32")
    _, want = flat.search(index._index_vectors(queries), 10)
    np.testing.assert_array_equal(index.knn(queries, 10, few_fast=True), want)
    small = QuestionIndex(faiss.IndexFlatL2(24), ["a", "b"], ["q", "q"], {"kind": "flat", "metric": "euclidean",
                                                                          "normalized": False})
    small.index.add(x[:2])
    assert sorted(small.knn(queries[:1], 10, few_fast=True)[0].tolist()) == [0, 1]  # k above the bank size


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_half_precision_scan_is_exact_or_declines(metric, monkeypatch):
    """The fp16 scan of a large bank gives FAISS's exact neighbours, and declines (fp32 scan) when ties make the
    fp16 rounding matter."""
    from qpairs import search

    monkeypatch.setattr(search, "HALF_SCAN_MIN", 100)
    rng = np.random.default_rng(1)
    index, x = _random_flat_index(rng, 5000, 32, metric, scale=3.0)
    flat = index.index
    queries = index._index_vectors(rng.standard_normal((4, 32)).astype("float32"))
    _, want = flat.search(queries, 10)
    assert index._half_knn(index._stored(), queries, 10) is not None  # proven exact here
    np.testing.assert_array_equal(index.knn(queries, 10, few_fast=True), want)
    # 60 copies of the query's nearest vector: the fp16 ranking among them proves nothing, so it declines
    tied = np.repeat(x[want[0, :1]], 60, axis=0)
    flat.add(tied)
    index.ids += [f"t{i}" for i in range(60)]
    index.texts += ["q"] * 60
    assert index._half_knn(index._stored(), queries[:1], 10) is None
    got = index.knn(queries[:1], 10, few_fast=True)[0]
    assert set(got.tolist()) <= {int(want[0, 0])} | set(range(5000, 5060))


def test_search_table_shows_the_score_it_ranks_by(det, tmp_path, capsys):
    from qpairs.search import Hit, format_hits

    bank_csv(tmp_path / "bank.csv")
    assert main(["index", str(tmp_path / "bank.csv"), "-o", str(tmp_path / "idx"), "--model", str(det.path)]) == 0
    assert main(["search", str(tmp_path / "idx"), "Is java hard?", "-k", "5", "--model", str(det.path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "questions (flat index, model space) written to" in lines[0] and "QuestionIndex(" not in lines[0]
    assert lines[1].split()[:4] == ["rank", "score", "prob", "dup"]
    scores = [float(line.split()[1]) for line in lines[2:]]
    assert len(scores) == 5 and scores == sorted(scores, reverse=True)
    # base space: a hit ranked first by its score may have the lower probability; the table says why
    table = format_hits([Hit("a", "first", 0.119, 0.9, False, 0.91), Hit("b", "second", 0.462, 0.5, False, 0.84)])
    assert [row.split()[1:3] for row in table.splitlines()[1:]] == [["0.910", "0.119"], ["0.840", "0.462"]]
    table = format_hits([Hit("a", "<p>first\nline</p>\r\n<p>second</p>", 0.1, 0.9, False, 0.9)])
    assert len(table.splitlines()) == 2 and table.endswith("<p>first line</p> <p>second</p>")


def test_a_table_that_cannot_be_written_leaves_no_file(tmp_path):
    from qpairs.tableio import write_frame

    frame = pd.DataFrame({"id": ["1", "2"], "text": ["a\rreturn?", "a\nnewline?"]})  # a lone \r ends a TSV row too
    with pytest.raises(ValueError, match="out.tsv: row 1, column 'text' holds a tab, newline or carriage return"):
        write_frame(frame, tmp_path / "out.tsv")
    assert list(tmp_path.iterdir()) == []
    write_frame(frame, tmp_path / "out.csv")
    assert pd.read_csv(tmp_path / "out.csv")["text"].tolist() == frame["text"].tolist()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv"]


def test_a_question_file_with_its_header_only_is_refused(tmp_path):
    from qpairs.data import DataError, read_questions

    (tmp_path / "h.csv").write_text("id,question\n")
    with pytest.raises(DataError, match="h.csv: no questions"):
        read_questions(tmp_path / "h.csv")
