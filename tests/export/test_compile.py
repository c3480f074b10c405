"""torch.compile of QRNN: one graph, no breaks, training and inference equal to eager.

``aot_eager`` (no C++ compile) covers the cases; one test runs the default inductor backend, whose CPU
compile takes about 20 s on a 2-core machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

from torchqrnn import QRNN, ForgetMult, StreamingQRNN


@pytest.fixture(autouse=True)
def poison_empty() -> None:
    """Overrides the suite's NaN-poisoned ``torch.empty`` here: dynamo cannot trace that test-only wrapper
    around the builtin, so it would add graph breaks of the harness's own (the kernels are tested with it).

    Dynamo also maps torch's functions by identity once per process: if an earlier test compiled while the
    wrapper stood in for ``torch.empty``, the real one is missing from that map. Rebuild it.
    """
    torch._dynamo.trace_rules.clear_lru_cache()


@pytest.fixture(autouse=True)
def fresh_dynamo() -> Iterator[None]:
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def loss_and_grads(model: Any, x: torch.Tensor, h0: torch.Tensor | None, seed: int) -> list[torch.Tensor]:
    """Output, h_n and the gradients of x, h0 and every weight, zoneout and dropout drawn from ``seed``."""
    torch.manual_seed(seed)
    output, h_n = model(x, h0)
    inputs = [t for t in (x, h0) if t is not None] + list(model.parameters())
    weight = torch.linspace(-1, 1, output.numel()).reshape(output.shape)
    grads = torch.autograd.grad((output * weight).sum() + h_n.square().sum(), inputs)
    return [output, h_n, *grads]


def test_no_graph_breaks_in_training_or_inference() -> None:
    qrnn = QRNN(4, 5, num_layers=2, window=2, bidirectional=True, zoneout=0.2, dropout=0.1)
    x, h0 = torch.randn(6, 3, 4), torch.randn(4, 3, 5)
    for training in (True, False):
        explanation = torch._dynamo.explain(qrnn.train(training))(x, h0)
        assert explanation.graph_break_count == 0, explanation.break_reasons
        assert explanation.graph_count == 1


@pytest.mark.parametrize(
    "options",
    [
        dict(bidirectional=True, window=2),
        dict(batch_first=True, window=[3, 1], input_gate=True, output_gate=False),
    ],
    ids=["bidirectional", "batch_first-ifo"],
)
def test_training_fullgraph_equals_eager(options: dict[str, Any]) -> None:
    """Zoneout masks and dropout are random: the same seed gives the same masks in both."""
    qrnn = QRNN(4, 5, num_layers=2, zoneout=0.3, dropout=0.2, **options)
    directions = 2 if qrnn.bidirectional else 1
    x = torch.randn(7, 3, 4, requires_grad=True)
    h0 = torch.randn(2 * directions, 7 if qrnn.batch_first else 3, 5, requires_grad=True)
    compiled = torch.compile(qrnn, fullgraph=True, backend="aot_eager", dynamic=False)
    got = loss_and_grads(compiled, x, h0, seed=1)
    expected = loss_and_grads(qrnn, x, h0, seed=1)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e)


def test_inference_with_dynamic_shapes_compiles_once() -> None:
    qrnn = QRNN(4, 5, num_layers=2, window=2, bidirectional=True, zoneout=0.3).eval()
    compiled = torch.compile(qrnn, fullgraph=True, backend="aot_eager", dynamic=True)
    # sizes unlike the static ones (4, 5): dynamo gives equal sizes one symbol, then specialises both
    with torch.no_grad():
        for index, (steps, batch) in enumerate([(7, 2), (9, 3), (17, 6)]):
            x, h0 = torch.randn(steps, batch, 4), torch.randn(4, batch, 5)
            with torch._dynamo.config.patch(error_on_recompile=index > 0):
                got = compiled(x, h0)
            for g, e in zip(got, qrnn(x, h0), strict=True):
                torch.testing.assert_close(g, e)


def test_forget_mult_with_dynamic_shapes_compiles_once() -> None:
    module = ForgetMult(batch_first=True, reverse=True)
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager", dynamic=True)
    for index, (batch, steps) in enumerate([(2, 7), (3, 9), (6, 17)]):
        f, x, h0 = torch.rand(batch, steps, 5), torch.randn(batch, steps, 5), torch.randn(batch, 5)
        with torch._dynamo.config.patch(error_on_recompile=index > 0):
            torch.testing.assert_close(compiled(f, x, h0), module(f, x, h0))


def test_streaming_module_compiles_and_equals_the_whole_sequence() -> None:
    qrnn = QRNN(3, 4, num_layers=2, window=[3, 2]).eval()
    streamer = torch.compile(StreamingQRNN(qrnn), fullgraph=True, backend="aot_eager", dynamic=False)
    x = torch.randn(12, 2, 3)
    with torch.no_grad():
        whole, h_whole = qrnn(x)
        state = StreamingQRNN(qrnn).initial_state(2)
        outputs = []
        for chunk in x.split(4):
            output, *state = streamer(chunk, *state)
            outputs.append(output)
    torch.testing.assert_close(torch.cat(outputs), whole)
    torch.testing.assert_close(state[0], h_whole)


def test_packed_sequence_compiles_around_the_packing_utilities() -> None:
    """Dynamo skips torch's pack/pad utilities (a graph break each), so a PackedSequence cannot compile with
    fullgraph=True; without it the result still equals eager. Padded input is the fullgraph route."""
    qrnn = QRNN(4, 5, num_layers=2, window=2, bidirectional=True).eval()
    padded = torch.randn(7, 3, 4)
    packed = pack_padded_sequence(padded, torch.tensor([7, 3, 5]), enforce_sorted=False)
    compiled = torch.compile(qrnn, backend="aot_eager")
    (out, h_n), (expected_out, expected_h_n) = compiled(packed), qrnn(packed)
    torch.testing.assert_close(out.data, expected_out.data)
    torch.testing.assert_close(h_n, expected_h_n)


def test_inductor_training_and_inference_equal_eager() -> None:
    """The default backend (inductor, C++ on CPU) on one small stack: inference, then a training step."""
    qrnn = QRNN(4, 5, num_layers=2, window=2, bidirectional=True).eval()
    x, h0 = torch.randn(7, 3, 4), torch.randn(4, 3, 5)
    with torch.no_grad():
        got = torch.compile(qrnn, fullgraph=True, dynamic=False)(x, h0)
        expected = qrnn(x, h0)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e)
    qrnn.train()
    x.requires_grad_()
    h0.requires_grad_()
    got = loss_and_grads(torch.compile(qrnn, fullgraph=True, dynamic=False), x, h0, seed=2)
    expected = loss_and_grads(qrnn, x, h0, seed=2)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e)


INDUCTOR_ON_CI = """
import sys
import torch
if sys.argv[1] == "inductor first":
    import torch._inductor.lowering  # loaded before torchqrnn registers its decompositions
import torchqrnn
from torch._inductor.utils import run_and_get_code

torch.manual_seed(0)
qrnn, forget_mult = torchqrnn.QRNN(4, 5, window=2).eval(), torchqrnn.ForgetMult().eval()
x, f = torch.randn(7, 3, 4), torch.rand(7, 3, 5)
with torch.no_grad():
    (out, h_n), code = run_and_get_code(torch.compile(qrnn, fullgraph=True, dynamic=False), x)
    torch.testing.assert_close((out, h_n), qrnn(x))
    cells, more_code = run_and_get_code(torch.compile(forget_mult, fullgraph=True, dynamic=False), f, f)
    torch.testing.assert_close(cells, forget_mult(f, f))
code = "\\n".join(code + more_code)
assert "torch.ops.torchqrnn.qrnn_pool.default" in code and "torch.ops.torchqrnn.forget_mult.default" in code
import inspect
import torch._inductor.lowering as lowering
assert "def make_fallback" in inspect.getsource(lowering)  # the module kept its own loader
assert not any(type(hook).__module__.startswith("torchqrnn") for hook in sys.meta_path)
print("ok")
"""


@pytest.mark.parametrize("order", ["torchqrnn first", "inductor first"])
def test_inductor_keeps_the_ops_kernels_on_a_ci_machine(order: str, tmp_path: Any) -> None:
    """With ``CI`` set, Inductor's implicit fallback raises for any op with a registered decomposition
    (ours have their ``scan`` forms, for ONNX), so the library registers the fallbacks itself, whichever of
    torchqrnn and Inductor's lowering is imported first. A fresh process with Inductor's caches off (a
    cached graph skips the lowering); the compiled code calls the ops' kernels, not the decompositions."""
    env = {
        **os.environ,
        "CI": "1",
        "TORCHINDUCTOR_FORCE_DISABLE_CACHES": "1",
        "TORCHINDUCTOR_CACHE_DIR": str(tmp_path),
    }
    result = subprocess.run(
        [sys.executable, "-c", INDUCTOR_ON_CI, order], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-4000:]


def test_a_changed_inductor_gets_a_warning_not_a_broken_import() -> None:
    """Registering the fallbacks reaches into Inductor's lowering module; should a later torch move what it
    uses, importing Inductor must still work: the library warns instead."""
    import types

    from torchqrnn.ops import _decomposition

    moved = types.ModuleType("lowering_without_the_names")
    moved.lowerings = {}  # type: ignore[attr-defined]
    with pytest.warns(RuntimeWarning, match="could not register its ops as Inductor fallback kernels"):
        _decomposition._register_fallbacks(moved, [torch.ops.torchqrnn.qrnn_pool.default])
