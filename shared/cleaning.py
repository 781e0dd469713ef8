"""RDKit cleaning of raw rows into unique canonical molecules with 0/1 labels."""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from dataclasses import asdict, dataclass

import numpy as np
from rdkit import Chem, RDLogger

from shared.datasets import DatasetSpec, RawRow, read_rows, resolve_path
from shared.errors import InvalidDataError

logger = logging.getLogger(__name__)

_MAX_LINES_IN_MESSAGE = 10


@dataclass(frozen=True)
class CleaningSummary:
    rows: int
    unparsable: int
    multi_fragment: int
    duplicate_rows_merged: int
    conflicting_molecules: int
    conflicting_rows: int
    molecules: int
    positives: int

    def line(self, source: str) -> str:
        return (
            f"{source}: {self.rows} rows -> {self.molecules} molecules ({self.positives} positive); "
            f"dropped {self.unparsable} unparsable SMILES, "
            f"{self.conflicting_rows} rows of {self.conflicting_molecules} molecules with conflicting labels; "
            f"merged {self.duplicate_rows_merged} duplicate rows; "
            f"{self.multi_fragment} multi-fragment SMILES"
        )

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class CleanDataset:
    """Unique molecules sorted by canonical SMILES, so that an index is stable across machines."""

    smiles: list[str]
    labels: np.ndarray  # (N,) int64, 1 = positive
    summary: CleaningSummary
    fingerprint: str


def load_dataset(spec: DatasetSpec) -> CleanDataset:
    """Read, parse and clean a dataset, logging the summary line."""
    path = resolve_path(spec)
    rows = read_rows(path, spec.smiles_column, spec.label_column)
    dataset = clean_rows(rows, spec, source=str(path))
    logger.info("%s", dataset.summary.line(spec.describe()))
    return dataset


def parse_labels(rows: list[RawRow], spec: DatasetSpec, source: str) -> list[int]:
    """Map label strings to 0/1: either 0/1 already, or two values with a named positive one."""
    values = sorted({row.label for row in rows})
    if spec.positive_label is not None:
        if spec.positive_label not in values:
            raise InvalidDataError(
                f"{source}: positive label {spec.positive_label!r} does not occur in column "
                f"{spec.label_column!r}, which holds {values[:5]}: pass one of these with --positive-label"
            )
        if len(values) != 2:
            raise InvalidDataError(
                f"{source}: column {spec.label_column!r} holds {len(values)} distinct values "
                f"{values[:5]}, expected exactly two: fix the file or pick a binary column"
            )
        return [int(row.label == spec.positive_label) for row in rows]
    numeric = {}
    for value in values:
        try:
            number = float(value)
        except ValueError:
            number = None
        if number not in (0.0, 1.0):
            raise InvalidDataError(
                f"{source}: label {value!r} in column {spec.label_column!r} is not 0 or 1: "
                "name the positive value with --positive-label when the labels are strings"
            )
        numeric[value] = int(number)
    return [numeric[row.label] for row in rows]


def _reject_incomplete(rows: list[RawRow], spec: DatasetSpec, source: str) -> None:
    incomplete = [row.line for row in rows if not row.smiles or not row.label]
    if incomplete:
        shown = ", ".join(str(line) for line in incomplete[:_MAX_LINES_IN_MESSAGE])
        more = f" and {len(incomplete) - _MAX_LINES_IN_MESSAGE} more" if len(incomplete) > _MAX_LINES_IN_MESSAGE else ""
        raise InvalidDataError(
            f"{source}: {len(incomplete)} rows have an empty {spec.smiles_column!r} or "
            f"{spec.label_column!r} (lines {shown}{more}): fill in or delete these rows"
        )


def _largest_fragment(mol: Chem.Mol) -> Chem.Mol:
    fragments = Chem.GetMolFrags(mol, asMols=True)
    # Most heavy atoms first; ties go to the lexically smallest SMILES, so the
    # choice does not depend on the order of the fragments in the input.
    return min(fragments, key=lambda f: (-f.GetNumHeavyAtoms(), Chem.MolToSmiles(f)))


def canonicalize(smiles: str, keep_largest_fragment: bool) -> tuple[str | None, bool]:
    """Return the canonical SMILES (None if RDKit cannot parse it) and whether it had several fragments."""
    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        return None, False
    multi = len(Chem.GetMolFrags(mol)) > 1
    if multi and keep_largest_fragment:
        mol = _largest_fragment(mol)
    canonical = Chem.MolToSmiles(mol)
    return (canonical or None), multi


def clean_rows(rows: list[RawRow], spec: DatasetSpec, source: str) -> CleanDataset:
    _reject_incomplete(rows, spec, source)
    labels = parse_labels(rows, spec, source)

    by_smiles: dict[str, list[tuple[int, int]]] = defaultdict(list)
    unparsable = multi_fragment = 0
    RDLogger.DisableLog("rdApp.*")
    try:
        for row, label in zip(rows, labels):
            canonical, multi = canonicalize(row.smiles, spec.keep_largest_fragment)
            multi_fragment += multi
            if canonical is None:
                unparsable += 1
                logger.debug("%s line %d: dropped unparsable SMILES %r", source, row.line, row.smiles)
                continue
            by_smiles[canonical].append((row.line, label))
    finally:
        RDLogger.EnableLog("rdApp.*")

    smiles, kept_labels = [], []
    merged = conflicting_molecules = conflicting_rows = 0
    for canonical in sorted(by_smiles):
        entries = by_smiles[canonical]
        distinct = {label for _, label in entries}
        if len(distinct) > 1:
            conflicting_molecules += 1
            conflicting_rows += len(entries)
            logger.debug("%s lines %s: dropped %s, conflicting labels", source, [l for l, _ in entries], canonical)
            continue
        if len(entries) > 1:
            merged += len(entries) - 1
            logger.debug("%s lines %s: merged duplicates of %s", source, [l for l, _ in entries], canonical)
        smiles.append(canonical)
        kept_labels.append(entries[0][1])

    label_array = np.array(kept_labels, dtype=np.int64)
    if len(set(kept_labels)) < 2:
        raise InvalidDataError(f"{source}: after cleaning, only one class is left: a classifier needs both")
    summary = CleaningSummary(
        rows=len(rows), unparsable=unparsable, multi_fragment=multi_fragment,
        duplicate_rows_merged=merged, conflicting_molecules=conflicting_molecules,
        conflicting_rows=conflicting_rows, molecules=len(smiles), positives=int(label_array.sum()),
    )
    return CleanDataset(smiles, label_array, summary, dataset_fingerprint(smiles, label_array))


def dataset_fingerprint(smiles: list[str], labels: np.ndarray) -> str:
    """Return a SHA-256 over the sorted (canonical SMILES, label) pairs."""
    digest = hashlib.sha256()
    for s, label in zip(smiles, labels.tolist()):
        digest.update(f"{s}\t{label}\n".encode())
    return digest.hexdigest()
