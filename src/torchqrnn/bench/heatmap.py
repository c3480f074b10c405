"""A heatmap of speed ratios: a log colour scale centred on 1x, and cell text readable on every colour.

Ratios multiply, so the colour follows ``log2(ratio)``: 2x faster and 2x slower sit equally far from the
neutral colour of 1x, on a diverging colormap (blue: faster than the baseline, red: slower), and one outlier
cannot wash out the grid as it does on a linear scale. Each cell's text is black or white, whichever contrasts
more with that cell's colour (WCAG relative luminance), so it is readable on every cell.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

# the colour bar's ticks, as ratios: fine ones for a grid within 4x of 1x, powers of two beyond
_FINE_TICKS = [1 / 4, 1 / 3, 1 / 2, 2 / 3, 0.8, 1, 1.25, 1.5, 2, 3, 4]
_COARSE_TICKS = [2.0**k for k in range(-10, 11)]
# the half-range of log2(ratio) never shrinks below this, so a grid of ratios near 1x stays pale
_MIN_HALF_RANGE = math.log2(1.25)


def relative_luminance(rgb: Sequence[float]) -> float:
    """WCAG 2 relative luminance of an sRGB colour with channels in [0, 1]."""

    def linear(c: float) -> float:
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (linear(c) for c in rgb[:3])
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast_ratio(first: Sequence[float], second: Sequence[float]) -> float:
    """WCAG 2 contrast ratio of two sRGB colours, from 1 (same) to 21 (black on white)."""
    light, dark = sorted((relative_luminance(first), relative_luminance(second)), reverse=True)
    return (light + 0.05) / (dark + 0.05)


def text_colour(background: Sequence[float]) -> tuple[float, float, float]:
    """Black or white, whichever contrasts more with ``background`` (at least 4.58:1 for any colour)."""
    black, white = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    return black if contrast_ratio(black, background) >= contrast_ratio(white, background) else white


def ratio_heatmap(
    values: Sequence[Sequence[float]],
    *,
    rows: Sequence[str],
    columns: Sequence[str],
    title: str,
    xlabel: str,
    ylabel: str,
    colorbar_label: str,
) -> Any:
    """A matplotlib Figure of ``values`` (ratios > 0, ``len(rows)`` x ``len(columns)``), cells labelled."""
    import numpy as np
    from matplotlib.colors import CenteredNorm
    from matplotlib.figure import Figure

    ratios = np.asarray(values, dtype=float)
    if ratios.shape != (len(rows), len(columns)) or not (ratios > 0).all():
        raise ValueError(
            f"values: expected positive ratios of shape ({len(rows)}, {len(columns)}), got shape "
            f"{ratios.shape} with minimum {ratios.min() if ratios.size else None}"
        )
    logs = np.log2(ratios)
    norm = CenteredNorm(vcenter=0.0, halfrange=max(float(np.abs(logs).max()), _MIN_HALF_RANGE))
    figure = Figure(figsize=(6.5, 4.5))
    axis = figure.add_subplot()
    image = axis.imshow(logs, cmap="RdBu", norm=norm, origin="upper")
    axis.set_xticks(range(len(columns)), list(columns))
    axis.set_yticks(range(len(rows)), list(rows))
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    for i in range(len(rows)):
        for j in range(len(columns)):
            background = image.cmap(norm(logs[i, j]))
            axis.text(
                j,
                i,
                f"{ratios[i, j]:.2g}x",
                ha="center",
                va="center",
                fontsize=9,
                color=text_colour(background),
            )
    axis.set_title(title)
    bar = figure.colorbar(image, ax=axis, label=colorbar_label)
    half = norm.halfrange
    ticks = [t for t in (_FINE_TICKS if half <= 2 else _COARSE_TICKS) if abs(math.log2(t)) <= half + 1e-9]
    bar.set_ticks([math.log2(t) for t in ticks], labels=[f"{t:.3g}x" for t in ticks])
    figure.tight_layout()
    return figure


def save_ratio_heatmap(values: Sequence[Sequence[float]], *, path: str, **labels: Any) -> None:
    """:func:`ratio_heatmap` written to ``path`` (the format from its suffix, PNG at 120 dpi)."""
    ratio_heatmap(values, **labels).savefig(path, dpi=120)
