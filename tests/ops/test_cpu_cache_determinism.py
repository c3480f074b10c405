"""A CPU kernel gives the same bits whether it was compiled in this process or loaded from numba's cache.

Found in CI: with LLVM's fast-math ``contract`` / ``arcp`` flags on, the pooling kernel that a process had
just compiled and the same kernel that another process loaded from the cache disagreed in the last bits of
their float32 results (up to 0.3% on values near zero, three float16 ulps after rounding), so a run's
numbers depended on whether the cache was warm. Each case below runs in a fresh process twice on one cache
folder: first compiling every kernel, then loading every kernel, and the two must agree bit for bit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

_RUN = textwrap.dedent(
    """
    import json, sys
    import torch
    from torchqrnn.ops.forget_mult import cpu as forget_mult_cpu
    from torchqrnn.ops.qrnn_pool import cpu as pool_cpu
    from torchqrnn.ops.qrnn_step import cpu as step_cpu
    from torchqrnn.ops.qrnn_step import qrnn_step

    torch.manual_seed(0)
    results = {}
    for dtype in (torch.float32, torch.bfloat16):  # float16 shares the code paths of bfloat16
        name = str(dtype).split(".")[-1]
        steps, batch, hidden = 13, 3, 37
        for output_gate, input_gate in ((True, False), (False, True)):
            width = (2 + output_gate + input_gate) * hidden
            wide = (3 * torch.randn(batch, steps, width + 3)).to(dtype)
            gates = wide[..., 1 : width + 1].transpose(0, 1)  # batch-major storage, a strided start
            h0 = torch.randn(batch, hidden).to(dtype)
            out = torch.empty(steps, batch, hidden, dtype=dtype)
            cells = torch.empty(steps, batch, hidden, dtype=dtype) if output_gate else out
            hn = torch.empty(batch, hidden, dtype=dtype)
            flags = (output_gate, input_gate)
            pool_cpu.forward(gates, h0, None, 0.8, None, *flags, True, out, cells, hn)
            dgates, dh0 = torch.empty(gates.shape, dtype=dtype), torch.empty(batch, hidden, dtype=dtype)
            dout, dhn = torch.randn(steps, batch, hidden).to(dtype), torch.randn(batch, hidden).to(dtype)
            pool_cpu.backward(dout, dhn, gates, cells, h0, None, 0.8, None, *flags, True, dgates, dh0)
            results[f"pool {name} {flags}"] = [out, cells, hn, dgates, dh0]
        f = torch.rand(steps, batch, hidden).to(dtype)
        x = torch.randn(steps, batch, hidden).to(dtype)
        h = torch.empty(steps, batch, hidden, dtype=dtype)
        forget_mult_cpu.forward(f, x, None, h, False)
        results[f"forget_mult {name}"] = [h]
    for batch, size, hidden in ((1, 53, 37), (3, 53, 37), (1, 320, 320)):
        source, weight = torch.randn(batch, size), torch.randn(3 * hidden, size) / size**0.5
        bias, state = torch.randn(3 * hidden), torch.randn(batch, hidden)
        results[f"step {batch} {size} {hidden}"] = list(qrnn_step(source, weight, bias, state))
        halves = (t.bfloat16() for t in (source, weight, bias, state))  # batch 1: MKL's bfloat16 product
        results[f"step bf16 {batch} {size} {hidden}"] = list(qrnn_step(*halves))
    kernels = [pool_cpu._forward_jobs, pool_cpu._backward_jobs, forget_mult_cpu._forward_jobs]
    kernels += [step_cpu.step_stack, step_cpu._gates]  # the batch-1 step (BLAS inside) and the others
    hits = sum(sum(k.stats.cache_hits.values()) for k in kernels)
    misses = sum(sum(k.stats.cache_misses.values()) for k in kernels)
    torch.save(results, sys.argv[1])
    print(json.dumps({"hits": hits, "misses": misses}))
    """
)


def _run(cache: Path, out: Path) -> dict[str, int]:
    env = {**os.environ, "TORCHQRNN_CACHE_DIR": str(cache)}
    done = subprocess.run(
        [sys.executable, "-c", _RUN, str(out)], capture_output=True, text=True, env=env, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1).view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def test_compiled_and_cached_kernels_agree_bitwise(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    compiled = _run(cache, tmp_path / "compiled.pt")
    loaded = _run(cache, tmp_path / "loaded.pt")
    assert compiled["hits"] == 0 and compiled["misses"] > 0, compiled  # the first run compiled them all
    assert loaded["misses"] == 0 and loaded["hits"] > 0, loaded  # the second loaded them all
    first, second = torch.load(tmp_path / "compiled.pt"), torch.load(tmp_path / "loaded.pt")
    assert first.keys() == second.keys()
    for case, tensors in first.items():
        for a, b in zip(tensors, second[case], strict=True):
            assert a.dtype == b.dtype and torch.equal(_bits(a), _bits(b)), case
