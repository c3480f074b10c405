"""The benchmark's shared machinery: ratios that know how far their rounds disagreed, the busy-machine verdict
and its note, fixed-width figures, the time-left estimate, and peak memory against known allocations.

No timing is asserted: the inputs here are made-up samples and allocations of known sizes."""

from __future__ import annotations

import io
import json

import pytest
import torch

from torchqrnn.bench import layer
from torchqrnn.bench.memory import peak_bytes
from torchqrnn.bench.text import busy_note, duration, times
from torchqrnn.bench.timing import STEADY_SPREAD, Ratio, Samples, machine_busy, ratio, spread


def test_a_ratio_carries_the_spread_of_its_rounds() -> None:
    steady = ratio(Samples([2.0, 4.2, 3.0]), Samples([1.0, 2.0, 1.5]))  # 2.0, 2.1, 2.0 per round
    assert steady == pytest.approx(2.0) and steady.spread == pytest.approx(2.1 / 2.0) and steady.steady
    # one round ran while something else had the cores: 2, 2, 8 per round
    busy = ratio(Samples([2.0, 2.0, 8.0]), Samples([1.0, 1.0, 1.0]))
    assert busy == 2.0 and busy.spread == 4.0 and not busy.steady
    assert json.loads(json.dumps({"r": busy})) == {"r": 2.0}  # still a float in the report
    assert busy * 3 == 6.0 and max(busy, Ratio(1.5)) is busy  # and in arithmetic
    measurement = {
        "a": Samples([1.0, 1.0, 1.0]),
        "b": Samples([2.0, 2.0, 2.0]),
        "c": Samples([1.0, 3.0, 1.0]),
    }
    assert spread(measurement) == 3.0  # the widest of b / a and c / a
    assert spread({"a": Samples([1.0, 5.0])}) == 1.0


def test_ratios_print_with_a_mark_when_their_rounds_disagreed() -> None:
    assert times(2.4137) == "2.41x"
    assert times(Ratio(2.4137, spread=1.1)) == "2.41x"
    assert times(Ratio(267.0, spread=STEADY_SPREAD * 3), 1) == "267.0x?"


@pytest.mark.parametrize("width", [7, 10])
def test_table_cells_keep_their_width_whatever_the_value(width: int) -> None:
    values = [0.8, 9.9, 23.2, 111.7, 999.9, 12_345.6, 3e9, Ratio(111.7, 9.0), Ratio(5.0, 1.0)]
    cells = [times(v, 1, width) for v in values]
    assert all(len(cell) == width for cell in cells), cells
    row = " ".join(cells)
    assert row.split() == [cell.strip() for cell in cells]  # never run together
    assert cells[3].strip() == "111.7x" and cells[7].strip() == "111.7x?"  # three digits fit, mark and all
    assert cells[8] == times(5.0, 1, width)  # a steady ratio: its mark's column blank
    # too wide for the decimals: fewer; too wide for any: a bound
    assert cells[5].strip() == ("12346x" if width == 7 else "12345.6x")
    assert cells[6].strip() == (">9999x" if width == 7 else ">9999999x")


def test_durations() -> None:
    assert [duration(s) for s in (0.4, 45, 190, 3900)] == ["0 s", "45 s", "3 min 10 s", "1 h 05 min"]


def test_busy_verdict_counts_other_processes_not_the_benchmark_s_own_threads() -> None:
    assert not machine_busy(2.9, threads=2, cpus=2)  # the benchmark's two threads and a little more
    assert machine_busy(3.0, threads=2, cpus=2)  # a whole CPU's worth of someone else
    assert not machine_busy(23.0, threads=8, cpus=64) and machine_busy(24.0, threads=8, cpus=64)
    assert not machine_busy(None, threads=2, cpus=2)


def test_busy_notes() -> None:
    assert busy_note(1.2, 2.1, threads=2, cpus=2) is None  # quiet
    unsteady = busy_note(3.2, 5.3, threads=2, cpus=2)
    assert unsteady is not None
    assert (
        "figures marked ?" in unsteady and "3.2x apart" in unsteady and f"within {STEADY_SPREAD}x" in unsteady
    )
    assert "load average 5.3 on 2 CPUs, 3.3 beyond this benchmark's 2 threads" in unsteady
    assert "rerun when it is quiet" in unsteady
    loaded = busy_note(1.2, 4.0, threads=2, cpus=2)
    assert loaded is not None and loaded.startswith("busy machine (load average 4.0 on 2 CPUs")
    assert "rounds of every ratio agreed" in loaded
    no_load = busy_note(2.0, None, threads=2, cpus=2)  # where the system has no load average
    assert no_load is not None and "load" not in no_load


def test_headings_number_the_plan_and_estimate_the_time_left(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(layer, "SECTION_SECONDS", {"figure4": 10.0, "memory": 20.0, "int8": 30.0})
    out = io.StringIO()
    run = layer.Run(
        torch.device("cpu"), layer.Budget(), quick=False, out=out, plan=["figure4", "memory", "int8"]
    )
    assert run.time_left() == 60.0  # nothing measured yet: the reference times
    run.begin("figure4")
    run.heading("The grid")
    run.seconds["figure4"] = 20.0  # this machine took twice the reference
    run.current = "memory"
    run.heading("Memory")
    assert out.getvalue() == (
        "\n1. The grid (1 of 3, about 1 min 00 s left)\n\n2. Memory (2 of 3, about 1 min 40 s left)\n"
    )
    # a section called outside a planned run (the GPU benchmark's ptb_training) is numbered as printed
    alone = layer.Run(torch.device("cpu"), layer.Budget(), quick=False, out=io.StringIO())
    alone.heading("Training step")
    assert alone.out.getvalue() == "\n1. Training step\n"


def test_a_section_measured_on_a_busy_machine_ends_with_the_note(monkeypatch: pytest.MonkeyPatch) -> None:
    out = io.StringIO()
    run = layer.Run(torch.device("cpu"), layer.Budget(rounds=3, min_seconds=0.0), quick=True, out=out)
    run.plan = ["streaming"]
    monkeypatch.setattr(layer, "load_average", lambda: 1.0)
    run.begin("streaming")
    run.time({"a": lambda: None, "b": lambda: None})
    assert len(run.spreads) == 1 and run.spreads[0] >= 1.0  # every measurement's spread is kept
    run.spreads = [1.1]  # steady, quiet
    assert run.end()["busy"] is False and out.getvalue() == ""
    monkeypatch.setattr(layer, "load_average", lambda: 6.0)
    monkeypatch.setattr(layer.torch, "get_num_threads", lambda: 2)
    monkeypatch.setattr(layer.os, "cpu_count", lambda: 2)
    run.begin("streaming")
    run.spreads = [1.2, 4.0]  # one measurement's rounds disagreed
    record = run.end()
    assert record["busy"] is True and record["largest_spread"] == 4.0 and record["load_average"] == 6.0
    note = out.getvalue()
    assert note.startswith("   ? busy machine: the rounds of the figures marked ? disagree, up to 4.0x apart")
    assert "load average 6.0 on 2 CPUs" in note.replace("\n   ", " ")


MB = 1 << 20


def test_peak_memory_is_what_the_step_allocates() -> None:
    kept: list[torch.Tensor] = []

    def step() -> None:
        kept.clear()  # what the previous step left is freed first, as p.grad = None frees gradients
        kept.append(torch.ones(4 * MB // 4))  # 4 MB, kept to the end of the step
        kept.append(torch.ones(MB // 4))  # 1 MB more

    peak = peak_bytes(step)
    assert peak is not None and peak == pytest.approx(5 * MB, rel=0.05)


def test_peak_memory_does_not_subtract_what_the_step_frees_first() -> None:
    # The previous step's 8 MB are freed before this step's first operator: measured from before the call,
    # this step's 1 MB came out as 0 (the "nn.LSTM 0.0 MB" of --quick, whose gradients outweigh its
    # activations).
    held = [torch.ones(8 * MB // 4)]

    def step() -> None:
        held.clear()
        held.append(torch.ones(8 * MB // 4))  # this step's own gradients, say
        scratch = torch.ones(MB // 4)  # and 1 MB of activations, freed at the end
        del scratch

    peak = peak_bytes(step)
    assert peak is not None and peak == pytest.approx(9 * MB, rel=0.05)


def test_peak_memory_leaves_out_what_happens_once() -> None:
    cache: list[torch.Tensor] = []
    calls = []

    def step() -> None:
        calls.append(1)
        if len(calls) == 3:  # a library's cache, made on the first measured call (after two warm-ups)
            cache.append(torch.ones(16 * MB // 4))
        if len(calls) == 4:  # and a buffer of the warm-up's, released on the next
            cache.clear()
        torch.ones(2 * MB // 4).add_(1)

    peak = peak_bytes(step)
    assert len(calls) == 5  # two warm-ups, then three measured steps
    assert peak is not None and peak == pytest.approx(2 * MB, rel=0.05)
