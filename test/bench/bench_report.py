"""Pure helpers of the agent benchmark (run_bench.py): percentiles, summaries (median and
min–max), ratios against a floor, goals, and the Markdown table written to BENCHMARKS.md.

Every figure is a list of samples, one per run; a floor (or peer) is a list of the same
length measured interleaved with it, so the ratio of a row is the median of the per-run
ratios ("met means the median ratio meets the goal", issue 8).
"""
import math
import statistics
from dataclasses import dataclass
from typing import Optional, Sequence

MB = 1_000_000  # memory is reported in MB (10^6 bytes), like the goal
DASH = "—"


def percentile(values, p):
    """Nearest-rank percentile: the smallest sample with at least ``p`` % of the samples at
    or below it (so p99 of 100 samples is the 99th smallest, never an interpolation)."""
    if not values:
        raise ValueError("percentile of no samples")
    if not 0 < p <= 100:
        raise ValueError(f"percentile must be in (0, 100], not {p}")
    ordered = sorted(values)
    return ordered[max(1, math.ceil(p / 100 * len(ordered))) - 1]


@dataclass(frozen=True)
class Summary:
    median: float
    low: float
    high: float
    count: int

    @classmethod
    def of(cls, values):
        values = list(values)
        if not values:
            raise ValueError("summary of no samples")
        return cls(statistics.median(values), min(values), max(values), len(values))


def paired_ratios(values, floors):
    """``values[i] / floors[i]`` for each run (runs whose floor is 0 are left out)."""
    if len(values) != len(floors):
        raise ValueError(f"{len(values)} samples but {len(floors)} floor samples")
    return [value / floor for value, floor in zip(values, floors) if floor > 0]


# -- formatting ----------------------------------------------------------------------------

def _decimals_for_ms(ms):
    if ms < 1:
        return 2
    if ms < 10:
        return 1
    return 0


def format_seconds(summary):
    """``520 ms (480–610)``: milliseconds, precision chosen from the median."""
    scale = 1000
    decimals = _decimals_for_ms(summary.median * scale)
    median, low, high = (f"{v * scale:,.{decimals}f}".replace(",", " ")
                         for v in (summary.median, summary.low, summary.high))
    return f"{median} ms ({low}–{high})" if summary.count > 1 else f"{median} ms"


def format_bytes(summary):
    """``55.3 MB (54.9–56.0)``."""
    median, low, high = (f"{v / MB:.1f}" for v in (summary.median, summary.low, summary.high))
    return f"{median} MB ({low}–{high})" if summary.count > 1 else f"{median} MB"


def format_count(summary):
    """``0 (0–2)``; counts are whole numbers."""
    median, low, high = (f"{v:g}" for v in (summary.median, summary.low, summary.high))
    return f"{median} ({low}–{high})" if summary.count > 1 else median


def format_ratio(ratio):
    if ratio is None:
        return DASH
    return f"{ratio:.1f}×" if ratio < 10 else f"{ratio:.0f}×"


FORMATS = {"seconds": format_seconds, "bytes": format_bytes, "count": format_count}


# -- goals and rows ------------------------------------------------------------------------

@dataclass(frozen=True)
class Goal:
    """``max_ratio``: the median per-run ratio must not exceed it; ``max_value``: the
    median must not exceed it; ``every_run``: the limit holds for the worst run too."""
    text: str
    max_ratio: Optional[float] = None
    max_value: Optional[float] = None
    every_run: bool = False

    def met(self, summary, ratio):
        if self.max_ratio is not None:
            return ratio is not None and ratio <= self.max_ratio
        if self.max_value is not None:
            value = summary.high if self.every_run else summary.median
            return value <= self.max_value
        return None


def ratio_goal(limit, against="floor"):
    return Goal(f"≤ {limit:g}× {against}", max_ratio=limit)


@dataclass(frozen=True)
class Row:
    metric: str
    value: str
    floor: str = DASH
    ratio: str = DASH
    goal: str = DASH
    met: Optional[bool] = None

    def cells(self):
        verdict = DASH if self.met is None else ("met" if self.met else "not met")
        return [self.metric, self.value, self.floor, self.ratio, self.goal, verdict]


def measured_row(metric, unit, values: Sequence[float], floors: Sequence[float] = None,
                 goal: Goal = None):
    """A table row from the samples of one metric and, when given, of its floor or peer
    (same length, measured interleaved or at the same time)."""
    fmt = FORMATS[unit]
    summary = Summary.of(values)
    floor_text, ratio = DASH, None
    if floors:
        floor_text = fmt(Summary.of(floors))
        ratios = paired_ratios(values, floors)
        ratio = statistics.median(ratios) if ratios else None
    return Row(metric, fmt(summary), floor_text, format_ratio(ratio),
               goal.text if goal else DASH, goal.met(summary, ratio) if goal else None)


HEADER = ["metric", "value (median, min–max)", "floor or peer (median, min–max)", "ratio",
          "goal", "met?"]


def markdown_table(rows):
    def line(cells):
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"
    return "\n".join([line(HEADER), line(["---"] * len(HEADER))]
                     + [line(row.cells()) for row in rows])
