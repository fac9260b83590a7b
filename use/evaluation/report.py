"""Format evaluation results as text tables, a JSON file and a PNG plot."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from use.evaluation.behaviors import BehaviorData, DaySchedule

logger = logging.getLogger(__name__)

# Results: strategy -> one metrics dict per period (index p - 1).
Results = dict[str, list[dict[str, Any]]]

REID_TABLES = (("mrr", "MRR"), ("top_1", "top-1 accuracy"), ("top_3", "top-3 accuracy"),
               ("top_5", "top-5 accuracy"), ("top_10", "top-10 accuracy"))
CLASSIFICATION_TABLES = (("auc", "one-vs-rest ROC AUC"), ("macro_f1", "macro F1"))


@dataclass
class PeriodAxis:
    """The periods of a report: their kind and, per period, the context behaviors seen by its end.

    With ``kind="count"`` every period has ``period_len`` behaviors, so every user's period p ends after
    ``context_behaviors[p - 1]`` behaviors.
    With ``kind="day"`` period p is each user's p-th context day. Then ``context_behaviors[p - 1]`` is
    the mean over users of the behaviors up to the end of that day and ``day_behaviors[p - 1]`` the mean
    within it. ``dates[p - 1]`` is the day's calendar date when all users share it, else None.
    """

    kind: str
    context_behaviors: list[float]
    day_behaviors: list[float] = field(default_factory=list)
    dates: list[str | None] = field(default_factory=list)
    period_len: int | None = None

    @classmethod
    def by_count(cls, period_len: int, num_periods: int) -> PeriodAxis:
        behaviors = [p * period_len for p in range(1, num_periods + 1)]
        return cls(kind="count", context_behaviors=behaviors, period_len=period_len)

    @property
    def num_periods(self) -> int:
        return len(self.context_behaviors)

    def entry(self, index: int) -> dict[str, Any]:
        """Return the JSON description of period ``index + 1``."""
        if self.kind == "count":
            return {"period": index + 1, "context_behaviors": self.context_behaviors[index]}
        return {
            "period": index + 1,
            "date": self.dates[index],
            "mean_context_behaviors": self.context_behaviors[index],
            "mean_day_behaviors": self.day_behaviors[index],
        }


def period_axis(data: BehaviorData) -> PeriodAxis:
    """Return the axis of the periods of ``data``, with per-user means and shared dates for day periods."""
    schedule = data.schedule
    if not isinstance(schedule, DaySchedule):
        return PeriodAxis.by_count(schedule.period_len, schedule.num_periods)

    num_users = len(data)
    axis = PeriodAxis(kind="day", context_behaviors=[])
    for period in range(1, schedule.num_periods + 1):
        ends = [data.period_end(user, period) for user in range(num_users)]
        starts = [data.period_end(user, period - 1) for user in range(num_users)]
        dates = {schedule.days.days[row][period - 1] for row in data.rows}
        axis.context_behaviors.append(sum(ends) / num_users)
        axis.day_behaviors.append((sum(ends) - sum(starts)) / num_users)
        axis.dates.append(dates.pop() if len(dates) == 1 else None)
    return axis


def _as_axis(periods: PeriodAxis | int, results: Results) -> PeriodAxis:
    """Return ``periods``, or for an int the fixed-length axis with that many behaviors per period."""
    if isinstance(periods, PeriodAxis):
        return periods
    num_periods = len(next(iter(results.values()))) if results else 0
    return PeriodAxis.by_count(periods, num_periods)


def format_table(title: str, results: Results, periods: PeriodAxis | int, cell) -> str:
    """Return a period x strategy table; ``cell(metrics)`` formats one period's metrics dict.

    ``periods`` is the axis, or for fixed-length periods the behaviors per period.
    """
    axis = _as_axis(periods, results)
    strategies = list(results)
    with_dates = axis.kind == "day" and any(axis.dates)
    if axis.kind == "count":
        header = ["period", "behaviors"]
    else:
        header = ["day"] + (["date"] if with_dates else []) + ["mean behaviors"]
    rows = [header + strategies]
    for index in range(axis.num_periods):
        if axis.kind == "count":
            labels = [str(index + 1), str(axis.context_behaviors[index])]
        else:
            date = [axis.dates[index] or "-"] if with_dates else []
            labels = [str(index + 1)] + date + [f"{axis.context_behaviors[index]:.1f}"]
        rows.append(labels + [cell(results[s][index]) for s in strategies])
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines = [title]
    for row in rows:
        lines.append("  ".join(value.rjust(width) for value, width in zip(row, widths)))
    return "\n".join(lines)


def _row_note(axis: PeriodAxis) -> str:
    if axis.kind == "count":
        return "rows: period and context behaviors seen"
    return "rows: each user's context day and the mean context behaviors seen by its end"


def reid_tables(results: Results, periods: PeriodAxis | int) -> str:
    """Return one table per re-identification metric; ``periods`` as in ``format_table``."""
    axis = _as_axis(periods, results)
    tables = []
    for key, name in REID_TABLES:
        title = f"Re-identification {name} ({_row_note(axis)}; columns: strategy)"
        tables.append(format_table(title, results, axis, lambda metrics, key=key: f"{metrics[key]:.4f}"))
    return "\n\n".join(tables)


def classification_tables(results: Results, periods: PeriodAxis | int, num_seeds: int) -> str:
    """Return one table per classification metric, each cell the mean +- std over seeds."""
    axis = _as_axis(periods, results)
    tables = []
    for key, name in CLASSIFICATION_TABLES:
        title = f"Classification {name}, mean +- std over {num_seeds} seed(s) ({_row_note(axis)})"

        def cell(metrics, key=key):
            return f"{metrics[f'{key}_mean']:.4f} +- {metrics[f'{key}_std']:.4f}"

        tables.append(format_table(title, results, axis, cell))
    return "\n\n".join(tables)


def build_report(task: str, settings: dict[str, Any], dataset: dict[str, Any], results: Results,
                 periods: PeriodAxis | int) -> dict[str, Any]:
    """Return the JSON-ready report: run settings, dataset summary and every metric per period.

    ``period_kind`` is "count" or "day"; each period entry describes the period as ``PeriodAxis.entry`` does.
    """
    axis = _as_axis(periods, results)
    return {
        "task": task,
        "settings": settings,
        "dataset": dataset,
        "period_kind": axis.kind,
        "periods": [axis.entry(index) for index in range(axis.num_periods)],
        "results": {
            strategy: [{**axis.entry(index), **metrics} for index, metrics in enumerate(per_period)]
            for strategy, per_period in results.items()
        },
    }


def write_json(report: dict[str, Any], path: str | Path) -> None:
    """Write the report as JSON; NaN values (undefined metrics) are written as null."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_nan_to_none(report), indent=2) + "\n", encoding="utf-8")
    logger.info("Wrote results to %s", path)


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: _nan_to_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_nan_to_none(item) for item in value]
    return value


def plot_metric(results: Results, metric: str, ylabel: str, title: str, path: str | Path, period_len: int | None = None,
                std_metric: str | None = None, periods: PeriodAxis | None = None) -> None:
    """Save a PNG of ``metric`` against period, one line per strategy, with std error bars if given.

    Pass ``periods``, or ``period_len`` for fixed-length periods.
    """
    if (periods is None) == (period_len is None):
        raise ValueError("plot_metric needs exactly one of periods= and period_len=")
    axis = periods if periods is not None else _as_axis(period_len, results)
    # The Agg canvas is used directly so that importing this module never switches the
    # pyplot backend of the calling process.
    figure = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    for strategy, per_period in results.items():
        period_numbers = list(range(1, len(per_period) + 1))
        values = [metrics[metric] for metrics in per_period]
        errors = [metrics[std_metric] for metrics in per_period] if std_metric else None
        axes.errorbar(period_numbers, values, yerr=errors, marker="o", markersize=3, capsize=2, label=strategy)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    if axis.kind == "count":
        axes.set_xlabel(f"period ({axis.period_len} context behaviors each)")
    else:
        axes.set_xlabel("context day (day k is each user's k-th day with events in the context)")
        if axis.dates and all(axis.dates):
            axes.set_xticks(range(1, axis.num_periods + 1), labels=axis.dates, rotation=30, ha="right")
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=150)
    logger.info("Wrote plot to %s", path)
