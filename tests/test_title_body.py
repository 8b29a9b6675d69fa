"""Title/body data, the pseudo-Siamese variant and retrieval metrics (generated posts, tiny encoders)."""
import json

import numpy as np
import pandas as pd
import pytest
import torch

import qpairs
from qpairs import title_body as tb
from qpairs.checkpoint import save_model, write_json
from qpairs.config import TrainConfig
from qpairs.data import DataError
from qpairs.retrieval import candidate_pools, rank_in_pools, retrieval_metrics, true_ranks
from qpairs.train import train

SITES = ("alpha", "beta", "gamma")
TOPICS = ["python", "pasta", "guitar", "tennis", "bitcoin", "taxes", "visa", "cats", "dogs", "piano", "enzymes",
          "yeast", "ciphers", "keys", "bread", "soup"]


def make_posts(n: int = 150, seed: int = 0) -> pd.DataFrame:
    """Stack Exchange-like posts: the title's topic and number recur in the HTML body (with a code block)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        site = SITES[i % 3]
        t, u = rng.choice(TOPICS, 2, replace=False)
        k = int(rng.integers(100))
        title = f"How do I fix {t} {k} with {u}?"
        body = (f"<p>My <b>{t}</b> number {k} breaks when I add {u}.</p>\n"
                f"<pre><code>{t}_{k} = load('{u}')\nprint({t}_{k})\n</code></pre><p>Any idea?</p>")
        rows.append({"site": site, "id": str(i), "title": title, "content": body, "tags": f"{t} {u}"})
    return pd.DataFrame(rows)


@pytest.fixture
def posts_csv(tmp_path):
    path = tmp_path / "posts.csv.gz"
    make_posts().to_csv(path, index=False)
    return path


# ---------------------------------------------------------------- text

def test_html_stripping_keeps_code_and_entities():
    html = ("<p>Compare <code>a &lt; b</code> first.</p>\n<pre><code>for i in range(3):\n    print(i)\n"
            "</code></pre><ul><li>one</li><li>two</li></ul><p><img src='x.png' alt='pic'>done</p>")
    text = tb.html_to_text(html)
    assert "a < b" in text
    assert "for i in range(3): print(i)" in text
    assert "one two" in text and text.endswith("done")
    assert "<" not in text.replace("a < b", "") and "code" not in text


def test_clean_body_leaves_plain_text_alone():
    plain = "#include <stdio.h> then call printf"
    assert not tb.looks_like_html(plain)
    assert tb.clean_body(plain, max_words=50) == plain
    assert tb.looks_like_html("<p>x</p>")


def test_truncation_policies():
    text = " ".join(f"w{i}" for i in range(50))
    head = tb.truncate_words(text, 10, "head")
    assert head.split() == [f"w{i}" for i in range(10)]
    ht = tb.truncate_words(text, 10, "head_tail", head_fraction=0.75)
    words = ht.split()
    assert len(words) == 10
    assert words[:7] == [f"w{i}" for i in range(7)] and words[7] == tb.ELLIPSIS
    assert words[8:] == ["w48", "w49"]
    assert tb.truncate_words(ht, 10, "head_tail") == ht  # idempotent: re-cutting a cut body changes nothing
    assert tb.truncate_words(text, 10, "none") == text
    assert tb.truncate_words("short text", 10, "head_tail") == "short text"
    with pytest.raises(ValueError, match="truncation policy"):
        tb.truncate_words(text, 10, "middle")


# ---------------------------------------------------------------- loading

def test_load_posts_strips_and_truncates(posts_csv):
    posts = tb.load_posts(posts_csv, max_words=8, policy="head")
    assert len(posts) == 150 and set(posts["site"]) == set(SITES)
    assert posts["post_id"].is_unique and posts["post_id"].iloc[0] == "alpha:0"
    assert all(len(b.split()) <= 8 for b in posts["body"])
    assert not posts["body"].str.contains("<").any()
    assert tb.load_posts(posts_csv, sites=["beta"])["site"].eq("beta").all()


@pytest.mark.parametrize("change, message, row", [
    (lambda f: f.assign(title=f["title"].where(f.index != 3, "  ")), r"row 4 \(line {line}\), column 'title'", 3),
    (lambda f: f.assign(title=f["title"].where(f.index != 3, "\u200b\u2060")), r"row 4 \(line {line}\), column 'title'",
     3),
    (lambda f: f.assign(content=f["content"].where(f.index != 5, "<p><img src='a.png'></p>")),
     r"row 6 \(line {line}\), column 'content': body has no text", 5),
    (lambda f: f.assign(id=f["id"].where(f.index != 7, "4")), r"row 8 \(line {line}\), column 'id'.*appears twice", 7),
    (lambda f: f.drop(columns="content"), "needs a 'title' and a 'content'", 0),
])
def test_bad_post_files_name_file_row_and_column(tmp_path, change, message, row):
    path = tmp_path / "bad.csv"
    frame = change(make_posts(20))
    frame.to_csv(path, index=False)
    line = frame.iloc[:row].to_csv(index=False).count("\n") + 1  # bodies span several lines
    with pytest.raises(DataError, match=message.format(line=line)) as err:
        tb.load_posts(path)
    assert "bad.csv" in str(err.value)


def _with_line(path, n: int, edit) -> int:
    """Rewrite physical line `n` of the CSV at `path` (1 = header) with `edit(bytes) -> bytes`; returns `n`."""
    lines = path.read_bytes().split(b"\n")
    lines[n - 1] = edit(lines[n - 1])
    path.write_bytes(b"\n".join(lines))
    return n


@pytest.mark.parametrize("edit, message", [
    (lambda line: line + b",extra", r"row \d+ \(line {line}\): field count \(the header has 5 fields, this line has 6\)"),
    (lambda line: line.replace(b"alpha", b"alph\xe9", 1), r"line {line} \(byte \d+\), column 'site': not valid UTF-8"),
])
def test_malformed_post_files_name_file_line_and_column(tmp_path, edit, message):
    path = tmp_path / "bad.csv"
    make_posts(20).assign(content="<p>one line</p>").to_csv(path, index=False)
    line = _with_line(path, 5, edit)
    with pytest.raises(DataError, match=message.format(line=line)) as err:
        tb.load_posts(path)
    assert str(err.value).startswith(str(path))


def test_unknown_site_is_an_error(posts_csv):
    with pytest.raises(DataError, match="robotics"):
        tb.load_posts(posts_csv, sites=["robotics"])


# ---------------------------------------------------------------- splits and pairs

def test_split_by_post_is_disjoint_seeded_and_keeps_equal_titles_together(posts_csv):
    posts = tb.load_posts(posts_csv)
    posts.loc[10, "title"] = posts.loc[90, "title"]  # two posts, one title: must land in one split
    parts = tb.split_posts(posts, seed=3)
    ids = [set(p["post_id"]) for p in parts.values()]
    assert sum(map(len, ids)) == len(posts) and set.union(*ids) == set(posts["post_id"])
    assert all(not (a & b) for i, a in enumerate(ids) for b in ids[i + 1:])
    assert 100 <= len(parts["train"]) <= 140
    same = [name for name, p in parts.items() if {posts.loc[10, "post_id"], posts.loc[90, "post_id"]} <= set(p["post_id"])]
    assert len(same) == 1
    again = tb.split_posts(posts, seed=3)
    assert all(parts[k]["post_id"].tolist() == again[k]["post_id"].tolist() for k in parts)
    assert tb.split_posts(posts, seed=4)["test"]["post_id"].tolist() != parts["test"]["post_id"].tolist()


def test_cross_site_split_holds_out_one_site(posts_csv):
    posts = tb.load_posts(posts_csv)
    parts = tb.cross_site_split(posts, "gamma", val_fraction=0.2)
    assert set(parts["test"]["site"]) == {"gamma"} and len(parts["test"]) == 50
    assert set(parts["train"]["site"]) | set(parts["validation"]["site"]) == {"alpha", "beta"}
    assert not set(parts["train"]["post_id"]) & set(parts["validation"]["post_id"])
    assert len(parts["train"]) + len(parts["validation"]) == 100
    with pytest.raises(DataError, match="robotics"):
        tb.cross_site_split(posts, "robotics")


def test_pairs_are_balanced_and_negatives_are_other_bodies(posts_csv):
    posts = tb.load_posts(posts_csv)
    body_of = dict(zip(posts["post_id"], posts["body"]))
    for kind in ("random", "tags", "mixed"):
        pairs = tb.make_pairs(posts, kind, seed=1)
        assert len(pairs) == 2 * len(posts) and pairs["is_duplicate"].mean() == 0.5
        pos, neg = pairs[pairs["is_duplicate"] == 1], pairs[pairs["is_duplicate"] == 0]
        assert (pos["question2"] == pos["post_id"].map(body_of)).all()
        assert (neg["question2"] != neg["post_id"].map(body_of)).all()
        assert (neg["question2"] == neg["neg_post_id"].map(body_of)).all()
    hard = tb.make_pairs(posts, "tags", seed=1)
    hard = hard[hard["kind"] == "tags"]
    tags = dict(zip(posts["post_id"], posts["tags"].str.split()))
    site = dict(zip(posts["post_id"], posts["site"]))
    assert len(hard) > 100
    assert all(site[a] == site[b] and set(tags[a]) & set(tags[b]) for a, b in zip(hard["post_id"], hard["neg_post_id"]))
    swapped = tb.make_pairs(posts, "random", seed=1, left="body", right="title")
    assert set(swapped["question1"]) <= set(posts["body"])


def test_nearest_negatives_pick_the_closest_other_body():
    titles = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    bodies = np.array([[1.0, 0.1], [0.9, 0.2], [0.0, 1.0]])
    assert tb.nearest_negatives(titles, bodies, metric="cosine").tolist() == [1, 2, 1]  # own body excluded
    # a body identical to the post's own is no negative: posts 0 and 1 share body "x", so both get body 2
    assert tb.nearest_negatives(titles, bodies, bodies=["x", "x", "z"], metric="cosine").tolist() == [2, 2, 1]


# ---------------------------------------------------------------- retrieval

def test_retrieval_metrics_on_a_hand_made_case():
    d = np.array([[0.1, 0.5, 0.9],   # true 0: rank 1
                  [0.2, 0.4, 0.3],   # true 1: 0.2 and 0.3 are closer → rank 3
                  [0.5, 0.6, 0.5]])  # true 2: tie with candidate 0 counts against it → rank 2
    ranks = true_ranks(d, [0, 1, 2])
    assert ranks.tolist() == [1, 3, 2]
    m = retrieval_metrics(ranks, ks=(1, 2))
    assert m["recall@1"] == pytest.approx(1 / 3) and m["recall@2"] == pytest.approx(2 / 3)
    assert m["mrr"] == pytest.approx((1 + 1 / 3 + 1 / 2) / 3)
    assert true_ranks(np.zeros((4, 4)), range(4)).tolist() == [4, 4, 4, 4]  # a constant model is last, not first


def test_candidate_pools_cover_every_query_with_exactly_n_candidates():
    pools = candidate_pools(25, 10, seed=0)
    queries = np.concatenate([q for q, _ in pools])
    assert sorted(queries.tolist()) == list(range(25))
    for q, c in pools:
        assert len(c) == 10 and len(set(c.tolist())) == 10 and set(q.tolist()) <= set(c.tolist())
    with pytest.raises(ValueError, match="cannot fill"):
        candidate_pools(5, 10)
    # identity embeddings: every title finds its body first
    emb = np.eye(25)
    assert (rank_in_pools(emb, emb, 10, "euclidean") == 1).all()


# ---------------------------------------------------------------- pseudo-Siamese training

def _pseudo_cfg(tmp_path, data, **kw):
    base = dict(out=str(tmp_path / "run"), data=[str(data)], variant="pseudo", left_encoder="lstm",
                right_encoder="lstm", left_col="title", right_col="body", epochs=3, batch_size=16, glove=False,
                embedding_dim=16, hidden_size=16, projection_dim=16, min_freq=1, max_length=16, right_max_length=24,
                body_max_words=20, test_site="gamma", device="cpu", progress=False, lr=5e-3)
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def pseudo_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pseudo")
    data = tmp / "posts.csv.gz"
    make_posts(300, seed=2).to_csv(data, index=False)
    return train(_pseudo_cfg(tmp, data, epochs=5)), data


def test_pseudo_model_trains_and_reloads_exactly(pseudo_run, tmp_path):
    run, data = pseudo_run
    det = qpairs.load(run, device="cpu")
    assert det.model.variant == "pseudo"
    left, right = det.model.encoder, det.model.right_encoder
    assert left is not right and left.dim == right.dim == 16
    # unshared: both start from the same weights (one vocabulary) and are trained apart
    assert left.vocab.itos == right.vocab.itos
    assert not torch.equal(left.lstm.weight_ih_l0, right.lstm.weight_ih_l0)
    assert json.loads((run / "splits" / "info.json").read_text())["sites"]["test"] == ["gamma"]
    history = json.loads((run / "history.json").read_text())
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"]["roc_auc"] > 0.75  # generated bodies repeat the title's words

    posts = tb.load_posts(run / "splits" / "test_posts.csv.gz")
    titles, bodies = list(posts["title"][:6]), list(posts["content"][:6])  # raw HTML bodies
    p = det.predict_proba(titles, bodies)
    cfg_train = det.config["train"]
    clean = [tb.clean_body(b, cfg_train["body_max_words"], cfg_train["body_truncation"]) for b in bodies]
    assert np.array_equal(p, det.predict_proba(titles, clean))  # HTML is stripped as in training
    assert not np.allclose(p, det.predict_proba(clean, titles))  # argument order matters: title first

    copy = tmp_path / "copy"
    save_model(det.model, copy, det.config["train"])
    write_json(copy / "calibration.json", det.calibrator.to_dict())
    again = qpairs.load(copy, device="cpu")
    assert np.array_equal(p, again.predict_proba(titles, bodies))
    for k, v in det.model.state_dict().items():
        assert torch.equal(v, again.model.state_dict()[k]), k


def test_evaluate_cli_on_a_post_file(pseudo_run, tmp_path, capsys):
    from qpairs.cli import main

    run, _ = pseudo_run
    out = tmp_path / "eval"
    assert main(["evaluate", str(run), "--data", str(run / "splits" / "test_posts.csv.gz"), "--candidates", "20",
                 "--out", str(out), "--device", "cpu"]) == 0
    res = json.loads((out / "title_body_metrics.json").read_text())
    assert res["posts"] == 100 and res["retrieval"]["n_candidates"] == 20
    assert res["pairs_random"]["n"] == 200 and res["pairs_hard"]["n"] == 200
    assert 0 < res["retrieval"]["mrr"] <= 1
    assert res["retrieval_bm25"]["bm25_weight"] == 0.1 and res["retrieval_bm25"]["n_candidates"] == 20
    assert "with BM25 at weight 0.1" in capsys.readouterr().out


@pytest.mark.parametrize("extra", [
    dict(left_encoder="lstm", right_encoder="transformer"),  # mixed: the LSTM projects to the transformer's size
    dict(left_encoder="transformer", right_encoder="transformer", freeze_base=True, head="residual"),  # two heads
])
def test_pseudo_with_a_transformer_side_trains_and_reloads(tmp_path, tiny_bert, extra):
    data = tmp_path / "posts.csv.gz"
    make_posts(90, seed=3).to_csv(data, index=False)
    cfg = _pseudo_cfg(tmp_path, data, epochs=1, base_model=str(tiny_bert), projection_dim=24, **extra)
    run = train(cfg)
    det = qpairs.load(run, device="cpu")
    assert det.model.variant == "pseudo" and det.model.encoder.dim == det.model.right_encoder.dim
    if extra.get("freeze_base"):  # one frozen base, two heads that moved apart in training
        lh, rh = det.model.encoder.head.state_dict(), det.model.right_encoder.head.state_dict()
        assert any(not torch.equal(lh[k], rh[k]) for k in lh)
    else:
        assert det.model.encoder.dim == 24 and det.model.right_encoder.config["type"] == "transformer"
    posts = tb.load_posts(data)
    p = det.predict_proba(list(posts["title"][:4]), list(posts["content"][:4]))
    assert np.array_equal(p, qpairs.load(run, device="cpu").predict_proba(list(posts["title"][:4]),
                                                                          list(posts["content"][:4])))


def test_title_body_triplets_keep_roles(posts_csv):
    posts = tb.load_posts(posts_csv)
    pairs = tb.make_pairs(posts, "tags", seed=0)
    sampler = tb.TitleBodyTriplets(pairs.iloc[: len(pairs) - 40])  # some posts lose their labelled negative
    titles, bodies = set(posts["title"]), set(posts["body"])
    body_of = dict(zip(posts["title"], posts["body"]))
    seen = 0
    for a, p, n, groups in sampler.batches(32, seed=0):
        assert set(a) <= titles and set(p) <= bodies and set(n) <= bodies
        assert all(body_of[t] == b for t, b in zip(a, p)) and all(x != y for x, y in zip(p, n))
        assert groups.shape == (3 * len(a),) and groups[: len(a)].tolist() == groups[len(a) : 2 * len(a)].tolist()
        seen += len(a)
    assert seen == len(sampler) == (pairs.iloc[: len(pairs) - 40]["is_duplicate"] == 1).sum()


@pytest.mark.parametrize("loss", ["mnrl", "triplet"])
def test_pseudo_trains_with_the_triplet_losses(tmp_path, loss):
    data = tmp_path / "posts.csv.gz"
    make_posts(120, seed=4).to_csv(data, index=False)
    run = train(_pseudo_cfg(tmp_path, data, epochs=2, loss=loss, distance="cosine"))
    history = json.loads((run / "history.json").read_text())
    assert len(history) == 2 and np.isfinite(history[-1]["train_loss"])
    assert qpairs.load(run, device="cpu").model.variant == "pseudo"


def test_score_cli_on_title_and_raw_html_body_columns(pseudo_run, tmp_path):
    from qpairs.cli import main

    run, _ = pseudo_run
    src = run / "splits" / "test_posts.csv.gz"
    out = tmp_path / "scored.csv"
    assert main(["score", str(src), "-o", str(out), "--model", str(run), "--q1-col", "title", "--q2-col", "content",
                 "--device", "cpu"]) == 0
    scored = pd.read_csv(out, keep_default_na=False)
    raw = pd.read_csv(src, keep_default_na=False)
    expected = qpairs.load(run, device="cpu").predict_proba(list(raw["title"]), list(raw["content"]))
    assert len(scored) == len(raw)
    np.testing.assert_allclose(scored["duplicate_probability"].to_numpy(), expected, rtol=1e-5, atol=1e-6)


def test_mined_negatives_mix_nearest_bodies_tags_and_same_site(posts_csv):
    posts = tb.load_posts(posts_csv)
    n = len(posts)
    nearest = (np.arange(n) + 1) % n  # a stand-in for a first-pass model's nearest other body
    neg, kinds = tb.mined_negatives(posts, nearest, np.random.default_rng(0), nearest_share=0.5)
    counts = {k: int((kinds == k).sum()) for k in ("nearest", "tags", "site")}
    assert sum(counts.values()) == n and 0.35 * n < counts["nearest"] < 0.65 * n and counts["tags"] > 0
    assert (neg[kinds == "nearest"] == nearest[kinds == "nearest"]).all()
    site, tags = posts["site"].to_numpy(), posts["tags"].str.split().to_list()
    for i in np.flatnonzero(kinds == "tags"):
        assert site[neg[i]] == site[i] and set(tags[neg[i]]) & set(tags[i]) and neg[i] != i
    pairs = tb.make_pairs(posts, seed=0, negative_index=neg, negative_kind=kinds)
    negatives = pairs[pairs["is_duplicate"] == 0]
    assert negatives["kind"].value_counts().to_dict() == {k: v for k, v in counts.items() if v}
    body_of = dict(zip(posts["post_id"], posts["body"]))
    assert (negatives["question2"] == negatives["neg_post_id"].map(body_of)).all()
    with pytest.raises(ValueError, match="nearest bodies"):
        tb.mined_negatives(posts, nearest[:-1], np.random.default_rng(0))


@pytest.mark.parametrize("side", ["body", "title"])
def test_search_finds_bodies_from_a_title_and_titles_from_a_body(pseudo_run, tmp_path, side):
    """A pseudo-Siamese index reads its stored texts with their own tower and each query with the other one."""
    from qpairs.cli import main
    from qpairs.search import QuestionIndex

    run, _ = pseudo_run
    det = qpairs.load(run, device="cpu", backend="torch")
    posts = tb.load_posts(run / "splits" / "test_posts.csv.gz").iloc[:30]
    stored_col, query_col = ("content", "title") if side == "body" else ("title", "content")
    bank = tmp_path / "bank.csv"
    posts.rename(columns={stored_col: "text"})[["id", "text"]].to_csv(bank, index=False)
    out = tmp_path / "index"
    assert main(["index", str(bank), "-o", str(out), "--model", str(run), "--side", side, "--space", "model",
                 "--device", "cpu", "--backend", "torch"]) == 0
    index = QuestionIndex.load(out)
    assert index.side == ("right" if side == "body" else "left")
    query = posts[query_col].iloc[3]
    hits = index.search(det, query, k=30)
    assert len(hits) == 30
    titles, bodies = (([query] * 30, [h.text for h in hits]) if side == "body" else
                      ([h.text for h in hits], [query] * 30))
    np.testing.assert_allclose([h.probability for h in hits], det.predict_proba(titles, bodies), rtol=1e-5, atol=1e-6)
    # the towers differ: reading the query with the stored texts' tower ranks differently
    swapped = det.model.decision_distance(
        torch.from_numpy(index.query_vectors(det, [query], index.side)).expand(30, -1),
        torch.from_numpy(index.stored_embeddings(det, np.arange(30)))).numpy()
    assert not np.allclose(np.sort(swapped), np.sort([h.distance for h in hits]), atol=1e-4)
    with pytest.raises(ValueError, match="title/body run"):
        QuestionIndex.empty(qpairs.load("fast"), side="title")


def test_rerank_orders_each_querys_shortlist_by_the_pair_model():
    from qpairs.retrieval import rerank_in_pools

    q = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, -1.0]])
    items = np.array([[0.5, 1.0], [0.0, 1.0], [1.0, 0.9], [-1.0, 1.0]])
    plain = rank_in_pools(q, items, 4, "cosine")
    assert plain.tolist() == [2, 1, 1, 4]
    perfect = lambda qi, it: np.where(np.asarray(qi) == np.asarray(it), 0.0, 1.0)  # noqa: E731
    # query 0's body is 2nd by embedding: a shortlist of 1 misses it (rank kept), one of 2 puts it first;
    # query 3's body is last: outside any shortlist shorter than the pool
    assert rerank_in_pools(q, items, perfect, 1, 4, "cosine").tolist() == [2, 1, 1, 4]
    assert rerank_in_pools(q, items, perfect, 2, 4, "cosine").tolist() == [1, 1, 1, 4]
    assert rerank_in_pools(q, items, perfect, 4, 4, "cosine").tolist() == [1, 1, 1, 1]
    constant = lambda qi, it: np.zeros(len(qi))  # noqa: E731
    assert rerank_in_pools(q, items, constant, 4, 4, "cosine").tolist() == [4, 4, 4, 4]  # ties count against


def test_a_matching_head_scores_pairs_and_reranks_bodies_itself(tmp_path, posts_csv, tiny_bert):
    from _tiny_models import tiny_matching_dir
    from qpairs.retrieval import candidate_pools
    from qpairs.title_body_eval import HeadDistances, evaluate_title_body

    det = qpairs.load(tiny_matching_dir(tmp_path / "m", tiny_bert), device="cpu", backend="torch")
    posts = tb.load_posts(posts_csv).iloc[:40].reset_index(drop=True)
    res = evaluate_title_body(det, posts, n_candidates=20, rerank=20)
    head = HeadDistances(det, posts)
    ranks = []
    for queries, cands in candidate_pools(len(posts), 20, 0):
        for i in queries:  # every candidate re-scored: the head alone orders the pool
            d = head([i] * len(cands), cands)
            ranks.append(int((d <= d[cands == i][0]).sum()))
    assert res["retrieval_reranked"]["mrr"] == pytest.approx(np.mean(1 / np.array(ranks)))
    assert res["retrieval_reranked"]["mrr"] != pytest.approx(res["retrieval"]["mrr"])
    # the shortlist comes from the base's pooled cosine, as in a base-space search index: with a shortlist
    # of one, the head changes nothing and the ranks are the base cosine's
    assert res["retrieval_reranked"]["shortlist"] == "base cosine"
    one = evaluate_title_body(det, posts, n_candidates=20, rerank=1)["retrieval_reranked"]
    assert one["mrr"] == pytest.approx(retrieval_metrics(rank_in_pools(*head.base_vectors(), 20, "cosine"))["mrr"])
    neg = tb.random_negatives(posts, np.random.default_rng(0))
    raw = posts["content"]  # the bodies as the file holds them, which scoring reads too
    titles, bodies = list(posts["title"]) * 2, list(raw) + list(raw.iloc[neg])
    y = np.r_[np.ones(len(posts)), np.zeros(len(posts))]
    from sklearn.metrics import log_loss

    assert res["pairs_random"]["log_loss"] == pytest.approx(log_loss(y, det.predict_proba(titles, bodies)), abs=1e-4)


def test_the_zero_shot_baseline_shares_its_base_cache_with_frozen_base_runs(tiny_bert):
    from qpairs.builders import build_model
    from qpairs.title_body_eval import zero_shot_detector
    from qpairs.tokencache import token_cache_meta

    det = zero_shot_detector(None, base_model=str(tiny_bert), max_length=32)
    run = build_model(TrainConfig(encoder="transformer", base_model=str(tiny_bert), freeze_base=True, head="residual",
                                  max_length=32).resolved(), [])
    assert token_cache_meta(det.model.encoder, "fp32") == token_cache_meta(run.encoder, "fp32")
    emb = det.encode(["How do I fix python?", "Why is the sky blue?"])
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)  # still the plain pooled, normalised base


def test_adapt_selection_set_ranks_its_labelled_titles_among_a_pool_of_site_bodies(posts_csv, load_script):
    """scripts/eval_title_body_lexical.py's selection set: the labelled posts are the same with or without a
    larger pool, come first and are the only titles marked for ranking; the pool never exceeds the site."""
    script = load_script("eval_title_body_lexical")
    rest = tb.load_posts(posts_csv).head(60)
    alone, pooled = script.adapt_set(rest, 10, 0, seed=0), script.adapt_set(rest, 10, 40, seed=0)
    assert len(alone) == 10 and alone["query"].all()
    assert len(pooled) == 40 and pooled["post_id"].is_unique
    assert list(pooled["post_id"][:10]) == list(alone["post_id"]) and pooled["query"].sum() == 10
    with pytest.raises(SystemExit, match="only 60 posts"):
        script.adapt_set(rest, 10, 61, seed=0)


def test_a_body_with_no_text_once_its_html_is_stripped_is_refused_in_every_path(pseudo_run, tmp_path):
    from qpairs.data import DataError
    from qpairs.scoring import score_file
    from qpairs.search import QuestionIndex

    run, _ = pseudo_run
    det = qpairs.load(run, device="cpu")
    empty = '<p> </p><img src="x.png"/>'
    with pytest.raises(ValueError, match="q2 is not a question: empty once prepared for the model"):
        det.predict_proba("How do I bake bread?", empty)
    pd.DataFrame({"title": ["How do I bake bread?", "Why is the sky blue?"],
                  "body": ["<p>Flour, water and yeast.</p>", empty]}).to_csv(tmp_path / "posts.csv", index=False)
    with pytest.raises(DataError, match=r"row 2 \(line 3\), column 'body': empty once prepared for the model"):
        score_file(tmp_path / "posts.csv", tmp_path / "out.csv", det, progress=False)
    with pytest.raises(ValueError, match=r"texts\[1\] is not a question: empty once prepared"):
        QuestionIndex.build(det, ["<p>Flour, water and yeast.</p>", empty])
    titles = QuestionIndex.build(det, ["How do I bake bread?", "Why is the sky blue?"], side="left")
    with pytest.raises(ValueError, match="question is not a question: empty once prepared"):
        titles.search(det, empty, k=1)  # a body query against stored titles


def test_the_service_refuses_a_body_with_no_text_alone_and_answers_the_requests_beside_it(pseudo_run):
    import asyncio

    import httpx

    from qpairs.search import QuestionIndex
    from qpairs.service import create_app
    from tiny_search_model import serving

    run, _ = pseudo_run
    det = qpairs.load(run, device="cpu")
    empty = '<p> </p><img src="x.png"/>'
    titles = QuestionIndex.build(det, ["How do I bake bread?", "Why is the sky blue?"], side="left")
    good = [{"q1": f"How do I bake bread number {i}?", "q2": "<p>Flour, water and yeast.</p>"} for i in range(20)]
    expected = det.predict_proba([g["q1"] for g in good], [g["q2"] for g in good])

    async def fire(base):
        async with httpx.AsyncClient(base_url=base, timeout=30) as c:
            bad = [{"q1": "How do I bake bread?", "q2": empty}, {"pairs": [good[0], {"q1": "Why?", "q2": empty}]}]
            return await asyncio.gather(*(c.post("/predict", json=body) for body in bad + good),
                                        c.post("/search", json={"question": empty}))

    with serving(create_app(det, titles, max_wait_ms=50.0)) as base:
        single, listed, *answers, search = asyncio.run(fire(base))
    assert single.status_code == 422 and "q2 is not a question: empty once prepared" in single.json()["error"]
    assert listed.status_code == 422 and "pairs.q2[1] is not a question" in listed.json()["error"]
    assert search.status_code == 422 and "question is not a question" in search.json()["error"]
    assert [r.status_code for r in answers] == [200] * len(good)
    assert [r.json()["probability"] for r in answers] == pytest.approx(list(expected), rel=1e-6)


def test_score_finds_a_post_files_title_and_content_columns_by_name(pseudo_run, tmp_path):
    from qpairs.scoring import score_file

    run, _ = pseudo_run
    det = qpairs.load(run, device="cpu")
    posts = pd.DataFrame({"id": [7, 9], "title": ["How do I bake bread?", "Why is the sky blue?"],
                          "content": ["<p>Flour, water and <b>yeast</b>.</p>", "<p>Rayleigh scattering.</p>"]})
    posts.to_csv(tmp_path / "posts.csv", index=False)
    score_file(tmp_path / "posts.csv", tmp_path / "out.csv", det, progress=False)
    out = pd.read_csv(tmp_path / "out.csv")
    expected = det.predict_proba(list(posts["title"]), list(posts["content"]))
    np.testing.assert_allclose(out["duplicate_probability"], expected, atol=1e-6)


def test_score_reads_a_post_file_in_the_order_of_a_run_trained_bodies_first(tmp_path):
    from qpairs.scoring import score_file

    data = tmp_path / "posts.csv.gz"
    make_posts(200, seed=3).to_csv(data, index=False)
    run = train(_pseudo_cfg(tmp_path, data, left_col="body", right_col="title", epochs=1))
    det = qpairs.load(run, device="cpu")
    posts = pd.DataFrame({"title": ["How do I bake bread?", "Why is the sky blue?"],
                          "body": ["<p>Flour, water and <b>yeast</b>.</p>", "<p>Rayleigh scattering.</p>"]})
    posts.to_csv(tmp_path / "posts.csv", index=False)
    score_file(tmp_path / "posts.csv", tmp_path / "out.csv", det, progress=False)
    expected = det.predict_proba(list(posts["body"]), list(posts["title"]))  # the run's order: body, then title
    np.testing.assert_allclose(pd.read_csv(tmp_path / "out.csv")["duplicate_probability"], expected, atol=1e-6)
    posts.rename(columns={"title": "Title", "body": "Body"}).to_csv(tmp_path / "Posts.csv", index=False)
    score_file(tmp_path / "Posts.csv", tmp_path / "Out.csv", det, progress=False)  # names in another case
    np.testing.assert_allclose(pd.read_csv(tmp_path / "Out.csv")["duplicate_probability"], expected, atol=1e-6)
