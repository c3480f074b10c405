"""No recompiles as the sequence length varies: the Triton launchers' specializations, counted without a GPU.

Triton compiles a kernel once per specialization of its arguments (see ``triton_launches.py``). A language
model with variable BPTT changes T at every batch, so a launcher whose specialization depends on T would
compile in the middle of training. These tests record the launches (nothing runs) over T = 1..64 and count.
"""

from __future__ import annotations

import os

# As the other Triton tests: kernels built for the interpreter if this module is the first to import them
# (the recorder works on either kind, and later tests in the process run them).
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch

pytest.importorskip("triton", reason="the Triton kernels need the triton package (pip install triton)")

from .triton_launches import KERNELS, LaunchRecorder, forget_mult_launch, interpreter_allowed, sweep_lengths


@pytest.fixture(autouse=True)
def poison_empty() -> None:
    """Nothing runs here, so conftest's NaN poisoning of fresh buffers (costly at these sizes) is off."""


def test_sequence_length_compiles_nothing_new() -> None:
    """Every launcher, T = 1..64, both directions and layouts, every pooling kind, with and without masks
    and lengths: for each configuration, the binaries over all T are those of a single T."""
    recorder = LaunchRecorder()
    with recorder:
        sweep_lengths(recorder, range(1, 65))
    counts = recorder.counts_by_label()
    assert {kernel for _, kernel in counts} == KERNELS
    print("\ndistinct specializations over T = 1..64, per kernel (all configurations together):")
    for kernel, count in recorder.counts().items():
        worst = max(total for (_, name), (total, _) in counts.items() if name == kernel)
        print(f"  {kernel:<40} {count:>4}   at most {worst} in one configuration")
    recompiles = {where: found for where, found in counts.items() if found[0] > found[1]}
    assert not recompiles, (
        f"binaries depending on T, (over all T, at one T) per (configuration, kernel): {recompiles}"
    )


def test_the_count_sees_specializations() -> None:
    """The count is not blind: hidden sizes 32 and 33 differ in ``hidden``'s divisibility (specialized, as
    it should be: it does not change during training)."""
    recorder = LaunchRecorder()
    with recorder, interpreter_allowed():
        for hidden in (32, 33):
            forget_mult_launch(5, 2, hidden, dtype=torch.float32, reverse=False, batch_first=False, h0=False)
    assert recorder.counts()["forget_mult._forward_kernel"] == 2


def test_without_the_marks_the_sweep_finds_recompiles() -> None:
    """The same sweep with the kernels' ``do_not_specialize`` lists ignored, over T = 63, 64, 65 (64 is
    divisible by 16; from 64 on, the few-column shapes take the chunked scan), finds recompiles in every
    launcher that walks time: what the marks remove."""
    recorder = LaunchRecorder(unmarked=True)
    with recorder:
        sweep_lengths(recorder, range(63, 66))
    recompiling = {
        kernel for (_, kernel), (total, at_one) in recorder.counts_by_label().items() if total > at_one
    }
    assert recompiling == KERNELS - {"forget_mult._combine_chunks_kernel"}  # 2 chunks at both T
