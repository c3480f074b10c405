"""How the benchmarks print: ratios in fixed widths, marked when their rounds disagreed, durations, and the
note printed under a section that ran on a busy machine."""

from __future__ import annotations

from .timing import STEADY_SPREAD, Ratio, machine_busy, others_load

# After a ratio whose rounds disagreed (see Ratio.steady); a steady one has a blank in its place in a table
UNSTEADY = "?"


def times(value: float, digits: int = 2, width: int = 0) -> str:
    """``value`` as a ratio, ``2.41x``, followed by ``?`` when it is a :class:`Ratio` whose rounds disagreed.

    With ``width`` the text is exactly that wide, right-aligned, with the mark's column kept (blank when
    steady) so that marked and unmarked cells line up; a value too large for ``digits`` decimals loses
    decimals, then shows as ``>999x``: a cell never runs into the next one."""
    mark = UNSTEADY if isinstance(value, Ratio) and not value.steady else ""
    if not width:
        return f"{value:.{digits}f}x{mark}"
    for places in range(digits, -1, -1):
        text = f"{value:.{places}f}x"
        if len(text) < width:  # (one column for the mark)
            break
    else:
        text = f">{10 ** max(width - 3, 0) - 1}x"
    return f"{text}{mark or ' '}".rjust(width)


def duration(seconds: float) -> str:
    """``45 s``, ``3 min 10 s``, ``1 h 05 min``."""
    seconds = max(round(seconds), 0)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def busy_note(largest_spread: float, load: float | None, threads: int, cpus: int) -> str | None:
    """What to print under a section's figures when the machine was busy while they were measured: some
    ratio's rounds disagreed (``largest_spread`` over :data:`~torchqrnn.bench.timing.STEADY_SPREAD`), or
    other processes kept CPUs busy (the load average beyond this benchmark's threads). None when neither."""
    load_text = ""
    if load is not None:
        others = others_load(load, threads, cpus)
        load_text = f"load average {load:.1f} on {cpus} CPUs, {others:.1f} beyond this benchmark's "
        load_text += f"{min(threads, cpus)} threads"
    if largest_spread > STEADY_SPREAD:
        return (
            f"{UNSTEADY} busy machine: the rounds of the figures marked {UNSTEADY} disagree, up to "
            f"{largest_spread:.1f}x apart (within {STEADY_SPREAD}x on a quiet machine)"
            + (f"; {load_text}" if load_text else "")
            + ". Those ratios are not this machine's: rerun when it is quiet."
        )
    if machine_busy(load, threads, cpus):
        return (
            f"busy machine ({load_text}): the times are slower than on a quiet machine, though the rounds "
            "of every ratio agreed."
        )
    return None
