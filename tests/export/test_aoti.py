"""AOTInductor packages run by a C++ program with no Python in it, against eager.

Each package takes tens of seconds to compile, so two are compiled per session: one model that holds every
option (both directions, windows 1-3, f / fo / ifo pooling, eval-mode zoneout, batch_first, h0 and the
streaming contexts as inputs) built through an ExportedProgram, and a plain QRNN through ``to_aoti(model,
args)`` with ``h0`` left out. Each is then run at several ``T`` and ``B`` by the compiled runner.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence

import torchqrnn
from torchqrnn import QRNN, QRNNLayer, StreamingQRNN
from torchqrnn.export import build_runner, read_tensors, to_aoti, write_tensors

INPUT = 5
SIZES = [(1, 1), (2, 3), (9, 2), (33, 4)]  # (T, B): the example is (4, 3); T = 1 and B = 1 included


class ManyOptions(nn.Module):
    """Every option a package must carry, in one graph."""

    def __init__(self) -> None:
        super().__init__()
        # both directions, ifo-pooling, windows 3 and 1, zoneout scaling F in evaluation
        self.bi = QRNN(
            INPUT, 6, num_layers=2, bidirectional=True, window=[3, 1], input_gate=True, zoneout=0.25
        )
        # f-pooling (no output gate) with window 2, then fo-pooling with window 1
        self.stack = QRNN(
            INPUT, 7, layers=[QRNNLayer(INPUT, 7, window=2, output_gate=False), QRNNLayer(7, 7, window=1)]
        )
        # a batch-first reverse layer with a window of 3 that looks ahead
        self.layer = QRNNLayer(INPUT, 4, window=3, batch_first=True, backward=True)
        # the streaming form: state and window contexts in and out
        self.stream = StreamingQRNN(QRNN(INPUT, 3, num_layers=2, window=[2, 3]))

    def forward(
        self,
        x: Tensor,
        h_bi: Tensor,
        h_stack: Tensor,
        h_layer: Tensor,
        h_stream: Tensor,
        c0: Tensor,
        c1: Tensor,
    ) -> tuple[Tensor, ...]:
        return (
            *self.bi(x, h_bi),
            *self.stack(x, h_stack),
            *self.layer(x.transpose(0, 1), h_layer),
            *self.stream(x, h_stream, c0, c1),
        )


def many_inputs(steps: int, batch: int, zero_state: bool) -> tuple[Tensor, ...]:
    state = torch.zeros if zero_state else torch.randn
    return (
        torch.randn(steps, batch, INPUT),
        state(4, batch, 6),
        state(2, batch, 7),
        state(1, batch, 4),
        state(2, batch, 3),
        state(1, batch, INPUT),
        state(2, batch, 3),
    )


def eager_many(model: ManyOptions, inputs: tuple[Tensor, ...], zero_state: bool) -> list[Tensor]:
    """The model run eagerly; with zero states as the modules' defaults (h0=None), so that feeding zeros to
    the package is checked against the no-h0 path."""
    if not zero_state:
        return list(model(*inputs))
    x, contexts = inputs[0], inputs[5:]
    return [
        *model.bi(x),
        *model.stack(x),
        *model.layer(x.transpose(0, 1)),
        *model.stream(x, *model.stream.initial_state(x.shape[1])[:1], *contexts),
    ]


def clean_env() -> dict[str, str]:
    """No Python: neither its variables nor the venv on PATH."""
    return {"PATH": "/usr/bin:/bin", "LANG": "C", "OMP_NUM_THREADS": "1"}


def run_package(runner: Path, package: str, inputs: tuple[Tensor, ...], tmp: Path) -> list[Tensor]:
    write_tensors(tmp / "in.bin", inputs)
    result = subprocess.run(
        [str(runner), package, str(tmp / "in.bin"), str(tmp / "out.bin")],
        capture_output=True,
        text=True,
        env=clean_env(),
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return read_tensors(tmp / "out.bin")


@pytest.fixture(scope="session")
def runner(tmp_path_factory: pytest.TempPathFactory) -> Path:
    start = time.perf_counter()
    path = build_runner(tmp_path_factory.mktemp("aoti") / "aoti_runner")
    print(f"\nC++ runner compiled in {time.perf_counter() - start:.1f} s")
    return path


@pytest.fixture(scope="session")
def many_package(tmp_path_factory: pytest.TempPathFactory) -> tuple[ManyOptions, str]:
    torch.manual_seed(0)
    model = ManyOptions().eval()
    example = many_inputs(4, 3, zero_state=False)
    time_dim, batch = torch.export.Dim("time", min=1), torch.export.Dim("batch", min=1)
    states = tuple({1: batch} for _ in example[1:])
    dims = ({0: time_dim, 1: batch}, *states)
    start = time.perf_counter()
    with torch.no_grad():
        program = torch.export.export(model, example, dynamic_shapes=dims)
        package = to_aoti(program, path=tmp_path_factory.mktemp("aoti") / "many.pt2")
    print(f"\nAOTInductor package of 9 layers compiled in {time.perf_counter() - start:.1f} s")
    return model, package


@pytest.fixture(scope="session")
def plain_package(tmp_path_factory: pytest.TempPathFactory) -> tuple[QRNN, str]:
    torch.manual_seed(1)
    model = QRNN(INPUT, 8, num_layers=2, window=[2, 1]).eval()
    start = time.perf_counter()
    package = to_aoti(model, (torch.randn(4, 3, INPUT), None), tmp_path_factory.mktemp("aoti") / "plain.pt2")
    print(f"\nAOTInductor package of a 2-layer QRNN compiled in {time.perf_counter() - start:.1f} s")
    return model, package


def test_runner_links_no_python(runner: Path) -> None:
    listing = subprocess.run(["ldd", str(runner)], capture_output=True, text=True, check=True).stdout
    names = [line.split()[0] for line in listing.splitlines() if line.strip()]  # "libc10.so => path (addr)"
    assert "libtorch_cpu.so" in names
    assert not [name for name in names if "python" in name.lower()], names


@pytest.mark.parametrize("zero_state", [False, True], ids=["h0", "no-h0"])
@pytest.mark.parametrize(("steps", "batch"), SIZES)
def test_many_options_in_cpp(
    runner: Path,
    many_package: tuple[ManyOptions, str],
    steps: int,
    batch: int,
    zero_state: bool,
    tmp_path: Path,
) -> None:
    model, package = many_package
    torch.manual_seed(steps * 100 + batch)
    inputs = many_inputs(steps, batch, zero_state)
    got = run_package(runner, package, inputs, tmp_path)
    with torch.no_grad():
        expected = eager_many(model, inputs, zero_state)
    assert len(got) == len(expected)
    for index, (out, ref) in enumerate(zip(got, expected, strict=True)):
        assert out.shape == ref.shape, index
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5, msg=f"output {index}")


def test_streaming_in_cpp_equals_whole_sequence(
    runner: Path, many_package: tuple[ManyOptions, str], tmp_path: Path
) -> None:
    """The streaming outputs of the package, fed back chunk by chunk, give the whole sequence's output."""
    model, package = many_package
    torch.manual_seed(5)
    x = torch.randn(11, 2, INPUT)
    h, c0, c1 = model.stream.initial_state(2)
    chunks = []
    for chunk in x.split([1, 4, 1, 5]):
        inputs = many_inputs(chunk.shape[0], 2, zero_state=True)
        outputs = run_package(runner, package, (chunk, *inputs[1:4], h, c0, c1), tmp_path)
        out, h, c0, c1 = outputs[-4:]
        chunks.append(out)
    with torch.no_grad():
        expected, h_n = model.stream.qrnn(x)
    torch.testing.assert_close(torch.cat(chunks), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(h, h_n, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("steps", "batch"), SIZES)
def test_qrnn_without_h0_in_cpp(
    runner: Path, plain_package: tuple[QRNN, str], steps: int, batch: int, tmp_path: Path
) -> None:
    model, package = plain_package
    torch.manual_seed(steps + batch)
    x = torch.randn(steps, batch, INPUT)
    output, h_n = run_package(runner, package, (x,), tmp_path)
    with torch.no_grad():
        expected, expected_h = model(x)
    torch.testing.assert_close(output, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(h_n, expected_h, rtol=1e-5, atol=1e-5)


def test_package_holds_no_python_callback(plain_package: tuple[QRNN, str], tmp_path: Path) -> None:
    """The package's C++ calls no custom op through the proxy executor (which needs Python)."""
    import zipfile

    _, package = plain_package
    with zipfile.ZipFile(package) as archive:
        sources = [archive.read(name).decode() for name in archive.namelist() if name.endswith(".cpp")]
    assert sources
    assert not any("proxy_executor_call_function" in source or "torchqrnn" in source for source in sources)


def test_tensor_file_round_trip(tmp_path: Path) -> None:
    tensors = [torch.randn(3, 0, 2), torch.randn(4), torch.arange(6.0).reshape(2, 3).t()]
    write_tensors(tmp_path / "t.bin", tensors)
    back = read_tensors(tmp_path / "t.bin")
    assert [t.shape for t in back] == [t.shape for t in tensors]
    for got, expected in zip(back, tensors, strict=True):
        assert torch.equal(got, expected)
    (tmp_path / "bad.bin").write_bytes(b"NOTATENSORFILE..")
    with pytest.raises(ValueError, match="TQRNTENS"):
        read_tensors(tmp_path / "bad.bin")


def test_training_mode_is_refused() -> None:
    model = QRNN(INPUT, 4, zoneout=0.5)
    with pytest.raises(ValueError, match=r"model.eval\(\)"):
        to_aoti(model, (torch.randn(3, 2, INPUT),), "unused.pt2")


def test_packed_sequence_is_refused() -> None:
    model = QRNN(INPUT, 4).eval()
    packed = pack_padded_sequence(torch.randn(3, 2, INPUT), torch.tensor([3, 2]))
    with pytest.raises(TypeError, match="PackedSequence"):
        to_aoti(model, (packed,), "unused.pt2")


def test_saved_context_is_refused() -> None:
    model = QRNN(INPUT, 4, window=2, save_prev_x=True).eval()
    with pytest.raises(ValueError, match="StreamingQRNN"):
        to_aoti(model, (torch.randn(3, 2, INPUT),), "unused.pt2")


def test_program_with_args_is_refused() -> None:
    model = QRNN(INPUT, 4).eval()
    x = torch.randn(3, 2, INPUT)
    program = torch.export.export(model, (x,))
    with pytest.raises(TypeError, match="args=None"):
        to_aoti(program, (x,), "unused.pt2")


def test_runner_source_ships_with_the_package() -> None:
    source = Path(torchqrnn.export.aoti.RUNNER_SOURCE)
    assert source.is_file()
    assert "AOTIModelPackageLoader" in source.read_text()
    assert os.fspath(source).startswith(os.path.dirname(torchqrnn.__file__))
