"""The bench's output: the JSON document, the table with its ratio lines, the plot.

The JSON document (one line with ``--format json``) always has the keys
``events``, ``ceiling_eps``, ``baseline_eps``, ``peer_eps``, ``pipeline_eps``
(packed messages), ``pipeline_single_eps``, ``latency_p50_s``,
``latency_p99_s``, ``rss_bytes`` and ``exact``; a value is null when its
variant did not run, failed, or (peer) is not installed. Extras: the ratios,
the configuration, every variant's full result under ``variants``, versions.
"""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.bench.phase import PhaseResult

if TYPE_CHECKING:
    from pipeline.bench.data import Dataset
    from pipeline.bench.run import BenchConfig

#: (variant, table label)
ROWS = (
    ("ceiling", "ceiling (aiokafka+orjson+dict)"),
    ("baseline", "baseline (Faust per event)"),
    ("peer", "peer (Quix Streams)"),
    ("pipeline_packed", "pipeline, packed"),
    ("pipeline_single", "pipeline, single events"),
    ("latency", "latency at offered rate"),
)
#: the pipeline's throughput targets, drawn on the plot (docs/benchmarks.md)
TARGETS = ((15_000, "single target"), (100_000, "packed target"))
#: ratio key -> (numerator key, denominator key)
RATIOS = {
    "pipeline_vs_ceiling": ("pipeline_eps", "ceiling_eps"),
    "pipeline_vs_peer": ("pipeline_eps", "peer_eps"),
    "pipeline_vs_baseline": ("pipeline_eps", "baseline_eps"),
    "pipeline_single_vs_ceiling": ("pipeline_single_eps", "ceiling_eps"),
    "pipeline_single_vs_peer": ("pipeline_single_eps", "peer_eps"),
    "pipeline_single_vs_baseline": ("pipeline_single_eps", "baseline_eps"),
}


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _eps(result: PhaseResult | None) -> float | None:
    return None if result is None or result.eps is None else round(result.eps, 1)


def describe(result: PhaseResult) -> str:
    """One progress line for a finished variant."""
    if result.variant == "latency":
        p50, p99 = result.extra.get("latency_p50_s"), result.extra.get("latency_p99_s")
        if p50 is None:
            return result.note or "no latency samples"
        samples = result.extra.get("latency_samples")
        return f"p50 {p50:.3f} s, p99 {p99:.3f} s over {samples} samples"
    if result.eps is None:
        return result.note
    return (f"{result.events:,} events in {result.seconds or 0:.2f} s = {result.eps:,.0f}/s; "
            f"{result.note}")


def summarize(config: BenchConfig, dataset: Dataset,
              results: dict[str, PhaseResult]) -> dict[str, Any]:
    """The JSON document of a run."""
    packed, single = results.get("pipeline_packed"), results.get("pipeline_single")
    latency = results.get("latency")
    pipelines = [r for r in (packed, single) if r is not None]
    exacts = [r.extra.get("exact") is True for r in pipelines]
    rss = [r.rss_bytes for r in pipelines if r.rss_bytes is not None and r.eps is not None]
    live = [r.extra["live_windows_peak"] for r in pipelines
            if r.eps is not None and r.extra.get("live_windows_peak") is not None]
    doc: dict[str, Any] = {
        "events": dataset.events,
        "ceiling_eps": _eps(results.get("ceiling")),
        "baseline_eps": _eps(results.get("baseline")),
        "peer_eps": _eps(results.get("peer")),
        "pipeline_eps": _eps(packed),
        "pipeline_single_eps": _eps(single),
        "latency_p50_s": None if latency is None else latency.extra.get("latency_p50_s"),
        "latency_p99_s": None if latency is None else latency.extra.get("latency_p99_s"),
        "rss_bytes": max(rss) if rss else None,
        "exact": all(exacts) if exacts else None,
    }
    for key, (num, den) in RATIOS.items():
        a, b = doc[num], doc[den]
        doc[key] = round(a / b, 4) if a and b else None
    ceiling = results.get("ceiling")
    doc.update({
        "exact_packed": None if packed is None else packed.extra.get("exact") is True,
        "exact_single": None if single is None else single.extra.get("exact") is True,
        "ceiling_exact": None if ceiling is None else ceiling.extra.get("ceiling_exact"),
        "orgs": dataset.orgs,
        "accounts": dataset.accounts,
        "days": dataset.days,
        "partitions": config.partitions,
        "pack": config.pack,
        "rate": config.rate,
        "latency_seconds": config.latency_seconds,
        "variant_timeout_s": config.variant_timeout_s,
        "engagements": dataset.engagements,
        "window_pair_keys": dataset.window_pair_keys,
        "live_window_pair_keys": max(live) if live else None,
        "reference_rows": dataset.reference_rows,
        "variants": {name: result.as_dict() for name, result in results.items()},
        "versions": {
            "python": platform.python_version(),
            "faust-streaming": _version("faust-streaming"),
            "aiokafka": _version("aiokafka"),
            "quixstreams": _version("quixstreams"),
            "chdb": _version("chdb"),
            "reciprocity": _version("reciprocity"),
        },
        "cpus": os.cpu_count(),
    })
    return doc


def _number(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _broker_share(result: dict[str, Any]) -> str:
    """The broker's CPU over the latency phase, in cores (it shares the machine)."""
    cores = result.get("broker_cores")
    return "" if cores is None else f"; the broker used {cores:.2f} of a core"


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**20:,.0f} MiB"


def _ratio(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3g}x"


def table(doc: dict[str, Any]) -> str:
    """The human-readable report: one row per variant, then the ratios."""
    header = ("variant", "events", "seconds", "events/s", "peak RSS", "note")
    rows = [header]
    variants = doc["variants"]
    for name, label in ROWS:
        result = variants.get(name)
        if result is None:
            rows.append((label, "-", "-", "-", "-", "not run"))
            continue
        if name == "pipeline_packed":
            label = f"{label} x{doc['pack']}"
        note = result.get("note", "")
        if name == "latency":
            label = f"latency at {doc['rate']:,.0f}/s offered"
            p50, p99 = result.get("latency_p50_s"), result.get("latency_p99_s")
            if p50 is not None:
                note = (f"event-to-queryable p50 {p50:.3f} s, p99 {_number(p99, 3)} s, max "
                        f"{_number(result.get('latency_max_s'), 3)} s over "
                        f"{_number(result.get('latency_samples'))} engagements; sent at "
                        f"{_number(result.get('sent_rate'))}/s for "
                        f"{doc['latency_seconds']:g} s" + _broker_share(result)
                        + (f"; {note}" if note else ""))
            events = result.get("produced")
            rate = result.get("sent_rate")
        else:
            events = result.get("events") if result.get("eps") is not None else None
            rate = result.get("eps")
        rows.append((label, _number(events), _number(result.get("seconds"), 2),
                     _number(rate), _mib(result.get("rss_bytes")), note))
    widths = [max(len(str(row[i])) for row in rows) for i in range(5)]
    lines = []
    for row in rows:
        cells = [str(row[0]).ljust(widths[0])]
        cells += [str(row[i]).rjust(widths[i]) for i in range(1, 5)]
        lines.append("  ".join(cells) + "  " + str(row[5]))
    lines.append("")
    for key, label in (("ceiling", "pipeline/ceiling"), ("peer", "pipeline/peer"),
                       ("baseline", "pipeline/baseline")):
        lines.append(f"{label:<18} {_ratio(doc[f'pipeline_vs_{key}']):>8} packed, "
                     f"{_ratio(doc[f'pipeline_single_vs_{key}']):>8} single events")
    exact = doc["exact"]
    lines.append(f"{'exact':<18} {'n/a' if exact is None else str(exact).lower():>8} "
                 "(the pipeline runs stored exactly the pair windows the bench recomputed)")
    live = doc.get("live_window_pair_keys")
    held = "" if live is None else f"at most {live:,} live (window, pair) keys held; "
    lines.append(f"{'peak RSS':<18} {_mib(doc['rss_bytes']):>8} (pipeline worker, {held}"
                 f"{doc['window_pair_keys']:,} (1h window, pair) keys in the data)")
    return "\n".join(lines)


def plot(doc: dict[str, Any], path: Path) -> bool:
    """A bar chart of events/s per variant (log scale) as PNG; False without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names, rates = [], []
    for name, label in ROWS:
        key = {"pipeline_packed": "pipeline_eps"}.get(name, f"{name}_eps")
        if name != "latency" and doc.get(key):
            names.append(label if name != "pipeline_packed" else f"{label} x{doc['pack']}")
            rates.append(doc[key])
    figure, axes = plt.subplots(figsize=(9, 0.6 * max(len(names), 1) + 1.5))
    bars = axes.barh(names[::-1], rates[::-1], color="#4477aa")
    axes.set_xscale("log")
    if rates:
        axes.set_xlim(min(rates) / 3, max(rates) * 4)
    for (target, text), style in zip(TARGETS, ("--", ":"), strict=True):
        axes.axvline(target, color="#cc6677", linestyle=style, linewidth=1,
                     label=f"{text} ({target:,}/s)")
    axes.legend(loc="lower right", fontsize=8)
    axes.set_xlabel("events/s (log scale)")
    axes.set_title(f"reciprocity bench: {doc['events']:,} events, {doc['partitions']} "
                   f"partitions, {doc.get('cpus')} CPUs")
    for bar, rate in zip(bars, rates[::-1], strict=True):
        axes.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {rate:,.0f}",
                  va="center")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True
