"""Regex SMILES tokenizer and vocabulary.

Bracket atoms (``[nH]``, ``[C@@H]``, ``[N+]``), the two-letter organic-subset
halogens ``Cl`` and ``Br``, and two-digit ring closures (``%10``) are single
tokens. Every other character is a token of its own, so joining the tokens
always gives back the input string.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import numpy as np

PAD_TOKEN = "<pad>"
UNK_TOKEN = "<unk>"
PAD_INDEX = 0
UNK_INDEX = 1

# Alternatives are tried left to right, so the multi-character forms come
# before the single-character fallback.
_TOKEN_PATTERN = re.compile(r"\[[^\[\]]*\]|Br|Cl|%\d{2}|.", re.DOTALL)


def tokenize(smiles: str) -> list[str]:
    """Split a SMILES string into tokens; ``"".join(tokens) == smiles``."""
    return _TOKEN_PATTERN.findall(smiles)


class Vocabulary:
    """Token-to-index map with padding at index 0 and unknown at index 1."""

    def __init__(self, tokens: Iterable[str]):
        ordered = sorted(set(tokens) - {PAD_TOKEN, UNK_TOKEN})
        self.itos: list[str] = [PAD_TOKEN, UNK_TOKEN, *ordered]
        self.stoi: dict[str, int] = {token: i for i, token in enumerate(self.itos)}

    @classmethod
    def from_smiles(cls, smiles: Iterable[str]) -> Vocabulary:
        return cls(token for s in smiles for token in tokenize(s))

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, smiles: str) -> list[int]:
        return [self.stoi.get(token, UNK_INDEX) for token in tokenize(smiles)]


def encode_all(vocab: Vocabulary, smiles: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Encode molecules into a padded (N, T_max) int64 matrix and their lengths (N,)."""
    encoded = [vocab.encode(s) for s in smiles]
    lengths = np.array([len(ids) for ids in encoded], dtype=np.int64)
    matrix = np.full((len(encoded), int(lengths.max(initial=1))), PAD_INDEX, dtype=np.int64)
    for row, ids in enumerate(encoded):
        matrix[row, : len(ids)] = ids
    return matrix, lengths
