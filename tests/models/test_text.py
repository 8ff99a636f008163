"""Real text for encoders: WordPiece tokenization, the committed .npz, the fetched encoder."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from models import fetch
from models.text import tokenize

_VOCAB = {
    t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "we", "hold", "self", "-"])
}
_VOCAB.update({"truth": 8, "##s": 9, "evident": 10, ",": 11})


def test_wordpiece_splits_punctuation_and_word_pieces():
    assert tokenize.wordpiece("We hold TRUTHS, self-evident", _VOCAB) == [4, 5, 8, 9, 11, 6, 7, 10]


def test_wordpiece_unknown_word_is_one_unk():
    assert tokenize.wordpiece("hold zebras", _VOCAB) == [5, 1]


def test_encode_pads_masks_and_truncates():
    arrays = tokenize.encode(["we hold", "we " * 20], _VOCAB, seq=6)
    assert arrays["input_ids"][0].tolist() == [2, 4, 5, 3, 0, 0]
    assert arrays["attention_mask"][0].tolist() == [1, 1, 1, 1, 0, 0]
    assert arrays["input_ids"][1].tolist() == [2, 4, 4, 4, 4, 3]


@pytest.mark.realmodels
def test_committed_npz_is_the_tokenized_committed_text():
    vocab = tokenize.load_vocab(fetch.fetch_file("bert-uncased-vocab"))
    lines = tokenize.TEXT.read_text(encoding="utf-8").splitlines()
    held = np.load(tokenize.HERE / "public_domain_heldout.npz")
    expected = tokenize.encode(lines[tokenize.CALIB_LINES :], vocab)
    np.testing.assert_array_equal(held["input_ids"], expected["input_ids"])
    calib = np.load(tokenize.HERE / "public_domain_calib.npz")
    assert calib["input_ids"].shape == (tokenize.CALIB_LINES, tokenize.SEQ)
    assert not set(map(tuple, calib["input_ids"])) & set(map(tuple, held["input_ids"]))


@pytest.mark.realmodels
def test_trained_encoder_ranks_a_paraphrase_above_an_unrelated_sentence():
    vocab = tokenize.load_vocab(fetch.fetch_file("bert-uncased-vocab"))
    session = ort.InferenceSession(
        str(fetch.fetch("minilm-l3-paraphrase")), providers=["CPUExecutionProvider"]
    )
    feed = tokenize.encode(
        ["A man is playing a guitar.", "Someone plays the guitar.", "Taxes rose this year."],
        vocab,
        seq=16,
    )
    feed.pop("token_type_ids")
    pooled = session.run(None, feed)[3]
    unit = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
    sim = unit @ unit.T
    assert sim[0, 1] > 0.6 > 0.3 > sim[0, 2]


@pytest.mark.realmodels
def test_poems_give_thousands_of_sentences_without_titles_or_numerals():
    from models.text import verse

    found = verse.sentences()
    assert len(found) > 1900 and sum(len(s.split()) for s in found) > 30_000
    assert all(6 <= len(s.split()) <= 60 for s in found)
    assert found[0].startswith("From fairest creatures we desire increase,")
    assert not any(s.startswith(("THE SONNETS", "CLIV ")) for s in found)
