"""``layer.linear`` is a module and the layer calls it: wrappers, hooks, pruning, parametrizations, adapters
and quantized modules all compute what the equations say with their effective weight.

The wrappers here are written for these tests in the manner of the code that uses QRNNs in the wild: a weight
drop that moves ``weight`` to ``weight_raw`` on the wrapped module and sets a plain tensor before calling its
``forward`` (as awd-lstm-lm's language model does), one that keeps ``weight_raw`` on the wrapper and sets the
inner module's ``weight`` on each call (as fastai's AWD-QRNN), and a low-rank adapter that exposes its base
layer's ``weight`` and ``bias`` while adding a term of its own (as LoRA libraries do).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn
from torch.nn.utils import parametrizations, prune

from torchqrnn import QRNN, QRNNLayer, StreamingQRNN
from torchqrnn.compat import fastai

from .reference import reference_layer

F64 = torch.float64


class RawWeightOnModule(nn.Module):
    """Weight drop with the raw weight moved onto the wrapped module (``module.weight_raw``); each call sets
    ``module.weight`` to a plain tensor, the dropped raw weight, then calls ``module.forward``."""

    def __init__(self, module: nn.Linear, p: float) -> None:
        super().__init__()
        self.module, self.p = module, p
        weight = module.weight
        del module._parameters["weight"]
        module.register_parameter("weight_raw", nn.Parameter(weight.detach().clone()))
        self.mask: Tensor | None = None

    def forward(self, input: Tensor) -> Tensor:
        raw = self.module.weight_raw
        keep = torch.rand(raw.shape, dtype=raw.dtype) >= self.p
        self.mask = keep.to(raw.dtype) / (1 - self.p) if self.training else torch.ones_like(raw)
        self.module.weight = raw * self.mask
        return self.module.forward(input)

    def effective(self) -> tuple[Tensor, Tensor | None]:
        assert self.mask is not None
        return self.module.weight_raw * self.mask, self.module.bias


class RawWeightOnWrapper(nn.Module):
    """Weight drop with the raw weight on the wrapper (``weight_raw``); each call sets the wrapped module's
    ``weight`` attribute and calls the module."""

    def __init__(self, module: nn.Linear, p: float) -> None:
        super().__init__()
        self.module, self.p = module, p
        weight = module.weight
        delattr(module, "weight")
        self.weight_raw = nn.Parameter(weight.detach().clone())
        module.weight = weight.detach().clone()
        self.mask: Tensor | None = None

    def forward(self, input: Tensor) -> Tensor:
        keep = torch.rand(self.weight_raw.shape, dtype=self.weight_raw.dtype) >= self.p
        self.mask = keep.to(self.weight_raw.dtype) / (1 - self.p) if self.training else None
        self.module.weight = self.weight_raw * self.mask if self.mask is not None else self.weight_raw.clone()
        return self.module(input)

    def effective(self) -> tuple[Tensor, Tensor | None]:
        weight = self.weight_raw if self.mask is None else self.weight_raw * self.mask
        return weight, self.module.bias


class LowRankAdapter(nn.Module):
    """``base(x) + scale * up(down(x))``, exposing the base layer's ``weight`` and ``bias``: a layer that
    multiplied by ``.weight`` itself would miss the adapter's term."""

    def __init__(self, base: nn.Linear, rank: int, scale: float) -> None:
        super().__init__()
        self.base, self.scale = base, scale
        dtype = base.weight.dtype
        self.down = nn.Parameter(torch.randn(rank, base.in_features, dtype=dtype) * 0.3)
        self.up = nn.Parameter(torch.randn(base.out_features, rank, dtype=dtype) * 0.3)

    @property
    def weight(self) -> Tensor:
        return self.base.weight

    @property
    def bias(self) -> Tensor | None:
        return self.base.bias

    def forward(self, input: Tensor) -> Tensor:
        return self.base(input) + self.scale * (input @ self.down.T) @ self.up.T

    def effective(self) -> tuple[Tensor, Tensor | None]:
        return self.base.weight + self.scale * self.up @ self.down, self.base.bias


def pruned(linear: nn.Linear) -> Callable[[], tuple[Tensor, Tensor | None]]:
    prune.l1_unstructured(linear, "weight", amount=0.5)
    return lambda: (linear.weight_orig * linear.weight_mask, linear.bias)


def hooked(linear: nn.Linear, calls: list[str]) -> Callable[[], tuple[Tensor, Tensor | None]]:
    """A pre-hook doubling the input and a hook halving the output: ``W x + b / 2`` in all."""

    def pre_hook(module: nn.Module, args: tuple[Tensor]) -> tuple[Tensor]:
        calls.append("pre")
        return (args[0] * 2,)

    def hook(module: nn.Module, args: tuple[Tensor], output: Tensor) -> Tensor:
        calls.append("post")
        return output * 0.5

    linear.register_forward_pre_hook(pre_hook)
    linear.register_forward_hook(hook)
    return lambda: (linear.weight, None if linear.bias is None else linear.bias * 0.5)


PATTERNS = [
    "awd_weight_drop",
    "fastai_weight_dropout",
    "prune",
    "hooks",
    "weight_norm",
    "spectral_norm",
    "lora",
]


def install(layer: QRNNLayer, pattern: str, calls: list[str]) -> Callable[[], tuple[Tensor, Tensor | None]]:
    """Put ``pattern`` on ``layer.linear``; returns what recomputes the effective ``(weight, bias)`` of the
    last call, differentiably from the pattern's own parameters."""
    linear = layer.linear
    if pattern == "awd_weight_drop":
        layer.linear = wrapper = RawWeightOnModule(linear, 0.3)
        return wrapper.effective
    if pattern == "fastai_weight_dropout":
        layer.linear = wrapper2 = RawWeightOnWrapper(linear, 0.3)
        return wrapper2.effective
    if pattern == "prune":
        return pruned(linear)
    if pattern == "hooks":
        return hooked(linear, calls)
    if pattern in ("weight_norm", "spectral_norm"):
        getattr(parametrizations, pattern)(linear)
        return lambda: (linear.weight, linear.bias)
    layer.linear = adapter = LowRankAdapter(linear, rank=2, scale=0.5)
    return adapter.effective


def leaves(module: nn.Module) -> list[tuple[str, Tensor]]:
    return [(name, p) for name, p in module.named_parameters() if p.requires_grad]


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("steps", [1, 5])
@pytest.mark.parametrize(("window", "backward"), [(1, False), (2, False), (2, True)])
@pytest.mark.parametrize("training", [True, False])
def test_each_pattern_matches_the_equations(pattern, steps, window, backward, training) -> None:
    torch.manual_seed(0)
    layer = QRNNLayer(3, 4, window=window, backward=backward, dtype=F64)
    calls: list[str] = []
    effective = install(layer, pattern, calls)
    layer.train(training)
    if pattern == "spectral_norm" and training:
        layer.eval()  # its power iteration moves on at every read of the weight in training
    x = torch.randn(steps, 2, 3, dtype=F64, requires_grad=True)
    h0 = torch.randn(2, 4, dtype=F64, requires_grad=True)
    context = torch.randn(window - 1, 2, 3, dtype=F64)

    output, h_n, _ = layer.forward_stream(x, h0, context)
    loss = output.pow(2).sum() + h_n.sum()
    params = leaves(layer)
    got = torch.autograd.grad(loss, [x, h0, *(p for _, p in params)])

    weight, bias = effective()
    expected_out, expected_h, _ = reference_layer(layer, x, h0, context, weight=weight, bias=bias)
    expected_loss = expected_out.pow(2).sum() + expected_h.sum()
    expected = torch.autograd.grad(expected_loss, [x, h0, *(p for _, p in params)])

    torch.testing.assert_close(output, expected_out)
    torch.testing.assert_close(h_n[0], expected_h)
    for name, g, e in zip(["x", "h0", *(n for n, _ in params)], got, expected, strict=True):
        torch.testing.assert_close(g, e, msg=lambda m, name=name: f"gradient of {name}: {m}")
    if pattern == "hooks":
        assert calls == ["pre", "post"]


@pytest.mark.parametrize("pattern", PATTERNS)
def test_each_pattern_streams_one_step_at_a_time_without_grad(pattern) -> None:
    """Single steps under no_grad (the streaming fast path of a plain projection) call the module too."""
    torch.manual_seed(1)
    layer = QRNNLayer(3, 4, window=2, save_prev_x=True, dtype=F64)
    calls: list[str] = []
    effective = install(layer, pattern, calls)
    layer.eval()
    x = torch.randn(4, 2, 3, dtype=F64)
    with torch.no_grad():
        whole, h_whole = layer(x)
        layer.reset()
        steps, h = [], None
        for step in x.split(1):
            out, h = layer(step, h)
            steps.append(out)
        weight, bias = effective()
        expected, expected_h, _ = reference_layer(layer, x, weight=weight, bias=bias)
    torch.testing.assert_close(torch.cat(steps), expected)
    torch.testing.assert_close(whole, expected)
    torch.testing.assert_close(h_whole[0], expected_h)
    if pattern == "hooks":
        assert calls == ["pre", "post"] * 5


def test_pruning_trains_for_several_steps() -> None:
    """The pruned weight is recomputed by its pre-hook on every call (no stale graph reused)."""
    torch.manual_seed(2)
    qrnn = QRNN(3, 4, num_layers=2, window=[2, 1])
    prune.l1_unstructured(qrnn.layers[0].linear, "weight", amount=0.5)
    optimizer = torch.optim.SGD(qrnn.parameters(), lr=0.1)
    for _ in range(3):
        optimizer.zero_grad()
        output, _ = qrnn(torch.randn(6, 2, 3))
        output.pow(2).sum().backward()
        optimizer.step()
    linear = qrnn.layers[0].linear
    pruned_away = linear.weight_mask == 0
    assert pruned_away.sum() == linear.weight_mask.numel() // 2
    assert linear.weight[pruned_away].eq(0).all()
    assert linear.weight_orig.grad is not None and linear.weight_orig.grad[pruned_away].eq(0).all()


def test_the_fast_path_equals_calling_the_module() -> None:
    """A plain nn.Linear takes the layer's own products; with a no-op hook the layer calls the module:
    same outputs and gradients, in training and for single steps."""
    torch.manual_seed(3)
    plain = QRNNLayer(5, 6, window=2, dtype=F64)
    called = QRNNLayer(5, 6, window=2, dtype=F64)
    called.load_state_dict(plain.state_dict())
    called.linear.register_forward_hook(lambda module, args, output: None)
    assert plain._plain_linear() == (plain.linear.weight, plain.linear.bias)
    assert called._plain_linear() is None
    for steps in (1, 7):
        x = torch.randn(steps, 3, 5, dtype=F64, requires_grad=True)
        results = []
        for layer in (plain, called):
            output, h_n = layer(x)
            grads = torch.autograd.grad(output.sum() + h_n.pow(2).sum(), [x, *layer.parameters()])
            with torch.no_grad():
                step = layer(x[:1].detach())
            results.append((output, h_n, *grads, *step))
        for a, b in zip(*results, strict=True):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_a_fastai_awd_qrnn_with_weight_dropout_trains(bidirectional: bool) -> None:
    """fastai's AWD-QRNN wraps each ``rnn.layers[0].linear`` of its one-layer QRNNs in a weight dropout."""
    torch.manual_seed(4)
    rnns = [
        fastai.QRNN(6 if depth == 0 else 8, 8, 1, save_prev_x=not bidirectional,
                    window=2 if depth == 0 else 1, bidirectional=bidirectional)
        for depth in range(2)
    ]  # fmt: skip
    for rnn in rnns:
        rnn.layers[0].linear = RawWeightOnWrapper(rnn.layers[0].linear, 0.2)
    x = torch.randn(3, 5, 6)  # (B, T, I): fastai is batch-first
    directions = 2 if bidirectional else 1
    out = x
    for rnn in rnns:
        out, h = rnn(out)
        assert h.shape == (directions, 3, 8)
        out = out[..., :8] + (out[..., 8:] if bidirectional else 0)
    out.pow(2).sum().backward()
    wrapper = rnns[0].layers[0].linear
    assert isinstance(wrapper, RawWeightOnWrapper) and wrapper.weight_raw.grad is not None
    assert wrapper.weight_raw.grad.abs().sum() > 0


def test_a_projection_of_the_wrong_size_is_named() -> None:
    layer = QRNNLayer(3, 4, window=2)
    x = torch.randn(5, 2, 3)
    layer.linear = nn.Linear(3, 12)
    with pytest.raises(RuntimeError, match=r"expected linear.in_features = window \* input_size = 6, got 3"):
        layer(x)
    layer.linear = nn.Linear(6, 10)
    with pytest.raises(RuntimeError, match=r"expected linear.out_features = 12 \(3 gates x hidden_size 4\)"):
        layer(x)
    layer.linear = LowRankAdapter(nn.Linear(6, 8), rank=1, scale=1.0)  # a wrapper: its output is checked
    with pytest.raises(RuntimeError, match=r"expected linear.out_features = 12 .* from LowRankAdapter"):
        layer(x)
    layer.linear = nn.Sequential(nn.Linear(6, 12), nn.Identity())
    with torch.no_grad():
        assert layer(x)[0].shape == (5, 2, 4)  # any module of the right shapes works


def test_bad_input_still_gets_clear_errors_with_a_wrapped_projection() -> None:
    layer = QRNNLayer(3, 4, window=2)
    layer.linear = RawWeightOnModule(layer.linear, 0.1)
    with pytest.raises(RuntimeError, match=r"expected input of dtype torch.float32 \(the parameters'\)"):
        layer(torch.randn(5, 2, 3, dtype=F64))
    with pytest.raises(
        RuntimeError, match=r"input.size\(-1\) must be equal to input_size. Expected 3, got 5"
    ):
        layer(torch.randn(5, 2, 5))


def qrnn_case(**options) -> tuple[QRNN, Tensor]:
    torch.manual_seed(5)
    qrnn = QRNN(32, 48, num_layers=2, window=[2, 1], **options).eval()
    return qrnn, torch.randn(20, 4, 32)


def relative_error(a: Tensor, b: Tensor) -> float:
    return float((a - b).norm() / b.norm())


# torch.ao's eager quantization is deprecated in favour of torchao, and still what quantize_dynamic users run
QUANTIZATION_WARNINGS = pytest.mark.filterwarnings(
    "ignore:torch.ao.quantization is deprecated:DeprecationWarning",
    "ignore:torch.quantize_per_tensor:UserWarning",
)


@QUANTIZATION_WARNINGS
@pytest.mark.parametrize("bidirectional", [False, True])
def test_quantize_dynamic_runs_the_quantized_projection(bidirectional: bool) -> None:
    qrnn, x = qrnn_case(bidirectional=bidirectional)
    quantized = torch.ao.quantization.quantize_dynamic(qrnn, {nn.Linear}, dtype=torch.qint8)
    assert type(quantized.layers[0].linear) is torch.ao.nn.quantized.dynamic.Linear
    with torch.no_grad():
        expected, expected_h = qrnn(x)
        output, h_n = quantized(x)
    assert relative_error(output, expected) < 0.03
    assert relative_error(h_n, expected_h) < 0.03


@QUANTIZATION_WARNINGS
def test_a_quantized_layer_carries_its_state_exactly() -> None:
    """Step by step (the streaming path) with saved inputs equals the equations run through the quantized
    projection one step at a time (per-step activation scales, as the layer's steps have)."""
    torch.manual_seed(6)
    layer = QRNNLayer(16, 24, window=3, save_prev_x=True).eval()
    quantized = torch.ao.quantization.quantize_dynamic(layer, {nn.Linear}, dtype=torch.qint8)
    x, h0 = torch.randn(6, 2, 16), torch.randn(2, 24)
    with torch.no_grad():
        outputs, h = [], h0
        for step in x.split(1):
            out, h = quantized(step, h)
            outputs.append(out)
        saved = quantized.prevX
        expected, expected_h = [], h0
        context = torch.zeros(2, 2, 16)
        for step in x.split(1):  # the layer's window of each step: [x_t; x_{t-1}; x_{t-2}]
            out, expected_h, context = reference_layer(quantized, step, expected_h, context,
                                                       project=quantized.linear)  # fmt: skip
            expected.append(out)
    torch.testing.assert_close(torch.cat(outputs), torch.cat(expected))
    torch.testing.assert_close(h[0], expected_h)
    torch.testing.assert_close(saved, x[-2:])


def test_hooks_on_the_layers_of_a_stack_run() -> None:
    """A QRNN calls its layers as modules: hooks on them see each layer's input and output."""
    torch.manual_seed(12)
    qrnn = QRNN(3, 4, num_layers=2, window=[2, 1], bidirectional=True)
    seen: list[tuple[str, tuple[int, ...]]] = []
    for name, layer in (("l0", qrnn.layers[0]), ("l1_bwd", qrnn.layers_bwd[1])):
        layer.register_forward_hook(
            lambda module, args, output, name=name: seen.append((name, tuple(output[0].shape)))
        )
    scaled = qrnn.layers[1]
    scaled.register_forward_hook(lambda module, args, output: (output[0] * 2, *output[1:]))
    x = torch.randn(5, 2, 3)
    output, _ = qrnn(x)
    assert seen == [("l0", (5, 2, 4)), ("l1_bwd", (5, 2, 4))]
    with torch.no_grad():  # the layers called one by one, the hooks (the doubling too) running again
        below = torch.cat([qrnn.layers[0](x)[0], qrnn.layers_bwd[0](x)[0]], 2)
        expected = torch.cat([qrnn.layers[1](below)[0], qrnn.layers_bwd[1](below)[0]], 2)
        assert seen[2:] == [("l0", (5, 2, 4)), ("l1_bwd", (5, 2, 4))]
        qrnn.eval()(x[:1])  # a single step through the stack runs them too
        assert len(seen) == 6
    torch.testing.assert_close(output, expected)
    torch.testing.assert_close(output[..., :4], 2 * reference_layer(scaled, below)[0])


@QUANTIZATION_WARNINGS
def test_a_quantized_qrnn_streams() -> None:
    """StreamingQRNN over a quantized QRNN: its zeros state, and steps equal the quantized stack's steps."""
    qrnn, x = qrnn_case()
    quantized = torch.ao.quantization.quantize_dynamic(qrnn, {nn.Linear}, dtype=torch.qint8)
    streamer = StreamingQRNN(quantized)
    state = streamer.initial_state(4)
    assert state[0].dtype == torch.float32 and state[0].shape == (2, 4, 48)
    with torch.no_grad():
        steps, h, contexts = [], None, None
        for step in x.split(1):
            out, *state = streamer(step, *state)
            steps.append(out)
            expected, h, contexts = quantized.forward_stream(step, h, contexts)
            torch.testing.assert_close(out, expected)
        assert relative_error(torch.cat(steps), qrnn(x)[0]) < 0.03
