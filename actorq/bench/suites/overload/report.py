"""The report: the overload table, the observations, the Markdown sections, the JSON
form of the summaries, and the plot (matplotlib is imported where it is drawn)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from actorq.bench import format_value
from actorq.bench.suites.overload.params import ADAPTIVE, COLORS, FAST_OFF, FAST_ON, FIXED, MPQ


def by_process(s: Mapping[str, Any], key: str,
               combine: Callable[[list[float]], float]) -> list[float]:
    """*key* of the user process's producer threads combined, then of each producer
    process (actor), in order."""
    per = list(s["per_producer"].values())
    threads = [float(v[key]) for v in per if v["process"] == "user"]
    return [combine(threads), *(float(v[key]) for v in per if v["process"] == "own")]


def overload_table(summaries: Mapping[str, Mapping[str, Any]]) -> str:
    def f(value: float, unit: str = "") -> str:
        return format_value(value, unit)

    rows: list[tuple[str, Callable[[Mapping[str, Any]], str]]] = [
            ("Offered load", lambda s: f"{f(s['offered'])} msg/s"),
            ("Unloaded rate R", lambda s: f"{f(s['rate_ref'])} msg/s"),
            ("Throughput, median (p10 .. p90)",
             lambda s: f"{f(s['throughput_median'])} ({f(s['throughput_p10'])} .. "
                       f"{f(s['throughput_p90'])}) msg/s"),
            ("Throughput / R", lambda s: f(s["throughput_pct"], "%")),
            ("User-process RSS: start → warm → end",
             lambda s: f"{s['user_rss_start']:.1f} → {s['user_rss_base']:.1f} → "
                       f"{s['user_rss_end']:.1f} MiB"),
            ("User-process RSS growth (slope)",
             lambda s: f"{s['user_rss_growth']:+.1f} MiB ({s['user_rss_slope']:+.3f} MiB/s)"),
            ("Producer processes RSS growth", lambda s: f"{s['producers_rss_growth']:+.1f} MiB"),
            ("Consumer RSS growth", lambda s: f"{s['consumer_rss_growth']:+.1f} MiB"),
            ("Messages waiting, max (end)",
             lambda s: f"{f(s['queued_max'])} ({f(s['queued_end'])})"),
            ("Credit window min .. max", lambda s: f"{f(s['window_min'])} .. {f(s['window_max'])}"),
            ("Latency p50 / p99 / max, handled during the overload",
             lambda s: f"{f(s['latency_p50'] * 1e3)} / {f(s['latency_p99'] * 1e3)} / "
                       f"{f(s['latency_max'] * 1e3)} ms"),
            ("Latency p99, handled in the last quarter",
             lambda s: f(s["latency_p99_last_quarter"] * 1e3, "ms")),
            ("Latency p50 / p99 / max, every admitted message",
             lambda s: f"{f(s['admitted_p50'] * 1e3)} / {f(s['admitted_p99'] * 1e3)} / "
                       f"{f(s['admitted_max'] * 1e3)} ms" if s["admitted_complete"]
             else "- (backlog drained without work)"),
            ("Share of the throughput: user threads / each producer process",
             lambda s: " / ".join(f"{x:.0%}" for x in by_process(s, "share", sum))),
            ("Worst latency: user threads / each producer process",
             lambda s: " / ".join(f(x * 1e3) for x in by_process(s, "max", max)) + " ms"),
            ("Sent (admitted) / handled",
             lambda s: f"{s['books']['sent']:,} / {s['books']['handled']:,}"),
            ("Sequence anomalies", lambda s: str(s["books"]["anomalies"])),
            ("Backpressure raised", lambda s: str(s["books"]["refused"])),
            ("Producer waits for credit (time)",
             lambda s: "-" if s["books"].get("credit_waits") is None
             else f"{s['books']['credit_waits']:,} ({s['books']['wait_seconds']:.1f} s)"),
            ("CPU during the overload: this process / producer processes / consumer",
             lambda s: " / ".join(f"{s['books']['cpu'][k]:.0f}"
                                  for k in ("user", "producers", "consumer")) + " % of a core"),
            ("Drain after the overload", lambda s: f(s["books"]["drain_s"], "s")),
            ("Drained without work (discarded)", lambda s: f"{s['books']['discarded']:,}"),
            ("Lost wake-ups",
             lambda s: "-" if s["books"].get("lost_wakeups") is None
             else str(s["books"]["lost_wakeups"]))]
    names = list(summaries)
    lines = ["| | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for label, fn in rows:
        cells = []
        for name in names:
            s = summaries[name]
            cells.append("skipped" if "skipped" in s else fn(s))
        lines.append(f"| {label} | " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    skipped = [f"- {name}: {s['skipped']}" for name, s in summaries.items() if "skipped" in s]
    return "\n".join(lines + (["", *skipped] if skipped else []))


def plot(summaries: Mapping[str, Mapping[str, Any]], path: Path, title: str) -> str | None:
    """Draw throughput, memory, backlog and latency over time; None, or why not."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        return f"matplotlib is not installed (pip install matplotlib): {exc}"
    shown = {n: s for n, s in summaries.items() if "skipped" not in s}
    fig, axes = plt.subplots(4, 1, figsize=(9, 12.5), sharex=True)
    ax_thr, ax_mem, ax_q, ax_lat = axes
    end = max((s["series"][-1]["t"] for s in shown.values()), default=0.0)
    for name, s in shown.items():
        color = COLORS.get(name, "black")
        series = s["series"]
        t = [r["t"] for r in series]
        rates = [(b_t, (b["handled"] - a["handled"]) / (b_t - a_t) / s["rate_ref"] * 100)
                 for (a_t, a), (b_t, b) in itertools.pairwise(zip(t, series, strict=True))
                 if b_t > a_t]
        ax_thr.plot([x for x, _ in rates], [y for _, y in rates], color=color, label=name)
        ax_mem.plot(t, [r["user_rss"] - series[0]["user_rss"] for r in series], color=color,
                    label=name)
        prod = [r["user_rss"] + r["producers_rss"] - series[0]["user_rss"]
                - series[0]["producers_rss"] for r in series]
        ax_mem.plot(t, prod, color=color, linestyle="--", alpha=0.8)
        ax_mem.plot(t, [r["consumer_rss"] - series[0]["consumer_rss"] for r in series],
                    color=color, linestyle=":", alpha=0.8)
        queued = [(x, r["queued"]) for x, r in zip(t, series, strict=True)
                  if math.isfinite(r.get("queued", math.nan))]
        if queued:
            label = f"{name}: " + ("qsize()" if name == MPQ else "in flight (credit used)")
            ax_q.plot([x for x, _ in queued], [max(1.0, y) for _, y in queued], color=color,
                      label=label)
        lat = s["latency_p99_series"]
        ax_lat.plot([x for x, _ in lat], [v * 1e3 for _, v in lat], color=color, label=name)
    ax_thr.axhline(90, color="grey", linestyle=":", linewidth=1, label="target: 90%")
    ax_thr.set_ylim(0, 125)
    ax_thr.set_ylabel("consumer throughput\n(% of its unloaded rate)")
    ax_thr.legend(loc="lower right", fontsize=8)
    ax_mem.set_ylabel("RSS growth since start (MiB)")
    from matplotlib.lines import Line2D

    styles = [Line2D([], [], color="grey", linestyle=style, label=label)  # type: ignore[arg-type]
              for style, label in (("-", "user process (4 producer threads)"),
                                   ("--", "user process + producer processes"),
                                   (":", "consumer"))]
    cases = ax_mem.legend(loc="upper left", fontsize=8)
    ax_mem.add_artist(cases)
    ax_mem.legend(handles=styles, loc="center left", fontsize=8)
    ax_q.set_yscale("log")
    ax_q.set_ylabel("messages waiting")
    ax_q.legend(loc="upper left", fontsize=8)
    ax_lat.set_yscale("log")
    ax_lat.set_ylabel("p99 latency of messages\nhandled per interval (ms)")
    ax_lat.set_xlabel("time since the overload started (s)")
    ax_lat.legend(loc="upper left", fontsize=8)
    for ax in axes:
        ax.grid(True, alpha=0.3)
        ax.axvline(end, color="black", linewidth=0.8, alpha=0.5)
    ax_lat.text(end, ax_lat.get_ylim()[0], " overload ends:\n what was admitted\n is drained",
                fontsize=7, va="bottom", ha="left")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def observations(summaries: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """What the figures show beyond the targets, in sentences (from the data)."""
    notes = []
    for name, s in summaries.items():
        if "skipped" in s:
            continue
        shares = by_process(s, "share", sum)
        worst = by_process(s, "max", max)
        fair = 1 / len(shares)
        for k, share in enumerate(shares[1:], start=1):
            if share < 0.1 * fair:
                notes.append(
                    f"{name}: producer process {k} got {share:.0%} of the consumer's "
                    f"throughput during the overload (a fair share is {fair:.0%}); its "
                    f"admitted messages waited up to {format_value(worst[k])} s, most of them "
                    "handled only after the overload ended.")
        books = s["books"]
        if name in (FIXED, ADAPTIVE):
            cpu = books["cpu"]
            notes.append(
                f"{name}: the user process used {cpu['user']:.0f}% of a core while its "
                f"producer threads mostly waited for credit ({books['credit_waits']:,} "
                f"waits on the consumer's channels in all); the consumer got "
                f"{cpu['consumer']:.0f}% of a core.")
        if name == ADAPTIVE and math.isfinite(s["window_max"]):
            peak = s["queued_max"]
            bound = books["channels"] * s["window_max"]
            if peak > 2 * bound:
                notes.append(
                    f"{name}: {format_value(peak)} messages were in flight at the peak, though "
                    f"the window stayed ≤ {s['window_max']:.0f} per channel after the "
                    "warm-up: the window starts at its maximum, so the first burst is "
                    "admitted in full before the controller shrinks it.")
        if name == MPQ:
            notes.append(
                f"{name}: the backlog reached {format_value(s['queued_max'])} messages "
                f"({format_value(s['queued_max'] / s['rate_ref'])} s of work); the producer "
                f"side grew by {s['user_rss_growth'] + s['producers_rss_growth']:.1f} MiB "
                f"(user process {s['user_rss_slope']:+.2f} MiB/s).")
    return notes


def json_ready(value: Any) -> Any:
    """nan/inf → None, tuples → lists, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value


def for_report(summaries: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The summaries without the bulky per-message data, with the time series."""
    return {name: {k: v for k, v in s.items() if k not in ("records",)}
            for name, s in summaries.items()}


def overload_sections(summaries: Mapping[str, Mapping[str, Any]],
                      waits: Mapping[str, list[int]]) -> list[str]:
    """The Markdown sections: the overload table, observations, the fast path."""
    section = [
        "## Overload", "",
        "Producers offer the load below to one consumer (4 threads of the user process and "
        "2 producer processes, actors for actorq); it handles what it can. Before the "
        "overload each actorq producer process sends one message, handled while the "
        "consumer is idle, so that every channel is open. Throughput is per sampling "
        "interval after the warm-up; RSS from psutil; latency from the send call (the "
        "producer's wait for credit included) to the end of the handler: over the messages "
        "handled during the overload after the warm-up, and over every admitted message "
        "(also those handled after the overload ended). \"Messages waiting\": actorq's "
        "messages in flight (sent, not yet handled: what the credit window bounds), "
        "mp.Queue's qsize().",
        "", overload_table(summaries), ""]
    notes = observations(summaries)
    if notes:
        section += ["Observations:", "", *(f"- {n}" for n in notes), ""]
    fast = ["## Fast path", "",
            f"Credit waits during the timed tells, per repeat: ON {waits.get(FAST_ON)}, "
            f"OFF {waits.get(FAST_OFF)}.", ""]
    return ["\n".join(section), "\n".join(fast)]
