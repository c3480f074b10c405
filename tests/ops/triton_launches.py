"""The specializations the Triton launchers make, found without a GPU, and their ahead-of-time compilation.

A Triton kernel compiles once per *specialization*: the argument types plus, for integer arguments not marked
``do_not_specialize``, whether each equals 1 or is divisible by 16, and for pointers whether they are 16-byte
aligned. :class:`LaunchRecorder` replaces the launch of every kernel in the two Triton modules with a stand-in
that runs Triton's own argument binder for a CUDA target
(``triton.runtime.jit.create_function_from_signature``, the code ``JITFunction.run`` calls before it looks up
its cache) and records the cache key and what the
compiler would receive (signature, constexprs, attributes, options), then returns without compiling or
running anything. The launchers, dispatchers and modules themselves run unchanged on CPU tensors (real
allocations, so pointer alignment is real), so what is recorded is what their code passes: it cannot drift
from them.

:func:`compile_launch` compiles one recorded launch for a given GPU architecture with Triton's compiler and
the ptxas bundled in the triton wheel, and reads registers and spills from ptxas's report. That needs the
kernels as real ``JITFunction`` objects (not built for the interpreter), so it runs in a process where
``TRITON_INTERPRET`` is unset: ``python -m tests.ops.triton_launches --arch 80 90`` from the repository root
(``PYTHONPATH=src``), which is what ``test_triton_aot.py`` runs.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import torch

MODULES = ("torchqrnn.ops.forget_mult.triton", "torchqrnn.ops.qrnn_pool.triton")
# Every kernel the launchers of MODULES launch, as recorded: "<op>.<name>".
KERNELS = {
    "forget_mult._forward_kernel",
    "forget_mult._backward_kernel",
    "forget_mult._forward_summary_kernel",
    "forget_mult._backward_summary_kernel",
    "forget_mult._combine_chunks_kernel",
    "qrnn_pool._forward_kernel",
    "qrnn_pool._backward_kernel",
}


@dataclass
class Launch:
    """The first launch recorded for one specialization of one kernel."""

    kernel: str  # "forget_mult._forward_kernel"
    key: str  # Triton's kernel-cache key: one compiled binary per distinct key
    fn: Any  # the JITFunction (built from the interpreted one's Python function when interpreting)
    kwargs: dict[str, Any]  # constexprs by name and launch options (num_warps)
    bound_args: dict[str, Any]
    specialization: list[Any]
    options: dict[str, Any]
    label: str  # what the caller was doing (dtype, direction, options), for reports

    def attributes(self) -> str:
        """The specialized non-constexpr arguments: ``name=D`` (divisible by 16), ``name=1`` (equal to 1)."""
        marks = []
        for param, (kind, value) in zip(self.fn.params, self.specialization, strict=True):
            if param.is_constexpr:
                continue
            if kind == "constexpr":
                marks.append(f"{param.name}={value}")
            elif value == "D":
                marks.append(f"{param.name}=D")
        return " ".join(marks)


def _kernels(module: ModuleType) -> dict[str, Any]:
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    return {
        name: obj
        for name, obj in vars(module).items()
        if isinstance(obj, (JITFunction, InterpretedFunction)) and name.endswith("_kernel")
    }


def _as_jit_function(kernel: Any, unmarked: bool = False) -> Any:
    """The kernel as a ``JITFunction`` (with its ``do_not_specialize`` lists): what a GPU process builds.
    ``unmarked``: without those lists, every integer specialized (as before they were written)."""
    from triton.runtime.jit import JITFunction

    if isinstance(kernel, JITFunction) and not unmarked:
        return kernel
    options = kernel.kwargs if not isinstance(kernel, JITFunction) else vars(kernel)
    return JITFunction(
        kernel.fn,
        do_not_specialize=None if unmarked else options.get("do_not_specialize"),
        do_not_specialize_on_alignment=None if unmarked else options.get("do_not_specialize_on_alignment"),
    )


@dataclass
class LaunchRecorder:
    """While entered, kernel launches of the Triton modules are recorded and not run: per kernel, the first
    launch of each specialization (cache key), and every (label, steps, kernel, key) seen. ``label`` names
    what the caller is doing and ``steps`` its sequence length (set them before each call); ``arch`` is the
    CUDA target whose binder runs; ``unmarked`` ignores the kernels' ``do_not_specialize`` lists."""

    arch: int = 90
    unmarked: bool = False
    launches: dict[str, dict[str, Launch]] = field(default_factory=dict)
    seen: set[tuple[str, int, str, str]] = field(default_factory=set)
    label: str = ""
    steps: int = 0

    def __enter__(self) -> LaunchRecorder:
        import importlib

        from triton.backends.compiler import GPUTarget
        from triton.compiler import make_backend
        from triton.runtime.jit import create_function_from_signature

        backend = make_backend(GPUTarget("cuda", self.arch, 32))
        self._patched: list[Any] = []
        for module_name in MODULES:
            module = importlib.import_module(module_name)
            op = module_name.split(".")[-2]
            for name, kernel in _kernels(module).items():
                fn = _as_jit_function(kernel, self.unmarked)
                binder = create_function_from_signature(fn.signature, fn.params, backend)
                kernel.run = self._recorder(f"{op}.{name}", fn, binder)
                self._patched.append(kernel)
        return self

    def __exit__(self, *exc: object) -> None:
        for kernel in self._patched:
            del kernel.run  # the class's own launch again

    def _recorder(self, name: str, fn: Any, binder: Callable[..., Any]) -> Callable[..., None]:
        from triton import knobs
        from triton.runtime.jit import compute_cache_key

        def run(*args: Any, grid: object, warmup: bool, **kwargs: Any) -> None:
            # As JITFunction.run: these options join the launch's before binding.
            kwargs["debug"] = kwargs.get("debug", fn.debug) or knobs.runtime.debug
            kwargs["instrumentation_mode"] = knobs.compilation.instrumentation_mode
            kwargs["fpsan_homomorphic_casts"] = knobs.compilation.fpsan_homomorphic_casts
            bound_args, specialization, options = binder(*args, **kwargs)
            key = compute_cache_key({}, specialization, options)
            self.seen.add((self.label, self.steps, name, key))
            self.launches.setdefault(name, {}).setdefault(
                key, Launch(name, key, fn, kwargs, bound_args, specialization, options, self.label)
            )

        return run

    def counts(self) -> dict[str, int]:
        """Distinct specializations (compiled binaries) per kernel, over everything recorded."""
        return {name: len(keys) for name, keys in sorted(self.launches.items())}

    def counts_by_label(self) -> dict[tuple[str, str], tuple[int, int]]:
        """Per (label, kernel): the distinct specializations over all ``steps``, and the most at one
        ``steps``. The first exceeding the second is a recompile as the sequence length varies."""
        keys: dict[tuple[str, str], set[str]] = {}
        at_one: dict[tuple[str, int, str], int] = {}
        for label, steps, name, key in self.seen:
            keys.setdefault((label, name), set()).add(key)
            at_one[label, steps, name] = at_one.get((label, steps, name), 0) + 1
        most: dict[tuple[str, str], int] = {}
        for (label, _, name), count in at_one.items():
            most[label, name] = max(most.get((label, name), 0), count)
        return {where: (len(found), most[where]) for where, found in sorted(keys.items())}

    def all(self) -> list[Launch]:
        return [launch for keys in self.launches.values() for launch in keys.values()]


# ---------------------------------------------------------------------------------------------------------
# Driving the launchers: the public ops and a QRNN on CPU tensors, with the Triton backend.


def forget_mult_launch(
    steps: int, batch: int, hidden: int, *, dtype: torch.dtype, reverse: bool, batch_first: bool, h0: bool
) -> None:
    """One forward and backward of ``forget_mult`` through the dispatcher (the launches are recorded)."""
    import torchqrnn

    # Values are never read (nothing runs): empty tensors. The incoming gradient has stride 0, as .sum()'s.
    shape = (batch, steps, hidden) if batch_first else (steps, batch, hidden)
    f = torch.empty(shape, dtype=dtype, requires_grad=True)
    x = torch.empty(shape, dtype=dtype, requires_grad=True)
    state = torch.empty(batch, hidden, dtype=dtype, requires_grad=True) if h0 else None
    out = torchqrnn.forget_mult(f, x, state, batch_first=batch_first, reverse=reverse, backend="triton")
    out.backward(torch.ones((), dtype=dtype).expand_as(out))


def qrnn_pool_launch(
    steps: int,
    batch: int,
    hidden: int,
    *,
    dtype: torch.dtype,
    reverse: bool,
    batch_first: bool,
    h0: bool,
    output_gate: bool,
    input_gate: bool,
    mask: bool,
    lengths: bool,
    dhn: bool = True,
) -> None:
    """One forward and backward of ``qrnn_pool`` through the dispatcher (the launches are recorded)."""
    from torchqrnn.ops.qrnn_pool import qrnn_pool

    width = (2 + output_gate + input_gate) * hidden
    shape = (batch, steps) if batch_first else (steps, batch)
    gates = torch.empty(*shape, width, dtype=dtype, requires_grad=True)
    state = torch.empty(batch, hidden, dtype=dtype, requires_grad=True) if h0 else None
    out, hn = qrnn_pool(
        gates,
        state,
        output_gate=output_gate,
        input_gate=input_gate,
        forget_mask=torch.empty(*shape, hidden, dtype=torch.bool) if mask else None,
        forget_scale=0.9,
        lengths=torch.full((batch,), steps) if lengths else None,
        batch_first=batch_first,
        reverse=reverse,
        backend="triton",
    )
    one = torch.ones((), dtype=dtype)
    if dhn:
        torch.autograd.backward([out, hn], [one.expand_as(out), one.expand_as(hn)])
    else:
        out.backward(one.expand_as(out))


@contextlib.contextmanager
def interpreter_allowed() -> Iterator[None]:
    """The dispatcher accepts ``backend="triton"`` on CPU tensors only with ``TRITON_INTERPRET=1``; nothing
    is interpreted here (launches are recorded), but the kernels may be real ``JITFunction`` objects."""
    previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        yield
    finally:
        if previous is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = previous


DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
# Pooling kinds as (output_gate, input_gate): fo, ifo, f, and i without o (in this order, the covering set
# gives float64 the ifo backward, the kernel with the most live values).
POOLINGS = [(True, False), (True, True), (False, False), (False, True)]


def _direction(reverse: bool) -> str:
    return "reverse" if reverse else "forward"


def representative_launches(recorder: LaunchRecorder) -> None:
    """Every kernel with every dtype, both directions and each option on and off, at least once (not
    their product: a covering set, so that compiling it stays short).

    Per dtype ``n`` (hidden sizes aligned and not: 640, 33, 320, 20): ForgetMult as the chunked scan (as
    the heuristic picks it: batch 1, a long sequence; all five kernels), directions alternating with ``n``,
    h0 on the second half; the sequential schedule for the first two dtypes (with h0 and time-major, then
    without, batch-first and reversed); qrnn_pool once, each dtype with another pooling kind, directions
    and layouts alternating, the options (mask, lengths, h0, dhn) each on for two dtypes and off for two;
    and the kernel with the most live values (float64 ifo-pooling, every option, H = 640). Last,
    ForgetMult's launchers on meta tensors too large for 32-bit strides (batch-first, T * H > 2**31).
    """
    from torchqrnn.ops.forget_mult import triton as fm_kernels

    hidden_sizes = {torch.float32: 640, torch.float64: 33, torch.bfloat16: 320, torch.float16: 20}
    with interpreter_allowed():
        for n, (dtype_name, dtype) in enumerate(DTYPES.items()):
            hidden = hidden_sizes[dtype]
            reverse = n % 2 == 1
            if n < 2:
                recorder.label = f"{dtype_name} H={hidden} {_direction(reverse)} h0={n == 0} bf={n == 1} seq"
                forget_mult_launch(35, 4, hidden, dtype=dtype, reverse=reverse, batch_first=n == 1, h0=n == 0)
            steps = 4 * fm_kernels._MIN_CHUNK_STEPS
            assert 0 < fm_kernels.choose_chunk(steps, 1, hidden) < steps, "expected the chunked scan"
            recorder.label = f"{dtype_name} H={hidden} {_direction(not reverse)} h0={n >= 2} chunked"
            forget_mult_launch(
                steps, 1, hidden, dtype=dtype, reverse=not reverse, batch_first=False, h0=n >= 2
            )
            output_gate, input_gate = POOLINGS[n]
            options = dict(mask=n % 2 == 0, lengths=n % 2 == 1, h0=n in (0, 3), dhn=n in (1, 3))
            recorder.label = (
                f"{dtype_name} H={hidden} {_direction(reverse)} o={output_gate} i={input_gate} "
                + (" ".join(f"{name}={value}" for name, value in {"bf": n in (1, 2), **options}.items()))
            )
            qrnn_pool_launch(
                35,
                3,
                hidden,
                dtype=dtype,
                reverse=reverse,
                batch_first=n in (1, 2),
                output_gate=output_gate,
                input_gate=input_gate,
                **options,
            )
        # The most live values: float64 ifo-pooling with every option, the widest block (134 registers
        # on sm_90 in Triton 3.9; a spill would show here first).
        recorder.label = "float64 H=640 forward o=True i=True mask=True lengths=True h0=True dhn=True"
        qrnn_pool_launch(
            35,
            3,
            640,
            dtype=torch.float64,
            reverse=False,
            batch_first=False,
            output_gate=True,
            input_gate=True,
            h0=True,
            mask=True,
            lengths=True,
        )
    # 64-bit strides: the launchers called directly (meta tensors go to the ops' fake implementations).
    recorder.label = "float32 H=1024 forward bf=True 64-bit strides"
    steps, batch, hidden = 1 << 21, 2, 1024
    f = torch.empty(batch, steps, hidden, device="meta").transpose(0, 1)
    dh0 = torch.empty(batch, hidden, device="meta")
    fm_kernels.forward(f, f, None, f, False)
    fm_kernels.backward(f, f, f, f, None, False, f, f, dh0)


def sweep_lengths(recorder: LaunchRecorder, lengths: range = range(1, 65)) -> None:
    """Every launcher over ``T`` in ``lengths``, both directions, both layouts, the pooling kinds and
    options; the label holds everything but ``T`` (and the schedule ForgetMult's heuristic chose), so a
    label with more than one specialization of a kernel is a recompile as ``T`` varies."""
    from torchqrnn.ops.forget_mult import triton as fm_kernels

    with interpreter_allowed():
        for steps in lengths:
            recorder.steps = steps
            for reverse in (False, True):
                for batch_first in (False, True):
                    for batch, hidden in ((20, 640), (1, 320), (3, 33)):
                        chunk = fm_kernels.choose_chunk(steps, batch, hidden)
                        schedule = "chunked" if 0 < chunk < steps else "sequential"
                        recorder.label = (
                            f"forget_mult B={batch} H={hidden} {_direction(reverse)} bf={batch_first} "
                            + schedule
                        )
                        forget_mult_launch(
                            steps,
                            batch,
                            hidden,
                            dtype=torch.float32,
                            reverse=reverse,
                            batch_first=batch_first,
                            h0=True,
                        )
                    for hidden in (640, 33):
                        # every pooling kind, with and without mask and lengths (not all products)
                        for (output_gate, input_gate), variable in zip(
                            [*POOLINGS, POOLINGS[0]], [False, True, False, True, True], strict=True
                        ):
                            recorder.label = (
                                f"qrnn_pool H={hidden} {_direction(reverse)} bf={batch_first} "
                                f"o={output_gate} i={input_gate} mask/lengths={variable}"
                            )
                            qrnn_pool_launch(
                                steps,
                                4,
                                hidden,
                                dtype=torch.float32,
                                reverse=reverse,
                                batch_first=batch_first,
                                output_gate=output_gate,
                                input_gate=input_gate,
                                h0=True,
                                mask=variable,
                                lengths=variable,
                            )


# ---------------------------------------------------------------------------------------------------------
# Ahead-of-time compilation for a given architecture.


@dataclass
class Compiled:
    kernel: str
    arch: int
    label: str
    attributes: str
    registers: int
    spill_stores: int
    spill_loads: int
    shared_bytes: int
    seconds: float


_PTXAS_REGISTERS = re.compile(r"Used (\d+) registers")
_PTXAS_SPILLS = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")


def compile_launch(launch: Launch, arch: int) -> Compiled:
    """Compile ``launch`` for ``sm_<arch>`` (raises on a compile error); registers and spills from ptxas."""
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend

    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    options, signature, constexprs, attrs = launch.fn._pack_args(
        backend, dict(launch.kwargs), launch.bound_args, launch.specialization, launch.options
    )
    source = ASTSource(launch.fn, signature, constexprs, attrs)
    log = io.StringIO()
    start = time.perf_counter()
    with knobs.compilation.scope(), knobs.nvidia.scope(), contextlib.redirect_stdout(log):
        knobs.compilation.always_compile = True  # a cache hit would skip ptxas and its report
        knobs.nvidia.dump_ptxas_log = True
        compiled = triton.compile(source, target=target, options=options.__dict__)
    seconds = time.perf_counter() - start
    report = log.getvalue()
    registers = _PTXAS_REGISTERS.search(report)
    spills = _PTXAS_SPILLS.search(report)
    if registers is None or spills is None:
        raise RuntimeError(f"{launch.kernel}: no ptxas resource report in:\n{report}")
    return Compiled(
        launch.kernel,
        arch,
        launch.label,
        launch.attributes(),
        int(registers.group(1)),
        int(spills.group(1)),
        int(spills.group(2)),
        int(compiled.metadata.shared),
        seconds,
    )


def print_sweep(unmarked: bool) -> None:
    """Distinct specializations per kernel over T = 1..64 (``sweep_lengths``), all configurations together,
    and the most any one configuration compiles."""
    recorder = LaunchRecorder(unmarked=unmarked)
    with recorder:
        sweep_lengths(recorder)
    by_label = recorder.counts_by_label()
    print(f"{'kernel':<38} {'distinct':>8} {'most in one configuration':>26} {'T-recompiles':>12}")
    for kernel, count in recorder.counts().items():
        found = [counts for (_, name), counts in by_label.items() if name == kernel]
        extra = sum(total - at_one for total, at_one in found)
        print(f"{kernel:<38} {count:>8} {max(total for total, _ in found):>26} {extra:>12}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Compile the launchers' specializations for CUDA targets.")
    parser.add_argument("--arch", type=int, nargs="+", default=[80, 90], help="compute capabilities")
    parser.add_argument("--json", metavar="PATH", help="write every compiled specialization as JSON")
    parser.add_argument(
        "--sweep", action="store_true", help="only count the specializations over T = 1..64 (no compiling)"
    )
    parser.add_argument(
        "--unmarked", action="store_true", help="with --sweep: ignore the kernels' do_not_specialize lists"
    )
    args = parser.parse_args(argv)
    if args.sweep:
        print_sweep(args.unmarked)
        return 0
    if os.environ.get("TRITON_INTERPRET") == "1":
        parser.error("compiling needs the kernels built for a GPU: unset TRITON_INTERPRET")

    recorder = LaunchRecorder()
    with recorder:
        representative_launches(recorder)
    results = [compile_launch(launch, arch) for arch in args.arch for launch in recorder.all()]
    header = f"{'kernel':<38} {'sm':>3} {'regs':>4} {'spill st/ld':>11} {'smem':>6}  specialization"
    print(header)
    print("-" * len(header))
    for r in results:
        spills = f"{r.spill_stores}/{r.spill_loads}"
        print(f"{r.kernel:<38} {r.arch:>3} {r.registers:>4} {spills:>11} {r.shared_bytes:>6}  {r.label}")
    seconds = sum(r.seconds for r in results)
    print(
        f"# {len(results)} compiled ({len(recorder.all())} specializations x {len(args.arch)} targets), "
        f"{seconds:.1f} s of compilation"
    )
    if args.json:
        with open(args.json, "w") as out:
            json.dump([r.__dict__ for r in results], out, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
