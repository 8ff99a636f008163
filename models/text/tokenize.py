"""Tokenize the committed public-domain text into .npz feeds for BERT-style encoders.

Source of ``public_domain.txt``, one sentence a line, all public domain (US founding
documents, transcribed as published by the US National Archives and Library of Congress):
lines 1-48 the Declaration of Independence (1776), lines 49-58 the Gettysburg Address
(Bliss copy, 1863), lines 59-68 the Preamble of the US Constitution (1787) and articles
1-4, 6 and 8-10 of the Bill of Rights (1791). The calibration split is the Declaration;
the held-out split is the other documents, text the calibration never saw.

Tokenization is BERT's uncased WordPiece (lower case, accents stripped, punctuation
split, greedy longest-match word pieces) with the vocabulary the MiniLM-uncased models
ship (``models.fetch.fetch_file("bert-uncased-vocab")``); ``[CLS] ... [SEP]`` then
padding to ``SEQ`` tokens. Run ``python -m models.text.tokenize`` to rebuild the .npz files.
"""

from __future__ import annotations

import pathlib
import unicodedata

import numpy as np

__all__ = ["CALIB_LINES", "SEQ", "encode", "load_vocab", "main", "wordpiece"]

HERE = pathlib.Path(__file__).resolve().parent
TEXT = HERE / "public_domain.txt"
SEQ = 128
CALIB_LINES = 48  # the Declaration: calibration; the rest: held out


def load_vocab(path: pathlib.Path) -> dict[str, int]:
    """Token -> id from a vocab.txt (one token a line)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return {token: index for index, token in enumerate(lines)}


def _basic(text: str) -> list[str]:
    text = unicodedata.normalize("NFD", text.lower())
    text = "".join(c for c in text if unicodedata.category(c) != "Mn")
    words: list[str] = []
    for chunk in text.split():
        current = ""
        for char in chunk:
            cat = unicodedata.category(char)
            if cat.startswith("P") or (char.isascii() and not char.isalnum()):
                if current:
                    words.append(current)
                words.append(char)
                current = ""
            else:
                current += char
        if current:
            words.append(current)
    return words


def wordpiece(text: str, vocab: dict[str, int]) -> list[int]:
    """Ids of ``text`` under BERT's uncased basic tokenizer and greedy WordPiece."""
    ids = []
    for word in _basic(text):
        start, pieces = 0, []
        while start < len(word):
            end = len(word)
            while end > start:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in vocab:
                    pieces.append(vocab[piece])
                    break
                end -= 1
            if end == start:
                pieces = [vocab["[UNK]"]]
                break
            start = end
        ids.extend(pieces)
    return ids


def encode(lines: list[str], vocab: dict[str, int], seq: int = SEQ) -> dict[str, np.ndarray]:
    """input_ids / attention_mask / token_type_ids [len(lines), seq], int64, padded."""
    ids = np.zeros([len(lines), seq], np.int64)
    mask = np.zeros([len(lines), seq], np.int64)
    for row, line in enumerate(lines):
        tokens = [vocab["[CLS]"], *wordpiece(line, vocab)[: seq - 2], vocab["[SEP]"]]
        ids[row, : len(tokens)] = tokens
        mask[row, : len(tokens)] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


def main() -> int:
    """Write public_domain_calib.npz and public_domain_heldout.npz beside this file."""
    from models import fetch

    vocab = load_vocab(fetch.fetch_file("bert-uncased-vocab"))
    lines = [line for line in TEXT.read_text(encoding="utf-8").splitlines() if line.strip()]
    for name, part in (("calib", lines[:CALIB_LINES]), ("heldout", lines[CALIB_LINES:])):
        arrays = encode(part, vocab)
        arrays.pop("token_type_ids")  # all zeros; the encoders here take two inputs
        np.savez(HERE / f"public_domain_{name}.npz", **arrays)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
