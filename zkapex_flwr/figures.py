"""One figure style for every plot of the project (local runs, fleet reports, benchmarks).

Labelled axes with units, a title, a legend where there is more than one series, no line across
categorical x values, :data:`DPI` dots per inch. Build and save figures inside :func:`paper_style`
(a bare ``matplotlib.figure.Figure`` renders through Agg: no pyplot, no global backend switch).
"""

from __future__ import annotations

from pathlib import Path

DPI = 200
PAPER_STYLE = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.axisbelow": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.6,
    "lines.linewidth": 1.3,
    "legend.frameon": False,
    "image.cmap": "Blues",
}


def paper_style():
    """Context manager applying :data:`PAPER_STYLE`."""
    import matplotlib

    return matplotlib.rc_context(PAPER_STYLE)


def save_figure(figure, path: str | Path) -> Path:
    """Tight layout, then write ``figure`` to ``path`` at :data:`DPI`."""
    with paper_style():
        figure.tight_layout()
        figure.savefig(path, dpi=DPI)
    return Path(path)
