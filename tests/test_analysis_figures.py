"""The bench's comparison figure: bar lengths are the per-seed means, whiskers their std."""

import math

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from dataparams.analysis.figures import method_comparison_figure, plot_method_comparison  # noqa: E402

TABLE = {
    "uniform 40%": {
        "baseline": {"final": [60.0, 70.0], "val": [85.0, 84.0]},
        "dp-instance": {"final": [83.0, 84.0, 85.0], "val": [86.0]},
        "cleanlab": {"final": [None, float("nan")], "val": []},  # every seed failed
    },
    "pair 40%": {"dp-instance": {"final": [72.0], "val": [77.5]}},
}


def _bars(fig):
    bars = {}
    for ax_i, ax in enumerate(fig.axes):
        for patch in ax.patches:
            if patch.get_gid():
                bars[(ax_i, patch.get_gid())] = patch
    return bars


def test_bar_lengths_are_seed_means_and_failed_cells_have_no_bar():
    fig = method_comparison_figure(TABLE, highlight=["dp-instance"])
    bars = _bars(fig)
    assert bars[(0, "baseline|final")].get_width() == pytest.approx(65.0)
    assert bars[(0, "baseline|val")].get_width() == pytest.approx(84.5)
    assert bars[(0, "dp-instance|final")].get_width() == pytest.approx(84.0)
    assert bars[(1, "dp-instance|val")].get_width() == pytest.approx(77.5)
    assert not any(gid.startswith("cleanlab") for _, gid in bars)
    assert (1, "baseline|final") not in bars  # absent from that setting
    # Highlighted methods are red, the others grey.
    red = bars[(0, "dp-instance|final")].get_facecolor()
    grey = bars[(0, "baseline|final")].get_facecolor()
    assert red[0] > 0.8 and red[1] < 0.3 and math.isclose(grey[0], grey[1], abs_tol=1e-6)
    # The dashed reference line sits at the baseline's mean final accuracy in the first panel.
    dashed = [ln for ln in fig.axes[0].lines if ln.get_linestyle() == "--"]
    assert len(dashed) == 1 and np.allclose(dashed[0].get_xdata(), 65.0)
    # Methods are listed top to bottom in first-seen order.
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels == ["baseline", "dp-instance", "cleanlab"]


def test_whiskers_are_the_sample_std(tmp_path):
    fig = method_comparison_figure(TABLE)
    ax = fig.axes[0]
    # errorbar segments of the dp-instance final bar: x from mean - sd to mean + sd
    sd = float(np.std([83.0, 84.0, 85.0], ddof=1))
    spans = []
    for coll in ax.collections:
        for seg in getattr(coll, "get_segments", lambda: [])():
            seg = np.asarray(seg)
            if seg.shape == (2, 2) and seg[0, 1] == seg[1, 1]:
                spans.append((seg[0, 0], seg[1, 0]))
    assert any(np.allclose(sorted(s), [84.0 - sd, 84.0 + sd]) for s in spans)
    path = plot_method_comparison(TABLE, tmp_path / "f" / "results.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_empty_table_is_refused():
    with pytest.raises(ValueError, match="empty"):
        method_comparison_figure({})
