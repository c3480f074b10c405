"""torchqrnn.quantization: int8 models from quantize_int8 (PT2E, X86 Inductor quantizer, torch.compile).

Three things are checked on every model: the compiled int8 model computes what its quantized graph says
(the converted graph run eagerly: quantize, dequantize and float32 products, an independent path through
PyTorch's reference ops), within float32 rounding; that result is within int8's tolerance of the float32
model; and the products really ran as oneDNN int8 matmuls (the profiler's op names), not as float32 GEMMs.
Compiles are few (one model per test, one recompile for new sizes): each takes seconds here.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from torchqrnn import QRNN, QRNNLayer
from torchqrnn.quantization import Int8Inference, quantize_int8

INT8_TOLERANCE = 0.03  # relative norm error against float32, the bound the benchmark reports against


def relative_error(actual: Tensor, expected: Tensor) -> float:
    return float((actual - expected).norm() / expected.norm())


def ops_run(model: Int8Inference, *args: Tensor | None) -> dict[str, int]:
    """Count of each operator the profiler saw while ``model(*args)`` ran."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        model(*args)
    return {event.key: event.count for event in profile.key_averages()}


def check_int8(
    model: nn.Module, quantized: Int8Inference, args: tuple[Tensor | None, ...], linears: int, pools: int
) -> None:
    with torch.no_grad():
        expected = model(*args)
        simulated = quantized.quantized(*args)  # the converted graph, eager: dequantized float32 products
    actual = quantized(*args)
    for got, quant, want in zip(actual, simulated, expected, strict=True):
        assert got.shape == want.shape
        assert torch.allclose(got, quant, rtol=1e-4, atol=1e-5), (got - quant).abs().max()
        assert relative_error(got, want) < INT8_TOLERANCE
        assert relative_error(got, want) > 1e-5  # quantized, not the float32 model
    ops = ops_run(quantized, *args)
    assert ops.get("onednn::qlinear_pointwise") == linears, ops
    assert not {"aten::mm", "aten::addmm", "aten::linear", "aten::matmul", "aten::bmm"} & set(ops), ops
    assert ops.get("torchqrnn::qrnn_pool") == pools


def test_dynamic_int8_qrnn_on_new_sizes() -> None:
    """Two layers (windows 2 and 1) with h0: the example's sizes, then other T and B (one recompile)."""
    qrnn = QRNN(40, 48, num_layers=2, window=[2, 1]).eval()
    example = (torch.randn(8, 2, 40), torch.randn(2, 2, 48))
    quantized = quantize_int8(qrnn, example)
    for steps, batch in ((8, 2), (17, 3), (1, 5)):
        args = (torch.randn(steps, batch, 40), torch.randn(2, batch, 48))
        check_int8(qrnn, quantized, args, linears=2, pools=2)


def test_static_int8_layer_batch_first_reverse() -> None:
    """Calibrated (static) activations, a reverse-direction, batch-first layer with ifo-pooling."""
    layer = QRNNLayer(24, 40, window=2, batch_first=True, backward=True, input_gate=True).eval()
    batches = [torch.randn(4, 9, 24) for _ in range(4)]
    quantized = quantize_int8(layer, batches[0], calibration=batches)
    for batch, steps in ((4, 9), (3, 30)):
        check_int8(layer, quantized, (torch.randn(batch, steps, 24).clamp(-2.5, 2.5),), linears=1, pools=1)


class _Tagger(nn.Module):
    """A model built on a QRNN (not one of torchqrnn's modules): the decoder is quantized too."""

    def __init__(self) -> None:
        super().__init__()
        self.qrnn = QRNN(32, 32, bidirectional=True)
        self.decoder = nn.Linear(64, 7)

    def forward(self, x: Tensor) -> tuple[Tensor]:
        return (self.decoder(self.qrnn(x)[0]),)


def test_any_model_built_on_qrnn() -> None:
    model = _Tagger().eval()
    batch = torch.export.Dim("batch", min=1)
    quantized = quantize_int8(model, torch.randn(6, 4, 32), dynamic_shapes=({1: batch},))
    check_int8(model, quantized, (torch.randn(6, 3, 32),), linears=3, pools=2)


def test_bad_arguments_are_named() -> None:
    qrnn = QRNN(8, 8)
    x = torch.randn(4, 2, 8)
    with pytest.raises(ValueError, match=r"evaluation mode.*model\.eval\(\)"):
        quantize_int8(qrnn, x)
    qrnn.eval()
    with pytest.raises(TypeError, match=r"expected model to be an nn\.Module, got function"):
        quantize_int8(lambda x: x, x)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="expected example_args to be a Tensor or a sequence"):
        quantize_int8(qrnn, {"input": x})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least one calibration batch, got none"):
        quantize_int8(qrnn, x, calibration=[])
    with pytest.raises(ValueError, match="dynamic_shapes is for other models"):
        quantize_int8(qrnn, x, dynamic_shapes=({0: None},))
    with pytest.raises(ValueError, match="at least 2 steps and a batch of at least 2"):
        quantize_int8(qrnn, torch.randn(4, 1, 8))
