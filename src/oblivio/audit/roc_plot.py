"""ROC curves as one small SVG: linear axes (the AUC view) and log-log axes (the low-FPR view).

Written by hand rather than through matplotlib: the audit runs after every training and
every erasure, and importing and rendering with matplotlib cost about 2 s of each. MLflow's
artifact viewer shows SVG like any image.
"""
from __future__ import annotations

from collections.abc import Sequence
from html import escape
from pathlib import Path

import numpy as np

COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")
PANEL, MARGIN, GAP = 360, 48, 70  # panel side, left/bottom margin, space between panels (px)
LOG_FLOOR = 1e-4  # the log-log panel starts here: attacks confident on a few records live below 1%
GRID = np.unique(np.concatenate([np.linspace(0, 1, 201), np.logspace(np.log10(LOG_FLOOR), 0, 201)]))


def _step(fpr: np.ndarray, tpr: np.ndarray, at: np.ndarray) -> np.ndarray:
    """TPR of the ROC step function at each FPR in `at` (the best TPR with FPR <= x)."""
    return tpr[np.clip(np.searchsorted(fpr, at, side="right") - 1, 0, None)]


def _axis(value: np.ndarray, log: bool) -> np.ndarray:
    """Position in [0, 1] along an axis."""
    if not log:
        return value
    return (np.log10(np.clip(value, LOG_FLOOR, 1)) - np.log10(LOG_FLOOR)) / -np.log10(LOG_FLOOR)


def _panel(x0: float, title: str, curves: list[tuple[str, np.ndarray, np.ndarray]], log: bool) -> list[str]:
    top = 30
    def point(fx: np.ndarray, ty: np.ndarray) -> str:
        xs, ys = x0 + _axis(fx, log) * PANEL, top + (1 - _axis(ty, log)) * PANEL
        return " ".join(f"{x:.1f},{y:.1f}" for x, y in zip(xs, ys))

    ticks = [1e-4, 1e-3, 1e-2, 1e-1, 1.0] if log else [0.0, 0.25, 0.5, 0.75, 1.0]
    out = [f'<text x="{x0 + PANEL / 2}" y="{top - 10}" text-anchor="middle" font-weight="bold">{title}</text>',
           f'<rect x="{x0}" y="{top}" width="{PANEL}" height="{PANEL}" fill="none" stroke="#444"/>']
    for t in ticks:
        p = float(_axis(np.array([t]), log)[0])
        label = f"{t:g}"
        out.append(f'<line x1="{x0 + p * PANEL:.1f}" y1="{top}" x2="{x0 + p * PANEL:.1f}" y2="{top + PANEL}" '
                   'stroke="#ddd"/>')
        out.append(f'<line x1="{x0}" y1="{top + (1 - p) * PANEL:.1f}" x2="{x0 + PANEL}" '
                   f'y2="{top + (1 - p) * PANEL:.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{x0 + p * PANEL:.1f}" y="{top + PANEL + 16}" text-anchor="middle">{label}</text>')
        out.append(f'<text x="{x0 - 6}" y="{top + (1 - p) * PANEL + 4:.1f}" text-anchor="end">{label}</text>')
    chance = GRID if not log else GRID[GRID >= LOG_FLOOR]
    out.append(f'<polyline points="{point(chance, chance)}" fill="none" stroke="#000" stroke-dasharray="5,4"/>')
    for i, (_, fpr, tpr) in enumerate(curves):
        at = GRID if not log else GRID[GRID >= LOG_FLOOR]
        out.append(f'<polyline points="{point(at, _step(fpr, tpr, at))}" fill="none" '
                   f'stroke="{COLOURS[i % len(COLOURS)]}" stroke-width="1.3"/>')
    out.append(f'<text x="{x0 + PANEL / 2}" y="{top + PANEL + 34}" text-anchor="middle">false positive rate</text>')
    out.append(f'<text transform="translate({x0 - 36},{top + PANEL / 2}) rotate(-90)" text-anchor="middle">'
               'true positive rate</text>')
    return out


def plot_roc(results_with_curves: Sequence[tuple[str, np.ndarray, np.ndarray]], path: str | Path) -> Path:
    """Write the ROC curves of every attack to `path` (SVG); returns the path."""
    curves = []
    for name, fpr, tpr in results_with_curves:
        f, t = np.asarray(fpr, dtype=np.float64), np.asarray(tpr, dtype=np.float64)
        if f.ndim != 1 or f.shape != t.shape or f.size == 0:
            raise ValueError(f"curve {name!r}: fpr and tpr must be 1-D of one non-zero shape; got {f.shape} and "
                             f"{t.shape}")
        curves.append((name, f, t))
    if not curves:
        raise ValueError("plot_roc needs at least one (name, fpr, tpr) curve")
    width = MARGIN + 2 * PANEL + GAP + 20
    legend_top = 30 + PANEL + 52
    height = legend_top + 16 * (len(curves) + 1) + 10
    body = [*_panel(MARGIN, "ROC (linear)", curves, log=False),
            *_panel(MARGIN + PANEL + GAP, "ROC (log-log)", curves, log=True)]
    for i, (name, _, _) in enumerate([("chance", None, None), *curves]):
        y = legend_top + 16 * i
        colour = "#000" if i == 0 else COLOURS[(i - 1) % len(COLOURS)]
        dash = ' stroke-dasharray="5,4"' if i == 0 else ""
        body.append(f'<line x1="{MARGIN}" y1="{y - 4}" x2="{MARGIN + 24}" y2="{y - 4}" stroke="{colour}"{dash}/>')
        body.append(f'<text x="{MARGIN + 30}" y="{y}">{escape(name)}</text>')
    svg = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif" font-size="11">\n<rect width="100%" height="100%" fill="white"/>\n'
           + "\n".join(body) + "\n</svg>\n")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(svg)
    return out
