"""Outer cross-validation folds and the train/dev split inside each fold.

A fold's split is stored as one character per molecule of the cleaned dataset
(in its canonical-SMILES order): ``t`` train, ``d`` dev (model selection and
early stopping), ``h`` held out (the fold's test part, never seen by the search).
"""

from __future__ import annotations

import base64
import zlib
from dataclasses import dataclass

import numpy as np
from rdkit import Chem, RDLogger
from rdkit.Chem.Scaffolds import MurckoScaffold
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, train_test_split

from shared.errors import ConfigError, ExperimentMismatchError

SPLIT_KINDS = ("stratified", "scaffold")
TRAIN, DEV, HELD_OUT = "t", "d", "h"
_ENCODING_PREFIX = "zlib-b64:"


@dataclass(frozen=True)
class FoldSplit:
    train: np.ndarray  # indices into the cleaned dataset, sorted
    dev: np.ndarray
    held_out: np.ndarray

    def encode(self, n_molecules: int) -> str:
        codes = np.full(n_molecules, HELD_OUT, dtype="<U1")
        codes[self.train] = TRAIN
        codes[self.dev] = DEV
        packed = zlib.compress("".join(codes.tolist()).encode("ascii"), 9)
        return _ENCODING_PREFIX + base64.b64encode(packed).decode("ascii")

    @classmethod
    def decode(cls, text: str, n_molecules: int) -> FoldSplit:
        if not text.startswith(_ENCODING_PREFIX):
            raise ExperimentMismatchError(f"stored split has an unknown encoding: {text[:20]!r}")
        codes = np.frombuffer(zlib.decompress(base64.b64decode(text[len(_ENCODING_PREFIX):])), dtype="S1")
        if codes.size != n_molecules:
            raise ExperimentMismatchError(
                f"stored split covers {codes.size} molecules, the local dataset has {n_molecules}"
            )
        return cls(*(np.flatnonzero(codes == code.encode()) for code in (TRAIN, DEV, HELD_OUT)))

    def counts(self) -> dict[str, int]:
        return {"train": int(self.train.size), "dev": int(self.dev.size), "held_out": int(self.held_out.size)}


def murcko_scaffold(smiles: str) -> str:
    """Return the Bemis-Murcko scaffold SMILES; acyclic molecules share the empty scaffold."""
    mol = Chem.MolFromSmiles(smiles)
    return MurckoScaffold.MurckoScaffoldSmiles(mol=mol, includeChirality=False)


def make_splits(
    smiles: list[str],
    labels: np.ndarray,
    *,
    n_folds: int,
    kind: str,
    dev_fraction: float,
    seed: int,
) -> list[FoldSplit]:
    """Assign every molecule to one held-out fold, then split each fold's rest into train and dev."""
    if kind not in SPLIT_KINDS:
        raise ConfigError(f"split kind {kind!r} is unknown: use one of {', '.join(SPLIT_KINDS)}")
    if not 2 <= n_folds <= len(smiles):
        raise ConfigError(f"folds={n_folds} is out of range: use 2 to {len(smiles)} (the number of molecules)")
    if not 0.0 < dev_fraction < 1.0:
        raise ConfigError(f"dev fraction {dev_fraction} is out of range: use a value between 0 and 1")
    minority = int(min(labels.sum(), labels.size - labels.sum()))
    if minority < n_folds * 2:
        raise ConfigError(
            f"the smaller class has {minority} molecules, too few for {n_folds} stratified folds "
            "with a dev split: use fewer folds or more data"
        )

    placeholder = np.zeros(len(smiles))
    if kind == "stratified":
        outer = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed).split(placeholder, labels)
    else:
        RDLogger.DisableLog("rdApp.*")
        try:
            groups = [murcko_scaffold(s) for s in smiles]
        finally:
            RDLogger.EnableLog("rdApp.*")
        splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        outer = splitter.split(placeholder, labels, groups)

    folds = []
    for fold, (visible, held_out) in enumerate(outer):
        train, dev = train_test_split(
            visible, test_size=dev_fraction, stratify=labels[visible], random_state=seed + fold,
        )
        folds.append(FoldSplit(np.sort(train), np.sort(dev), np.sort(held_out)))
    return folds
