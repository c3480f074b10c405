"""Every module survives pickle, copy.deepcopy and torch.save / torch.load, saved window context included."""

from __future__ import annotations

import copy
import io
import pickle
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from torchqrnn import QRNN, ForgetMult, QRNNLayer, StreamingQRNN
from torchqrnn.compat import fastai


def through_torch_save(module: nn.Module) -> nn.Module:
    buffer = io.BytesIO()
    torch.save(module, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


COPIES: dict[str, Callable[[nn.Module], nn.Module]] = {
    "pickle": lambda module: pickle.loads(pickle.dumps(module)),
    "deepcopy": copy.deepcopy,
    "torch.save": through_torch_save,
}


def forget_mult_case() -> tuple[nn.Module, tuple[Tensor, ...]]:
    f, x, h0 = torch.rand(5, 2, 3), torch.randn(5, 2, 3), torch.randn(2, 3)
    return ForgetMult(reverse=True), (f, x, h0)


def streaming_case() -> tuple[nn.Module, tuple[Tensor, ...]]:
    streamer = StreamingQRNN(QRNN(3, 4, num_layers=2, window=[3, 1]).eval())
    return streamer, (torch.randn(5, 2, 3), *streamer.initial_state(2))


CASES: dict[str, Callable[[], tuple[nn.Module, tuple[Tensor, ...]]]] = {
    "ForgetMult": forget_mult_case,
    "QRNNLayer": lambda: (
        QRNNLayer(3, 4, window=3, save_prev_x=True, zoneout=0.2, input_gate=True).eval(),
        (torch.randn(5, 2, 3),),
    ),
    "QRNN": lambda: (
        QRNN(3, 4, num_layers=2, window=[2, 3], save_prev_x=True, dropout=0.3).eval(),
        (torch.randn(5, 2, 3), torch.randn(2, 2, 4)),
    ),
    "QRNN-bidirectional": lambda: (
        QRNN(3, 4, num_layers=2, window=2, bidirectional=True, batch_first=True).eval(),
        (torch.randn(2, 5, 3),),
    ),
    "fastai.QRNNLayer": lambda: (fastai.QRNNLayer(3, 4, window=2, save_prev_x=True), (torch.randn(2, 5, 3),)),
    "fastai.QRNN": lambda: (fastai.QRNN(3, 4, n_layers=2, save_prev_x=True), (torch.randn(2, 5, 3),)),
    "StreamingQRNN": streaming_case,
}


def saved_contexts(module: nn.Module) -> list[Tensor]:
    return [m.prev_x for m in module.modules() if isinstance(m, QRNNLayer) and m.prev_x is not None]


def assert_equal(got: Any, expected: Any) -> None:
    if isinstance(expected, Tensor):
        assert torch.equal(got, expected)
    else:
        assert len(got) == len(expected)
        for g, e in zip(got, expected, strict=True):
            assert_equal(g, e)


@pytest.mark.parametrize("how", COPIES)
@pytest.mark.parametrize("case", CASES)
def test_copies_compute_identically_with_the_saved_context(case: str, how: str) -> None:
    module, inputs = CASES[case]()
    with torch.no_grad():
        module(*inputs)  # a first call: save_prev_x modules now hold a window context
        contexts = saved_contexts(module)
        if case in ("QRNNLayer", "QRNN", "fastai.QRNNLayer", "fastai.QRNN"):
            assert contexts, "the case should exercise a saved context"
        clone = COPIES[how](module)
        assert clone is not module and type(clone) is type(module) and clone.training == module.training
        assert_equal(saved_contexts(clone), contexts)
        assert_equal(clone(*inputs), module(*inputs))  # both continue from the same saved context
        assert_equal(saved_contexts(clone), saved_contexts(module))
    assert repr(clone) == repr(module)


@pytest.mark.parametrize("case", CASES)
def test_state_dict_round_trips_exactly(case: str) -> None:
    module, inputs = CASES[case]()
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    fresh, _ = CASES[case]()  # other random weights
    fresh.load_state_dict(loaded)
    assert list(fresh.state_dict()) == list(module.state_dict())
    for key, value in module.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    with torch.no_grad():
        assert_equal(fresh.train(module.training)(*inputs), module(*inputs))
