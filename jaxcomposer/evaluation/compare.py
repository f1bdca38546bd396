"""Generated vs real pieces: per-statistic overlap of distributions, and the report writer.

Follows Yang & Lerch 2018 ("On the evaluation of generative models in music"): each side's values
of a statistic are smoothed with a Gaussian KDE (Scott's bandwidth, as scipy's gaussian_kde:
std(ddof=1) * n**(-1/5)) and the overlapping area OA = integral of min(p, q) is reported
(1 = same distribution, 0 = disjoint). Their intra-set / inter-set variant is included too: the
OA between the PDF of pairwise distances within one set and the PDF of distances across sets.

Degenerate sets, defined so OA is always in [0, 1] or NaN:
- a side with no (non-NaN) values: OA is NaN;
- a constant side (one value, or a spread below RELATIVE_ZERO_SPREAD of the largest |value|,
  i.e. rounding noise) has no Scott bandwidth: it borrows the other side's, i.e. it is read as
  a point at the other side's resolution;
- both sides constant: OA is 1 if the two values are equal (np.isclose), else 0.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from jaxcomposer.core import atomic
from jaxcomposer.evaluation.musicstats import (
    HARMONY_STAT_DESCRIPTIONS,
    NOTE_LENGTH_BIN_EDGES,
    NOTE_LENGTH_BIN_LABELS,
    STAT_DESCRIPTIONS,
    VERTICAL_CLASS_LABELS,
)

GRID_STEPS_PER_BANDWIDTH = 20  # trapezoid spacing near each kernel = its bandwidth / this
TAIL_BANDWIDTHS = 6.0  # grids reach this far past each value (mass beyond < 2e-9)
RELATIVE_ZERO_SPREAD = 1e-9  # a bandwidth below this * max |value| is rounding noise: constant


def _finite(values) -> np.ndarray:
    values = np.asarray(values, np.float64).reshape(-1)
    return values[np.isfinite(values)]


def scott_bandwidth(values: np.ndarray) -> float:
    """Scott's rule; 0.0 for fewer than two values or zero spread."""
    if len(values) < 2:
        return 0.0
    return float(np.std(values, ddof=1) * len(values) ** (-1.0 / 5.0))


def kde_pdf(values: np.ndarray, bandwidth: float, x: np.ndarray) -> np.ndarray:
    """Gaussian KDE of `values` evaluated at `x` (chunked over x to bound memory)."""
    out = np.empty(len(x))
    chunk = max(1, 4_000_000 // max(len(values), 1))
    norm = 1.0 / (len(values) * bandwidth * math.sqrt(2.0 * math.pi))
    for lo in range(0, len(x), chunk):
        z_XxN = (x[lo : lo + chunk, None] - values[None, :]) / bandwidth
        out[lo : lo + chunk] = np.exp(-0.5 * z_XxN**2).sum(axis=1) * norm
    return out


def _kernel_grid(values: np.ndarray, bandwidth: float) -> np.ndarray:
    """Points every bandwidth/20 over the union of [v - 6h, v + 6h]: where this KDE has mass."""
    values = np.sort(values)
    gaps = np.flatnonzero(np.diff(values) > 2 * TAIL_BANDWIDTHS * bandwidth)
    firsts, lasts = values[np.append(0, gaps + 1)], values[np.append(gaps, len(values) - 1)]
    step = bandwidth / GRID_STEPS_PER_BANDWIDTH
    reach = TAIL_BANDWIDTHS * bandwidth
    return np.concatenate(
        [
            np.linspace(lo - reach, hi + reach, int(np.ceil((hi - lo + 2 * reach) / step)) + 1)
            for lo, hi in zip(firsts, lasts, strict=True)
        ]
    )


def kde_pair(a, b) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(x, pdf of a, pdf of b) on one grid that resolves both; None if a side is empty or both
    are constant. The grid is dense only where a KDE has mass, so a narrow KDE far from a broad
    one costs no more than either alone."""
    a, b = _finite(a), _finite(b)
    if len(a) == 0 or len(b) == 0:
        return None
    zero = RELATIVE_ZERO_SPREAD * max(np.abs(a).max(), np.abs(b).max())
    ha, hb = (h if h > zero else 0.0 for h in (scott_bandwidth(a), scott_bandwidth(b)))
    if ha == 0.0 and hb == 0.0:
        return None
    ha, hb = ha or hb, hb or ha
    x = np.unique(np.concatenate([_kernel_grid(a, ha), _kernel_grid(b, hb)]))
    return x, kde_pdf(a, ha, x), kde_pdf(b, hb, x)


def overlap_area(a, b) -> float:
    """Overlapping area of the KDEs of two value sets (module docstring for degenerate sets)."""
    curves = kde_pair(a, b)
    if curves is None:
        a, b = _finite(a), _finite(b)
        if len(a) == 0 or len(b) == 0:
            return float("nan")
        return float(np.isclose(a.mean(), b.mean()))
    x, pa, pb = curves
    return float(np.clip(np.trapezoid(np.minimum(pa, pb), x), 0.0, 1.0))


def _summary(values: np.ndarray, n_nan: int) -> dict:
    empty = len(values) == 0
    return {
        "mean": float("nan") if empty else float(np.mean(values)),
        "std": float("nan") if empty else float(np.std(values)),
        "n": len(values),
        "n_nan": n_nan,
    }


def _pair_distances(a: np.ndarray, b: np.ndarray | None, max_pairs: int, rng) -> np.ndarray:
    """|a_i - a_j| for i < j (b is None) or |a_i - b_j| for all pairs, subsampled to max_pairs."""
    if b is None:
        i, j = np.triu_indices(len(a), k=1)
        dist = np.abs(a[i] - a[j])
    else:
        dist = np.abs(a[:, None] - b[None, :]).reshape(-1)
    if len(dist) > max_pairs:
        dist = rng.choice(dist, max_pairs, replace=False)
    return dist


def intra_inter(generated, real, *, max_pairs: int = 4000, seed: int = 0) -> dict:
    """Yang & Lerch's intra-set and inter-set distance distributions of one statistic."""
    rng = np.random.default_rng(seed)
    g, r = _finite(generated), _finite(real)
    intra_g = _pair_distances(g, None, max_pairs, rng)
    intra_r = _pair_distances(r, None, max_pairs, rng)
    inter = _pair_distances(g, r, max_pairs, rng)
    return {
        "intra_generated": _summary(intra_g, 0),
        "intra_real": _summary(intra_r, 0),
        "inter": _summary(inter, 0),
        "oa_intra_generated_vs_inter": overlap_area(intra_g, inter),
        "oa_intra_real_vs_inter": overlap_area(intra_r, inter),
    }


def compare_histograms(
    generated_counts: Sequence[np.ndarray],
    real_counts: Sequence[np.ndarray],
    bin_edges: np.ndarray,
    bin_labels: Sequence[str],
) -> dict:
    """Pooled histogram shares of both sets and their overlap sum(min(p, q))."""
    shares = []
    for counts in (generated_counts, real_counts):
        total = np.zeros(len(bin_labels)) + np.sum(counts, axis=0, dtype=np.float64)
        shares.append(total / total.sum() if total.sum() else np.full(len(bin_labels), np.nan))
    return {
        "bin_edges": [float(e) for e in bin_edges],
        "bin_labels": list(bin_labels),
        "generated_share": shares[0].tolist(),
        "real_share": shares[1].tolist(),
        "overlap": float(np.sum(np.minimum(*shares))),
    }


def compare_sets(
    generated: list[dict],
    real: list[dict],
    *,
    note_lengths: tuple[Sequence[np.ndarray], Sequence[np.ndarray]] | None = None,
    vertical_intervals: tuple[Sequence[np.ndarray], Sequence[np.ndarray]] | None = None,
    max_pairs: int = 4000,
    seed: int = 0,
) -> dict:
    """Compares `piece_stats` dicts of generated and real pieces, statistic by statistic.

    A statistic missing from a dict counts as NaN; NaN values are skipped and counted. With
    `note_lengths` = (generated counts, real counts) from `note_length_histogram`, the pooled
    note-length distributions are compared too; with `vertical_intervals` (counts from
    `musicstats.vertical_interval_counts`) the pooled vertical interval-class distributions,
    whose overlap sum(min(p, q)) = 1 - total variation distance. `seed` drives the subsampling
    of pair distances.
    """
    names = list(dict.fromkeys(k for stats in [*generated, *real] for k in stats))
    statistics = {}
    for i, name in enumerate(names):
        raw_g = np.array([s.get(name, np.nan) for s in generated], np.float64)
        raw_r = np.array([s.get(name, np.nan) for s in real], np.float64)
        g, r = _finite(raw_g), _finite(raw_r)
        statistics[name] = {
            "generated": _summary(g, len(raw_g) - len(g)),
            "real": _summary(r, len(raw_r) - len(r)),
            "overlap_area": overlap_area(g, r),
            "intra_inter": intra_inter(g, r, max_pairs=max_pairs, seed=seed + i),
            "generated_values": g.tolist(),
            "real_values": r.tolist(),
        }
    areas = _finite([s["overlap_area"] for s in statistics.values()])
    comparison = {
        "n_generated": len(generated),
        "n_real": len(real),
        "mean_overlap_area": float(np.mean(areas)) if len(areas) else float("nan"),
        "statistics": statistics,
    }
    if note_lengths is not None:
        comparison["note_length_histogram"] = compare_histograms(
            *note_lengths, NOTE_LENGTH_BIN_EDGES, NOTE_LENGTH_BIN_LABELS
        )
    if vertical_intervals is not None:
        comparison["vertical_interval_histogram"] = compare_histograms(
            *vertical_intervals, np.arange(len(VERTICAL_CLASS_LABELS) + 1), VERTICAL_CLASS_LABELS
        )
    return comparison


# ---- Report: report.json, report.md and one PNG per statistic, every file written atomically ----


def _fmt_area(x: float) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.3f}"


def _fmt(x: float) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.4g}"


def _mean_std(summary: dict) -> str:
    return f"{_fmt(summary['mean'])} ± {_fmt(summary['std'])}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(cells) + " |" for cells in [header, ["---"] * len(header), *rows]]


def _markdown(comparison: dict, title: str, gen: str, real: str, plots: list[str]) -> str:
    stats = comparison["statistics"]
    lines = [
        f"# {title}\n",
        f"{gen}: {comparison['n_generated']} pieces; {real}: {comparison['n_real']} pieces. "
        "Overlap area (Yang & Lerch 2018) of the Gaussian KDEs of each statistic: 1 = same "
        "distribution, 0 = disjoint. Mean overlap area: "
        f"{_fmt_area(comparison['mean_overlap_area'])}.\n",
        *_table(
            ["statistic", f"{gen} mean ± std", f"{real} mean ± std", "overlap area"],
            [
                [n, _mean_std(s["generated"]), _mean_std(s["real"]), _fmt_area(s["overlap_area"])]
                for n, s in stats.items()
            ],
        ),
        "\n## Intra-set and inter-set distances\n",
        *_table(
            [
                "statistic",
                f"intra {gen}",
                f"intra {real}",
                "inter",
                f"OA(intra {gen}, inter)",
                f"OA(intra {real}, inter)",
            ],
            [
                [
                    n,
                    *(
                        _mean_std(s["intra_inter"][k])
                        for k in ("intra_generated", "intra_real", "inter")
                    ),
                    _fmt_area(s["intra_inter"]["oa_intra_generated_vs_inter"]),
                    _fmt_area(s["intra_inter"]["oa_intra_real_vs_inter"]),
                ]
                for n, s in stats.items()
            ],
        ),
    ]
    hist = comparison.get("note_length_histogram")
    if hist:
        shares = zip(hist["bin_labels"], hist["generated_share"], hist["real_share"], strict=True)
        lines += [
            f"\n## Note lengths (beats), overlap {_fmt_area(hist['overlap'])}\n",
            *_table(
                ["bin", f"{gen} share", f"{real} share"],
                [[label, _fmt(g), _fmt(r)] for label, g, r in shares],
            ),
        ]
    hist = comparison.get("vertical_interval_histogram")
    if hist:
        shares = zip(hist["bin_labels"], hist["generated_share"], hist["real_share"], strict=True)
        lines += [
            "\n## Vertical interval classes at onsets, overlap "
            f"{_fmt_area(hist['overlap'])} (1 - total variation distance of the pooled shares)\n",
            *_table(
                ["interval class", f"{gen} share", f"{real} share"],
                [[label, _fmt(g), _fmt(r)] for label, g, r in shares],
            ),
        ]
    c2st = comparison.get("two_sample")
    if c2st:
        from jaxcomposer.evaluation.two_sample import describe

        lines += [
            f"\n## Classifier two-sample test (first {c2st['bars']} bars)\n",
            "Held-out balanced accuracy of logistic regression on key-invariant features "
            "(evaluation/two_sample.py); 0.5 = indistinguishable.\n",
            *_table(
                ["test", "accuracy ± std over repeats"],
                [
                    [f"{gen} vs {real}", describe(c2st["test"])],
                    ["control: two random halves of real pieces", describe(c2st["control"])],
                ],
            ),
        ]
    lines += ["\n## Plots\n"] + [f"![{os.path.basename(rel)}]({rel})" for rel in plots]
    return "\n".join(lines) + "\n"


def _axes():
    figure = Figure(figsize=(6.4, 4.0))
    figure.subplots_adjust(left=0.11, right=0.97, bottom=0.13, top=0.92)  # no tight_layout draw
    return figure, figure.add_subplot()


def _stat_figure(name: str, s: dict, gen: str, real: str):
    figure, ax = _axes()
    g, r = np.asarray(s["generated_values"]), np.asarray(s["real_values"])
    both = np.concatenate([g, r])
    if len(both):
        bins = np.histogram_bin_edges(both, bins=min(30, max(5, len(both) // 4)))
        curves = kde_pair(g, r) or (None, None, None)
        for values, pdf, label, color in (
            (g, curves[1], gen, "tab:orange"),
            (r, curves[2], real, "tab:blue"),
        ):
            if len(values):
                ax.hist(values, bins=bins, density=True, alpha=0.35, color=color, label=label)
            if pdf is not None:
                ax.plot(curves[0], pdf, color=color, label=f"{label} KDE")
        ax.legend(fontsize=8)
    ax.set_title(f"{name}: overlap area {_fmt_area(s['overlap_area'])}", fontsize=10)
    ax.set_xlabel({**STAT_DESCRIPTIONS, **HARMONY_STAT_DESCRIPTIONS}.get(name, name))
    ax.set_ylabel("density")
    return figure


def _histogram_figure(hist: dict, gen: str, real: str):
    figure, ax = _axes()
    x = np.arange(len(hist["bin_labels"]))
    ax.bar(x - 0.2, np.nan_to_num(hist["generated_share"]), 0.4, label=gen, color="tab:orange")
    ax.bar(x + 0.2, np.nan_to_num(hist["real_share"]), 0.4, label=real, color="tab:blue")
    ax.set_xticks(x, hist["bin_labels"])
    ax.set_xlabel("note length (beats, nearest power of two)")
    ax.set_ylabel("share of notes")
    ax.set_title(f"note lengths: overlap {_fmt_area(hist['overlap'])}", fontsize=10)
    ax.legend(fontsize=8)
    return figure


def write_report(
    out_dir: str, comparison: dict, *, title: str, generated_name: str, real_name: str
) -> dict[str, str]:
    """Writes report.json, report.md and plots/<statistic>.png into `out_dir`.

    Returns {path relative to out_dir: absolute path} of every file written.
    """
    gen, real = generated_name, real_name
    plots = {
        f"plots/{n}.png": (_stat_figure, (n, s, gen, real))
        for n, s in comparison["statistics"].items()
    }
    if comparison.get("note_length_histogram"):
        hist = comparison["note_length_histogram"]
        plots["plots/note_length_histogram.png"] = (_histogram_figure, (hist, gen, real))
    written = {
        rel: os.path.join(os.path.abspath(out_dir), rel)
        for rel in [*plots, "report.json", "report.md"]
    }
    for rel, (make_figure, args) in plots.items():  # one figure in memory at a time
        with atomic.atomic_path(written[rel]) as tmp:
            make_figure(*args).savefig(tmp, format="png", dpi=100)
    report = {"title": title, "generated_name": gen, "real_name": real, **comparison}
    atomic.write_json(written["report.json"], report)
    atomic.write_text(written["report.md"], _markdown(comparison, title, gen, real, list(plots)))
    return written
