"""salesforce/pytorch-qrnn 0.2.1's module paths, its ``prevX``, and whole models pickled by its package.

A salesforce pickle is made here without salesforce's code: stand-in classes registered as
``torchqrnn.qrnn.QRNNLayer`` / ``torchqrnn.qrnn.QRNN`` give a module exactly the instance attributes that
salesforce's classes set in their ``__init__`` (``window``, ``input_size``, ``hidden_size`` (None when left
out), ``zoneout``, ``save_prev_x``, ``prevX``, ``output_gate``, ``use_cuda`` and the ``linear`` submodule;
the stack: ``layers``, ``input_size``, ``hidden_size``, ``num_layers``, ``bias``, ``batch_first``,
``dropout``, ``bidirectional``), and ``torch.save`` then writes what salesforce's package wrote.
"""

from __future__ import annotations

import io
import subprocess
import sys
import types

import pytest
import torch
from torch import Tensor, nn

import torchqrnn
from torchqrnn import QRNN, QRNNLayer

from ..nn.reference import reference_layer


def run_python(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize(
    "code",
    [
        # the module first, then the function
        "from torchqrnn.forget_mult import ForgetMult, CPUForgetMult, GPUForgetMult\n"
        "from torchqrnn import forget_mult\n"
        "import torchqrnn\n"
        "assert callable(forget_mult) and torchqrnn.forget_mult is forget_mult\n"
        "print(float(forget_mult(f, x)[-1, 0, 0]), float(ForgetMult()(f, x)[-1, 0, 0]))\n",
        # the function first, then the module
        "from torchqrnn import forget_mult\n"
        "from torchqrnn.forget_mult import ForgetMult\n"
        "print(float(forget_mult(f, x)[-1, 0, 0]), float(ForgetMult()(f, x)[-1, 0, 0]))\n",
        # import ... as: the package attribute, which carries the module's names
        "import torchqrnn.forget_mult as fm\n"
        "print(float(fm(f, x)[-1, 0, 0]), float(fm.ForgetMult()(f, x)[-1, 0, 0]))\n",
        "import torchqrnn.forget_mult, torchqrnn.qrnn\n"
        "assert torchqrnn.qrnn.QRNN is torchqrnn.QRNN and torchqrnn.qrnn.QRNNLayer is torchqrnn.QRNNLayer\n"
        "print(float(torchqrnn.forget_mult(f, x)[-1, 0, 0]),\n"
        "      float(torchqrnn.forget_mult.ForgetMult()(f, x)[-1, 0, 0]))\n",
    ],
)
def test_both_forget_mults_work_in_any_import_order(code: str) -> None:
    setup = "import torch\nf, x = torch.full((3, 1, 2), 0.5), torch.ones(3, 1, 2)\n"
    function, module = run_python(setup + code).split()
    assert float(function) == float(module) == 0.875  # 1 - 0.5 ** 3


def test_the_forget_mult_classes(monkeypatch: pytest.MonkeyPatch) -> None:
    from torchqrnn.forget_mult import CPUForgetMult, ForgetMult, GPUForgetMult

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # (the Triton tests' interpreter)

    f, x, h0 = torch.rand(5, 2, 3), torch.randn(5, 2, 3), torch.randn(2, 3)
    expected = torchqrnn.forget_mult(f, x, h0, backend="reference")
    torch.testing.assert_close(ForgetMult()(f, x, h0, use_cuda=False), expected)
    torch.testing.assert_close(CPUForgetMult()(f, x, h0), expected)
    assert CPUForgetMult().backend == "reference"
    with pytest.raises(ValueError, match="backend='triton' needs CUDA tensors, or TRITON_INTERPRET=1"):
        GPUForgetMult()(f, x, h0)
    with pytest.raises(ValueError, match="backend='triton' needs CUDA tensors"):
        GPUForgetMult.apply(f, x, h0)


def test_prev_x_reads_assigns_and_resets() -> None:
    layer = QRNNLayer(3, 4, window=2, save_prev_x=True)
    assert layer.prevX is None
    x = torch.randn(5, 2, 3)
    layer(x)
    torch.testing.assert_close(layer.prevX, x[-1:])
    assert layer.prevX is layer.prev_x
    saved = torch.randn(1, 2, 3, requires_grad=True)
    layer.prevX = saved
    assert not layer.prevX.requires_grad  # stored detached, as the layer stores its own
    torch.testing.assert_close(layer.prevX, saved.detach())
    layer.prevX = None
    assert layer.prev_x is None
    with pytest.raises(TypeError, match="expected prevX to be a Tensor or None, got list"):
        layer.prevX = [1.0]


class SalesforceQRNNLayer(nn.Module):
    """Exactly the instance attributes of salesforce 0.2.1's ``QRNNLayer.__init__``."""

    __module__, __qualname__ = "torchqrnn.qrnn", "QRNNLayer"  # the name salesforce's pickles hold

    def __init__(self, input_size: int, hidden_size: int | None, window: int, save_prev_x: bool) -> None:
        super().__init__()
        self.window = window
        self.input_size = input_size
        self.hidden_size = hidden_size  # None when left out: it meant input_size
        self.zoneout = 0
        self.save_prev_x = save_prev_x
        self.prevX: Tensor | None = None
        self.output_gate = True
        self.use_cuda = True
        self.linear = nn.Linear(window * input_size, 3 * (hidden_size or input_size))


class SalesforceQRNN(nn.Module):
    """Exactly the instance attributes of salesforce 0.2.1's ``QRNN.__init__``."""

    __module__, __qualname__ = "torchqrnn.qrnn", "QRNN"

    def __init__(self, layers: list[SalesforceQRNNLayer]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.input_size = layers[0].input_size
        self.hidden_size = layers[0].hidden_size
        self.num_layers = len(layers)
        self.bias = True
        self.batch_first = False
        self.dropout = 0
        self.bidirectional = False


def salesforce_pickle(obj: object, monkeypatch: pytest.MonkeyPatch) -> bytes:
    """``torch.save(obj)`` as salesforce's package wrote it: its classes under ``torchqrnn.qrnn``."""
    stand_in = types.ModuleType("torchqrnn.qrnn")
    stand_in.QRNNLayer, stand_in.QRNN = SalesforceQRNNLayer, SalesforceQRNN  # type: ignore[attr-defined]
    buffer = io.BytesIO()
    with monkeypatch.context() as patch:  # torchqrnn.qrnn is ours again for loading
        patch.setitem(sys.modules, "torchqrnn.qrnn", stand_in)
        torch.save(obj, buffer)
    return buffer.getvalue()


def test_a_salesforce_whole_model_pickle_loads_and_continues_exactly(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    layers = [SalesforceQRNNLayer(3, 5, window=2, save_prev_x=True), SalesforceQRNNLayer(5, None, 1, True)]
    model = SalesforceQRNN(layers)
    saved_prev = torch.randn(1, 2, 3)
    layers[0].prevX = saved_prev  # the last input step of the chunk the model ran before it was saved
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    data = salesforce_pickle([model, criterion, optimizer], monkeypatch)  # awd-lstm-lm's checkpoint form

    loaded, _, _ = torch.load(io.BytesIO(data), weights_only=False)
    assert type(loaded) is QRNN and all(type(layer) is QRNNLayer for layer in loaded.layers)
    first, second = loaded.layers
    assert second.hidden_size == 5 and not hasattr(first, "use_cuda") and "prevX" not in first.__dict__
    torch.testing.assert_close(first.prevX, saved_prev)

    x = torch.randn(4, 2, 3)
    with torch.no_grad():
        output, h_n = loaded(x)
        hidden, _, _ = reference_layer(first, x, context=saved_prev)
        expected, expected_h, _ = reference_layer(second, hidden)
    torch.testing.assert_close(output, expected)
    torch.testing.assert_close(h_n[1], expected_h)
    torch.testing.assert_close(first.prevX, x[-1:])  # and it saved the next context
    loaded.reset()
    assert first.prevX is None
    print(repr(loaded))  # the repr reads every upgraded option
