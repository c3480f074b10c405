"""Old checkpoints: salesforce's and fastai's state dicts, built by hand with their key names and shapes.

Both store ``layers.{i}.linear.weight`` of shape ``(G * H, window * layer input)`` (``G`` = 3 with an output
gate) and ``.bias`` ``(G * H,)``; fastai's reverse layers sit under ``layers_bwd.{i}``. fastai's bidirectional
QRNN was two independent towers: its layer ``i >= 1`` of each direction read only that direction's ``H``.
"""

from __future__ import annotations

import io

import pytest
import torch
from torch import Tensor, nn

from torchqrnn import QRNN
from torchqrnn.compat import fastai

from ..nn.reference import reference_qrnn

F64 = torch.float64


def linear_entries(prefix: str, rows: int, columns: int) -> dict[str, Tensor]:
    return {f"{prefix}.linear.weight": torch.randn(rows, columns), f"{prefix}.linear.bias": torch.randn(rows)}


def through_a_file(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_salesforce_checkpoint_loads_and_computes_the_same_layers() -> None:
    """salesforce/pytorch-qrnn: ``QRNN(32, 16, num_layers=2, window=2)``, gate rows [Z; F; O], input columns
    [x_t; x_{t-1}]: the loaded stack equals the equations applied to those weights."""
    size, hidden = 6, 5
    checkpoint = through_a_file(
        linear_entries("layers.0", 3 * hidden, 2 * size) | linear_entries("layers.1", 3 * hidden, 2 * hidden)
    )
    qrnn = QRNN(size, hidden, num_layers=2, window=2, save_prev_x=True)
    result = qrnn.load_state_dict(checkpoint)
    assert not result.missing_keys and not result.unexpected_keys
    for key, value in qrnn.state_dict().items():
        assert torch.equal(value, checkpoint[key])
    qrnn = qrnn.to(F64)
    x = torch.randn(7, 3, size, dtype=F64)
    out, h_n = qrnn(x)
    expected_out, expected_h_n = reference_qrnn(qrnn, x, None)
    torch.testing.assert_close(out, expected_out)
    torch.testing.assert_close(h_n, expected_h_n)


def test_fastai_unidirectional_checkpoint_loads() -> None:
    """fastai's default ``QRNN(5, 6, n_layers=3)``: window 2 for layer 0, 1 above."""
    checkpoint = through_a_file(
        linear_entries("layers.0", 18, 2 * 5)
        | linear_entries("layers.1", 18, 6)
        | linear_entries("layers.2", 18, 6)
    )
    compat = fastai.QRNN(5, 6, n_layers=3)
    compat.load_state_dict(checkpoint)
    native = QRNN(5, 6, num_layers=3, window=[2, 1, 1], batch_first=True)
    native.load_state_dict(checkpoint)
    x = torch.randn(2, 7, 5)
    for got, expected in zip(compat(x), native(x), strict=True):
        torch.testing.assert_close(got, expected)


def test_fastai_single_layer_bidirectional_checkpoint_loads() -> None:
    checkpoint = linear_entries("layers.0", 18, 2 * 5) | linear_entries("layers_bwd.0", 18, 2 * 5)
    for model in (fastai.QRNN(5, 6, bidirectional=True), QRNN(5, 6, bidirectional=True, window=2)):
        model.load_state_dict(checkpoint)
        assert all(torch.equal(value, checkpoint[key]) for key, value in model.state_dict().items())
        out, h_n = model(torch.randn(2, 4, 5) if model.batch_first else torch.randn(4, 2, 5))
        assert out.shape[-1] == 12 and h_n.shape[0] == 2


def two_towers_checkpoint(window_above: int = 1) -> dict[str, Tensor]:
    """fastai ``QRNN(5, 6, n_layers=2, bidirectional=True)``: layer 1 of each tower reads H = 6 features."""
    return (
        linear_entries("layers.0", 18, 2 * 5)
        | linear_entries("layers.1", 18, window_above * 6)
        | linear_entries("layers_bwd.0", 18, 2 * 5)
        | linear_entries("layers_bwd.1", 18, window_above * 6)
    )


@pytest.mark.parametrize("strict", [True, False])
def test_fastai_two_towers_checkpoint_is_refused_with_the_reason(strict: bool) -> None:
    compat = fastai.QRNN(5, 6, n_layers=2, bidirectional=True)
    before = {key: value.clone() for key, value in compat.state_dict().items()}
    with pytest.raises(RuntimeError) as raised:
        compat.load_state_dict(two_towers_checkpoint(), strict=strict)
    message = str(raised.value)
    assert "layers.1.linear.weight has 6 input columns (window 1 x 6 features), expected 12" in message
    assert "fastai's bidirectional QRNN, which ran two independent towers" in message
    assert "read both directions of the layer below (2 x 6 features)" in message
    assert "weights of layers >= 1 cannot be reused" in message
    assert "Single-layer bidirectional checkpoints" in message
    # refused before anything was copied
    assert all(torch.equal(value, before[key]) for key, value in compat.state_dict().items())


def test_two_towers_are_recognised_under_a_prefix_and_with_wider_windows() -> None:
    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = QRNN(5, 6, num_layers=2, bidirectional=True, window=2)

    checkpoint = {f"rnn.{key}": value for key, value in two_towers_checkpoint(window_above=2).items()}
    with pytest.raises(
        RuntimeError, match=r"rnn\.layers\.1\.linear\.weight has 12 input columns \(window 2 x 6"
    ):
        Encoder().load_state_dict(checkpoint)


def test_other_shape_mismatches_keep_torchs_message() -> None:
    qrnn = QRNN(5, 6, num_layers=2, bidirectional=True)
    checkpoint = qrnn.state_dict() | linear_entries("layers.1", 18, 7)
    with pytest.raises(RuntimeError, match=r"size mismatch for layers\.1\.linear\.weight") as raised:
        qrnn.load_state_dict(checkpoint)
    assert "towers" not in str(raised.value)
