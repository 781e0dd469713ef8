"""The SMILES LSTM classifier."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from shared.tokenizer import PAD_INDEX


class SmilesLSTM(nn.Module):
    """Embedding -> (bi)directional multi-layer LSTM over packed sequences -> two-layer head.

    ``forward`` takes tokens (B, T) and lengths (B,) and returns one logit per
    molecule, shape (B,), also for B = 1.
    """

    def __init__(
        self,
        vocab_size: int,
        embedding_dim: int,
        d_model: int,
        num_layers: int,
        bidirectional: bool,
        dropout: float,
    ):
        super().__init__()
        self.bidirectional = bidirectional
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=PAD_INDEX)
        # nn.LSTM applies dropout only between layers: with one layer it would
        # only warn, so it is passed on only when there is more than one.
        self.lstm = nn.LSTM(
            embedding_dim,
            d_model,
            num_layers=num_layers,
            batch_first=True,
            bidirectional=bidirectional,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        state_width = d_model * (2 if bidirectional else 1)
        self.head = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(state_width, d_model),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(d_model, 1),
        )

    def final_state(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Return the top layer's last hidden state, (B, d_model) or (B, 2 * d_model)."""
        embedded = self.embedding(tokens)
        # pack_padded_sequence requires the lengths on the CPU, whatever the device.
        packed = pack_padded_sequence(embedded, lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, (h_n, _) = self.lstm(packed)
        # h_n is (num_layers * directions, B, d_model), ordered layer by layer and
        # forward before backward, so the top layer is h_n[-2] (forward) and
        # h_n[-1] (backward). With enforce_sorted=False it is in the batch's order.
        if self.bidirectional:
            return torch.cat((h_n[-2], h_n[-1]), dim=-1)
        return h_n[-1]

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.head(self.final_state(tokens, lengths)).squeeze(-1)
