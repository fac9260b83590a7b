"""Format evaluation results as text tables, a JSON file and a PNG plot."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

logger = logging.getLogger(__name__)

# Results: strategy -> one metrics dict per period (index p - 1).
Results = dict[str, list[dict[str, Any]]]

REID_TABLES = (("mrr", "MRR"), ("top_1", "top-1 accuracy"), ("top_3", "top-3 accuracy"),
               ("top_5", "top-5 accuracy"), ("top_10", "top-10 accuracy"))
CLASSIFICATION_TABLES = (("auc", "one-vs-rest ROC AUC"), ("macro_f1", "macro F1"))


def format_table(title: str, results: Results, period_len: int, cell) -> str:
    """Return a period x strategy table; ``cell(metrics)`` formats one period's metrics dict."""
    strategies = list(results)
    header = ["period", "behaviors"] + strategies
    num_periods = len(next(iter(results.values()))) if results else 0
    rows = [header]
    for index in range(num_periods):
        period = index + 1
        rows.append([str(period), str(period * period_len)] + [cell(results[s][index]) for s in strategies])
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    lines = [title]
    for row in rows:
        lines.append("  ".join(value.rjust(width) for value, width in zip(row, widths)))
    return "\n".join(lines)


def reid_tables(results: Results, period_len: int) -> str:
    """Return one table per re-identification metric."""
    tables = []
    for key, name in REID_TABLES:
        title = f"Re-identification {name} (rows: period and context behaviors seen; columns: strategy)"
        tables.append(format_table(title, results, period_len, lambda metrics, key=key: f"{metrics[key]:.4f}"))
    return "\n\n".join(tables)


def classification_tables(results: Results, period_len: int, num_seeds: int) -> str:
    """Return one table per classification metric, each cell the mean +- std over seeds."""
    tables = []
    for key, name in CLASSIFICATION_TABLES:
        title = f"Classification {name}, mean +- std over {num_seeds} seed(s) (rows: period and context behaviors seen)"

        def cell(metrics, key=key):
            return f"{metrics[f'{key}_mean']:.4f} +- {metrics[f'{key}_std']:.4f}"

        tables.append(format_table(title, results, period_len, cell))
    return "\n\n".join(tables)


def build_report(task: str, settings: dict[str, Any], dataset: dict[str, Any], results: Results,
                 period_len: int) -> dict[str, Any]:
    """Return the JSON-ready report: run settings, dataset summary and every metric per period."""
    periods = len(next(iter(results.values()))) if results else 0
    return {
        "task": task,
        "settings": settings,
        "dataset": dataset,
        "periods": [{"period": p, "context_behaviors": p * period_len} for p in range(1, periods + 1)],
        "results": {
            strategy: [
                {"period": index + 1, "context_behaviors": (index + 1) * period_len, **metrics}
                for index, metrics in enumerate(per_period)
            ]
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


def plot_metric(results: Results, metric: str, ylabel: str, title: str, path: str | Path, period_len: int,
                std_metric: str | None = None) -> None:
    """Save a PNG of ``metric`` against period, one line per strategy, with std error bars if given."""
    # The Agg canvas is used directly so that importing this module never switches the
    # pyplot backend of the calling process.
    figure = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    for strategy, per_period in results.items():
        periods = list(range(1, len(per_period) + 1))
        values = [metrics[metric] for metrics in per_period]
        errors = [metrics[std_metric] for metrics in per_period] if std_metric else None
        axes.errorbar(periods, values, yerr=errors, marker="o", markersize=3, capsize=2, label=strategy)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel(f"period ({period_len} context behaviors each)")
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=150)
    logger.info("Wrote plot to %s", path)
