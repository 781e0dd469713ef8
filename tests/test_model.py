import warnings

import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from shared.model import SmilesLSTM


def _model(bidirectional: bool, num_layers: int = 2, d_model: int = 6) -> SmilesLSTM:
    torch.manual_seed(0)
    model = SmilesLSTM(vocab_size=12, embedding_dim=4, d_model=d_model, num_layers=num_layers,
                       bidirectional=bidirectional, dropout=0.0)
    return model.eval()


def test_bidirectional_state_has_forward_and_backward_halves():
    model = _model(bidirectional=True)
    tokens = torch.tensor([[3, 4, 5, 6, 7], [8, 9, 2, 0, 0], [5, 5, 0, 0, 0]])
    lengths = torch.tensor([5, 3, 2])
    state = model.final_state(tokens, lengths)

    # The top layer's outputs per time step: forward in [:d], backward in [d:].
    packed = pack_padded_sequence(model.embedding(tokens), lengths, batch_first=True, enforce_sorted=False)
    outputs, _ = pad_packed_sequence(model.lstm(packed)[0], batch_first=True)
    d = 6
    last_forward = torch.stack([outputs[i, lengths[i] - 1, :d] for i in range(3)])
    first_backward = outputs[:, 0, d:]

    assert state.shape == (3, 2 * d)
    torch.testing.assert_close(state[:, :d], last_forward, msg="first half must be the forward state at the last token")
    torch.testing.assert_close(state[:, d:], first_backward, msg="second half must be the backward state at the first token")
    assert not torch.allclose(state[:, :d], state[:, d:]), "forward and backward halves must differ"


def test_unidirectional_state_is_last_token_output():
    model = _model(bidirectional=False)
    tokens = torch.tensor([[3, 4, 5], [6, 0, 0]])
    lengths = torch.tensor([3, 1])
    packed = pack_padded_sequence(model.embedding(tokens), lengths, batch_first=True, enforce_sorted=False)
    outputs, _ = pad_packed_sequence(model.lstm(packed)[0], batch_first=True)
    expected = torch.stack([outputs[0, 2], outputs[1, 0]])
    torch.testing.assert_close(model.final_state(tokens, lengths), expected)


def test_batch_of_one():
    model = _model(bidirectional=True)
    logits = model(torch.tensor([[3, 4, 5]]), torch.tensor([3]))
    assert logits.shape == (1,)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.tensor([1.0]))
    loss.backward()
    assert torch.isfinite(loss)


def test_state_ignores_padding_and_order():
    model = _model(bidirectional=True)
    alone = model.final_state(torch.tensor([[8, 9, 2]]), torch.tensor([3]))
    in_batch = model.final_state(torch.tensor([[3, 4, 5, 6, 7], [8, 9, 2, 0, 0]]), torch.tensor([5, 3]))
    torch.testing.assert_close(in_batch[1:], alone)


def test_single_layer_with_dropout_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = SmilesLSTM(12, 4, 6, num_layers=1, bidirectional=False, dropout=0.3)
    assert model.lstm.dropout == 0.0
    multi = SmilesLSTM(12, 4, 6, num_layers=2, bidirectional=False, dropout=0.3)
    assert multi.lstm.dropout == 0.3
