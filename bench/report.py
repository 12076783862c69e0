"""What a run found: one table with every figure, its target and the verdict; JSON; a chart."""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .api import CpuResult, PushResult
from .config import CLUSTER_API_PROCESSES, CLUSTER_NAME, SCENARIOS, Sizes
from .progress import ProgressCost
from .sse import FanoutPoint, IdleResult, StormResult

__all__ = [
    "COLUMNS",
    "Results",
    "Row",
    "TARGETS",
    "rows",
    "table",
    "write_chart",
    "write_json",
]

#: Table columns after the measure: the servers, then the progress reference.
COLUMNS: tuple[str, ...] = ("jobcast", "tutorial", "bare ASGI", "recipe", "tqdm")

#: The issue's targets, each checked on jobcast's figure.
TARGETS: dict[str, float] = {
    "fanout_p99_ms": 25.0,  # at the ladder's lowest rate (50 ev/s)
    "capacity_rate": 400.0,
    "capacity_p99_ms": 100.0,  # what a rate must keep to count toward capacity
    "big_p99_ms": 100.0,
    "idle_kib": 20.0,
    "storm_settle_s": 3.0,
    "cpu_ratio": 10.0,
    "advance_ratio": 1.0,
    "track_ratio": 1.5,
    # Through Redis, as for 5,000 subscribers on one process: what a live view needs. Nothing
    # may be lost or repeated: ids continuous per subscriber, and every tick delivered.
    "cluster_p99_ms": 100.0,
}


@dataclass
class Results:
    """Everything one run measured; a scenario not run leaves its field empty."""

    sizes: Sizes
    machine: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    ladder: list[FanoutPoint] = field(default_factory=list)
    big: list[FanoutPoint] = field(default_factory=list)
    idle: list[IdleResult] = field(default_factory=list)
    storm: list[StormResult] = field(default_factory=list)
    cpu: list[CpuResult] = field(default_factory=list)
    progress: ProgressCost | None = None
    push: list[PushResult] = field(default_factory=list)
    cluster: list[FanoutPoint] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    ran: list[str] = field(default_factory=lambda: list(SCENARIOS))  # the scenarios run

    def capacity(self, server: str) -> float | None:
        """The highest ladder rate where every event reached everyone and p99 ≤ 100 ms."""
        passing = [
            point.rate
            for point in self.ladder
            if point.server == server
            and point.delivered_all
            and point.p99_ms <= TARGETS["capacity_p99_ms"]
        ]
        return max(passing, default=None)

    def servers(self, points: list[FanoutPoint]) -> list[str]:
        return list(dict.fromkeys(point.server for point in points))

    def to_json(self) -> dict[str, Any]:
        return {
            "machine": self.machine,
            "sizes": dataclasses.asdict(self.sizes),
            "notes": self.notes,
            "targets": TARGETS,
            "fanout": {
                "ladder": [point.to_json() for point in self.ladder],
                "big": [point.to_json() for point in self.big],
                "capacity": {name: self.capacity(name) for name in self.servers(self.ladder)},
            },
            "idle": [result.to_json() for result in self.idle],
            "storm": [result.to_json() for result in self.storm],
            "cpu": [result.to_json() for result in self.cpu],
            "progress": None if self.progress is None else self.progress.to_json(),
            "push": [result.to_json() for result in self.push],
            "cluster": [point.to_json() for point in self.cluster],
            "errors": self.errors,
            "ran": self.ran,
            "table": [dataclasses.asdict(row) for row in rows(self)],
        }


@dataclass(slots=True)
class Row:
    scenario: str
    measure: str
    cells: dict[str, str]
    target: str = ""
    verdict: str = ""  # "met", "MISSED", or "" where no target applies
    section: str = ""  # the scenario that measured it


def _ms(value: float) -> str:
    if math.isnan(value):
        return "—"
    if value < 10:
        return f"{value:.1f} ms"
    if value < 1000:
        return f"{value:.0f} ms"
    return f"{value / 1000:.1f} s"


def _verdict(ok: bool | None) -> str:
    return "" if ok is None else ("met" if ok else "MISSED")


def _lateness(point: FanoutPoint) -> str:
    text = f"{_ms(point.p50_ms)} / {_ms(point.p99_ms)}"
    if not point.delivered_all:
        text += f" · {point.delivered_fraction:.0%} delivered"
    return text


def _fanout_rows(results: Results) -> list[Row]:
    out: list[Row] = []
    sizes = results.sizes
    if results.ladder:
        label = f"fan-out, {sizes.fanout_subscribers:,} subscribers"
        lowest = min(point.rate for point in results.ladder)
        for rate in sorted({point.rate for point in results.ladder}):
            points = {p.server: p for p in results.ladder if p.rate == rate}
            row = Row(label, f"p50 / p99 lateness @ {rate:g} ev/s", {})
            for name, point in points.items():
                row.cells[name] = _lateness(point)
            jobcast = points.get("jobcast")
            if rate == lowest and jobcast is not None:
                row.target = f"p99 ≤ {TARGETS['fanout_p99_ms']:g} ms, all delivered"
                row.verdict = _verdict(
                    jobcast.delivered_all and jobcast.p99_ms <= TARGETS["fanout_p99_ms"]
                )
            out.append(row)
        row = Row(label, "capacity (all delivered, p99 ≤ 100 ms)", {})
        for name in results.servers(results.ladder):
            capacity = results.capacity(name)
            row.cells[name] = "none" if capacity is None else f"{capacity:g} ev/s"
        if "jobcast" in row.cells:
            capacity = results.capacity("jobcast")
            row.target = f"≥ {TARGETS['capacity_rate']:g} ev/s"
            row.verdict = _verdict(capacity is not None and capacity >= TARGETS["capacity_rate"])
        out.append(row)
        cost = Row(label, f"server CPU per delivery @ {lowest:g} ev/s", {})
        busy = Row(label, f"server busy (share of one core) @ {lowest:g} ev/s", {})
        for point in results.ladder:
            if point.rate == lowest:
                cost.cells[point.server] = f"{point.cpu_us_per_delivery:.1f} µs"
                busy.cells[point.server] = f"{point.server_cpu_share:.0%}"
        out += [cost, busy]
    if results.big:
        label = f"fan-out, {sizes.big_subscribers:,} subscribers"
        row = Row(label, f"p50 / p99 lateness @ {sizes.big_rate:g} ev/s", {})
        for point in results.big:
            row.cells[point.server] = _lateness(point)
        jobcast = next((p for p in results.big if p.server == "jobcast"), None)
        if jobcast is not None:
            row.target = f"p99 ≤ {TARGETS['big_p99_ms']:g} ms, all delivered"
            row.verdict = _verdict(
                jobcast.delivered_all and jobcast.p99_ms <= TARGETS["big_p99_ms"]
            )
        out.append(row)
    return out


def _idle_rows(results: Results) -> list[Row]:
    if not results.idle:
        return []
    connections = results.idle[0].connections
    row = Row("idle streams", f"memory per open stream ({connections:,} open)", {})
    for result in results.idle:
        row.cells[result.server] = f"{result.kib_per_connection:.1f} KB"
    jobcast = next((r for r in results.idle if r.server == "jobcast"), None)
    if jobcast is not None:
        row.target = f"≤ {TARGETS['idle_kib']:g} KB"
        row.verdict = _verdict(jobcast.kib_per_connection <= TARGETS["idle_kib"])
    return [row]


def _storm_rows(results: Results) -> list[Row]:
    if not results.storm:
        return []
    first = results.storm[0]
    label = f"reconnect storm, {first.clients:,} clients @ {first.rate:g} ev/s"
    settle = Row(label, "all live again after", {})
    lost = Row(label, "events lost", {})
    duplicated = Row(label, "events duplicated", {})
    for result in results.storm:
        if result.settled:
            settle.cells[result.server] = f"{result.settle_s:.2f} s"
        else:
            settle.cells[result.server] = f"{result.live}/{result.clients} live"
        lost.cells[result.server] = f"{result.lost:,}"
        duplicated.cells[result.server] = f"{result.duplicated:,}"
    jobcast = next((r for r in results.storm if r.server == "jobcast"), None)
    if jobcast is not None:
        settle.target = f"< {TARGETS['storm_settle_s']:g} s"
        settle.verdict = _verdict(jobcast.settled and jobcast.settle_s < TARGETS["storm_settle_s"])
        lost.target = duplicated.target = "0"
        lost.verdict = _verdict(jobcast.lost == 0 and jobcast.complete == jobcast.clients)
        duplicated.verdict = _verdict(jobcast.duplicated == 0)
    return [settle, lost, duplicated]


def _cpu_rows(results: Results) -> list[Row]:
    if not results.cpu:
        return []
    label = "API under 2 CPU-bound jobs"
    recipe = next((r for r in results.cpu if r.server.startswith("recipe")), None)
    process = next((r for r in results.cpu if r.mode == "process"), None)
    thread = next((r for r in results.cpu if r.mode == "thread"), None)
    idle = Row(label, "GET p99, idle", {})
    load = Row(label, "GET p99, jobs running (jobcast: process mode)", {})
    threads = Row(label, "GET p99, jobs running (jobcast: thread mode)", {})
    if recipe is not None:
        idle.cells["recipe"] = _ms(recipe.idle.p99_ms)
        load.cells["recipe"] = _ms(recipe.load.p99_ms)
    if process is not None:
        idle.cells["jobcast"] = _ms(process.idle.p99_ms)
        load.cells["jobcast"] = _ms(process.load.p99_ms)
    if thread is not None:
        threads.cells["jobcast"] = _ms(thread.load.p99_ms)
    out = [idle, load, threads]
    if recipe is not None and process is not None:
        ratio = recipe.load.p99_ms / process.load.p99_ms
        load.target = f"≥ {TARGETS['cpu_ratio']:g}x better than the recipe (here {ratio:.0f}x)"
        load.verdict = _verdict(ratio >= TARGETS["cpu_ratio"])
    return out


def _progress_rows(results: Results) -> list[Row]:
    cost = results.progress
    if cost is None:
        return []
    label = "progress cost"
    advance = Row(
        label,
        "ns per ctx.advance() vs tqdm.update()",
        {"jobcast": f"{cost.advance_ns:.0f} ns", "tqdm": f"{cost.tqdm_update_ns:.0f} ns"},
        f"≤ {TARGETS['advance_ratio']:g}x tqdm (here {cost.advance_ratio:.2f}x)",
        _verdict(cost.advance_ratio <= TARGETS["advance_ratio"]),
    )
    track = Row(
        label,
        "ns per ctx.track() item vs tqdm iterator item",
        {"jobcast": f"{cost.track_ns:.0f} ns", "tqdm": f"{cost.tqdm_iter_ns:.0f} ns"},
        f"≤ {TARGETS['track_ratio']:g}x tqdm (here {cost.track_ratio:.2f}x)",
        _verdict(cost.track_ratio <= TARGETS["track_ratio"]),
    )
    return [advance, track]


def _push_rows(results: Results) -> list[Row]:
    if not results.push:
        return []
    row = Row("push vs poll", "state change seen after, p50 / p99", {})
    for result in results.push:
        column = "jobcast" if result.server == "jobcast" else "recipe"
        text = f"{_ms(result.p50_ms)} / {_ms(result.p99_ms)} ({result.method})"
        if result.missed:
            text += f", {result.missed} changes never seen"
        row.cells[column] = text
    return [row]


def _cluster_rows(results: Results) -> list[Row]:
    if not results.cluster:
        return []
    first = results.cluster[0]
    label = f"scale-out, {first.subscribers:,} subscribers @ {first.rate:g} ev/s"
    out: list[Row] = []
    for point in results.cluster:
        setup = point.server.removeprefix("jobcast, ")
        clustered = point.server == CLUSTER_NAME
        if clustered:
            each = point.subscribers // CLUSTER_API_PROCESSES
            setup += f" ({each:,} each)"
        late = Row(label, f"p50 / p99 lateness, {setup}", {"jobcast": _lateness(point)})
        loss = Row(
            label,
            f"ids lost / duplicated, {setup}",
            {"jobcast": f"{point.lost:,} / {point.duplicated:,}" if point.checked else "—"},
        )
        if point.resets:
            loss.cells["jobcast"] += f" · {point.resets:,} resets"
        server = f"{CLUSTER_API_PROCESSES} APIs together" if clustered else "server"
        busy = ", ".join(
            [f"{server} {point.server_cpu_share:.0%}"]
            + [f"{name.removeprefix('jobcast ')} {share:.0%}"
               for name, share in point.other_cpu_share().items()]
        )  # fmt: skip
        cpu = Row(label, f"CPU, share of one core, {setup}", {"jobcast": busy})
        if clustered:
            late.target = f"p99 ≤ {TARGETS['cluster_p99_ms']:g} ms, all delivered"
            late.verdict = _verdict(
                point.delivered_all and point.p99_ms <= TARGETS["cluster_p99_ms"]
            )
            loss.target = "0 / 0"
            loss.verdict = _verdict(
                point.checked
                and point.delivered_all
                and point.lost == point.duplicated == point.resets == 0
            )
        out += [late, loss, cpu]
    return out


#: Each scenario's rows, in table order.
_SECTIONS: dict[str, Callable[[Results], list[Row]]] = {
    "fanout": _fanout_rows,
    "idle": _idle_rows,
    "storm": _storm_rows,
    "cpu": _cpu_rows,
    "progress": _progress_rows,
    "push": _push_rows,
    "cluster": _cluster_rows,
}


def rows(results: Results) -> list[Row]:
    out: list[Row] = []
    for section, make in _SECTIONS.items():
        for row in make(results):
            row.section = section
            out.append(row)
    return out


def table(results: Results) -> str:
    """The results as one Markdown table, padded to read well in a terminal too."""
    header = ["scenario", "measure", *COLUMNS, "target (jobcast)", "verdict"]
    body = [
        [row.scenario, row.measure, *(row.cells.get(c, "—") for c in COLUMNS), row.target,
         row.verdict]
        for row in rows(results)
    ]  # fmt: skip
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return (
            "| "
            + " | ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True))
            + " |"
        )

    rule = "|" + "|".join("-" * (width + 2) for width in widths) + "|"
    return "\n".join([line(header), rule, *(line(cells) for cells in body)])


#: The scenario of a table row in a ``bench.json`` written before rows named it.
_LABELS: dict[str, str] = {
    "fan-out": "fanout",
    "idle streams": "idle",
    "reconnect storm": "storm",
    "API under": "cpu",
    "progress cost": "progress",
    "push vs poll": "push",
    "scale-out": "cluster",
}


def _row_section(row: dict[str, Any]) -> str:
    if row.get("section"):
        return str(row["section"])
    scenario = str(row.get("scenario", ""))
    return next((name for prefix, name in _LABELS.items() if scenario.startswith(prefix)), "")


def _merge(data: dict[str, Any], old: dict[str, Any], ran: list[str]) -> list[str]:
    """Fill ``data`` (a run of ``ran`` only) with the other scenarios' figures from ``old``.

    Each kept scenario is listed under ``kept`` with the machine, sizes and notes of the run
    that measured it. Returns the scenarios kept.
    """
    old_ran = old.get("ran", list(SCENARIOS))  # files without the field came from full runs
    old_kept = old.get("kept", {})
    earlier = {key: old.get(key) for key in ("machine", "sizes", "notes")}
    kept: dict[str, Any] = {}
    for name in SCENARIOS:
        if name in ran or not old.get(name):
            continue
        if name in old_ran:
            kept[name] = earlier
        elif name in old_kept:
            kept[name] = old_kept[name]
        else:
            continue  # never measured there either
        data[name] = old[name]  # each scenario's figures sit under its name
    table: list[dict[str, Any]] = []
    for name in SCENARIOS:
        if name in ran:
            table += [row for row in data["table"] if row["section"] == name]
        elif name in kept:
            table += [
                {**row, "section": name}
                for row in old.get("table", [])
                if _row_section(row) == name
            ]
    data["table"] = table
    data["kept"] = kept
    return list(kept)


def write_json(results: Results, path: Path) -> list[str]:
    """Write ``results`` to ``path``.

    After a run of some scenarios only, the others keep their figures from the file being
    replaced (see ``kept`` in it). Returns the scenarios kept that way.
    """
    data = results.to_json()
    kept: list[str] = []
    if set(results.ran) != set(SCENARIOS):
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError):
            old = None
        if isinstance(old, dict):
            kept = _merge(data, old, results.ran)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, allow_nan=True) + "\n")
    return kept


_COLORS = {
    "jobcast": "#1f77b4",
    "ctx": "#1f77b4",
    "tutorial": "#d62728",
    "bare": "#7f7f7f",
    "recipe": "#ff7f0e",
    "tqdm": "#2ca02c",
}


def _color(label: str) -> str:
    return _COLORS.get(label.split()[0].split(".")[0], "black")


def _bars(ax: Any, labels: list[str], values: list[float], title: str, unit: str) -> None:
    ax.bar(range(len(values)), values, color=[_color(label) for label in labels])
    ax.set_xticks(range(len(values)), labels, rotation=15, fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(unit)
    for i, value in enumerate(values):
        if not math.isnan(value):
            text = f"{value:,.0f}" if value >= 100 else f"{value:.3g}"
            ax.annotate(text, (i, value), ha="center", va="bottom", fontsize=8)


def _cluster_chart(ax: Any, points: list[FanoutPoint]) -> None:
    labels: list[str] = []
    values: list[float] = []
    for point in points:
        setup = "2 API + Redis" if point.server == CLUSTER_NAME else "1 process"
        notes = f"lost {point.lost:,}, dup {point.duplicated:,}" if point.checked else ""
        if not point.delivered_all:
            notes += f", {point.delivered_fraction:.0%} delivered"
        for name, value in (("p50", point.p50_ms), ("p99", point.p99_ms)):
            labels.append(f"jobcast {name}\n{setup}\n{notes}")
            values.append(value)
    title = "Scale-out through Redis"
    if points:
        first = points[0]
        title = f"Scale-out, {first.subscribers:,} subscribers x {first.rate:g} ev/s: lateness"
    _bars(ax, labels, values, title, "ms")
    ax.tick_params(axis="x", labelrotation=0, labelsize=7)
    ax.axhline(TARGETS["cluster_p99_ms"], color="grey", lw=0.8, ls=":")


def write_chart(results: Results, path: Path) -> bool:
    """Draw ``docs/bench.png``; False when matplotlib (the ``bench`` extra) is missing."""
    try:
        # Imported by name: matplotlib is an optional extra, absent where the type checker
        # and the tests run, so nothing here may need its stubs.
        matplotlib: Any = importlib.import_module("matplotlib")
    except ImportError:
        return False
    matplotlib.use("Agg")
    plt: Any = importlib.import_module("matplotlib.pyplot")
    fig, axes = plt.subplot_mosaic(
        [
            ["ladder", "big", "cluster", "idle", "storm"],
            ["cpu", "push", "progress", "text", "text"],
        ],
        figsize=(25, 9),
    )
    ax_ladder, ax_big, ax_cluster, ax_idle = (axes[k] for k in ("ladder", "big", "cluster", "idle"))
    ax_storm, ax_cpu, ax_push, ax_progress = (axes[k] for k in ("storm", "cpu", "push", "progress"))
    ax_text = axes["text"]

    for name in results.servers(results.ladder):
        points = sorted((p for p in results.ladder if p.server == name), key=lambda p: p.rate)
        rates = [p.rate for p in points]
        color = _color(name)
        ax_ladder.plot(rates, [p.p99_ms for p in points], "o-", color=color, label=f"{name} p99")
        ax_ladder.plot(rates, [p.p50_ms for p in points], ".--", color=color, alpha=0.6)
        lost = [p for p in points if not p.delivered_all]
        if lost:
            ax_ladder.plot([p.rate for p in lost], [p.p99_ms for p in lost], "x", color="black",
                           markersize=10, mew=2)  # fmt: skip
    ax_ladder.axhline(TARGETS["capacity_p99_ms"], color="grey", lw=0.8, ls=":")
    ax_ladder.axhline(TARGETS["fanout_p99_ms"], color=_color("jobcast"), lw=0.8, ls=":")
    ax_ladder.set(xscale="log", yscale="log", xlabel="events/s", ylabel="lateness (ms)")
    rates = sorted({p.rate for p in results.ladder})
    ax_ladder.set_xticks(rates, [f"{rate:g}" for rate in rates])
    ax_ladder.minorticks_off()
    ax_ladder.set_title(
        f"Fan-out, {results.sizes.fanout_subscribers:,} subscribers\n"
        "p99 solid, p50 dashed, x = not all delivered"
    )
    if results.ladder:
        ax_ladder.legend(fontsize=8)

    _bars(
        ax_big,
        [p.server for p in results.big],
        [p.p99_ms for p in results.big],
        f"Fan-out, {results.sizes.big_subscribers:,} subscribers x "
        f"{results.sizes.big_rate:g} ev/s: p99 lateness",
        "ms",
    )
    ax_big.axhline(TARGETS["big_p99_ms"], color="grey", lw=0.8, ls=":")
    ax_big.set_yscale("log")
    _cluster_chart(ax_cluster, results.cluster)
    _bars(
        ax_idle,
        [r.server for r in results.idle],
        [r.kib_per_connection for r in results.idle],
        "Memory per idle stream",
        "KB",
    )
    ax_idle.axhline(TARGETS["idle_kib"], color="grey", lw=0.8, ls=":")
    _bars(
        ax_storm,
        [
            f"{r.server}\n{'' if r.settled else f'{r.live}/{r.clients} live, '}"
            f"lost {r.lost:,}, dup {r.duplicated:,}"
            for r in results.storm
        ],
        [r.settle_s if r.settled else math.nan for r in results.storm],
        f"Reconnect storm, {results.storm[0].clients:,} clients: all live again after"
        if results.storm
        else "Reconnect storm",
        "s",
    )
    ax_storm.axhline(TARGETS["storm_settle_s"], color="grey", lw=0.8, ls=":")
    for i, storm in enumerate(results.storm):
        if not storm.settled:
            ax_storm.annotate("never all\nlive again", (i, 0), ha="center", va="bottom", fontsize=8)
    cpu_labels: list[str] = []
    cpu_values: list[float] = []
    for result in results.cpu:
        if result.server.startswith("recipe"):
            cpu_labels += ["recipe idle", "recipe loaded"]
            cpu_values += [result.idle.p99_ms, result.load.p99_ms]
            continue
        if result.mode == "process":
            cpu_labels.append("jobcast idle")
            cpu_values.append(result.idle.p99_ms)
        cpu_labels.append(f"jobcast loaded ({result.mode})")
        cpu_values.append(result.load.p99_ms)
    _bars(ax_cpu, cpu_labels, cpu_values, "API GET p99 while 2 CPU-bound jobs run", "ms")
    ax_cpu.set_yscale("log")
    _bars(
        ax_push,
        [f"{r.server.split(' ')[0]} {q}" for r in results.push for q in ("p50", "p99")],
        [value for r in results.push for value in (r.p50_ms, r.p99_ms)],
        "State change seen after: SSE push vs 1 s poll",
        "ms",
    )
    ax_push.set_yscale("log")
    cost = results.progress
    if cost is not None:
        _bars(
            ax_progress,
            ["ctx.advance()", "tqdm.update()", "ctx.track() item", "tqdm iter item"],
            [cost.advance_ns, cost.tqdm_update_ns, cost.track_ns, cost.tqdm_iter_ns],
            "Progress cost per update",
            "ns",
        )
    ax_text.axis("off")
    machine = results.machine
    lines = [
        f"{machine.get('cpu', '?')}, {machine.get('cores', '?')} cores",
        f"Python {machine.get('python', '?')}, uvicorn with uvloop + httptools",
        *results.notes,
    ]
    wrapped = "\n".join(textwrap.fill(line, 110, subsequent_indent="  ") for line in lines)
    ax_text.text(0, 1, wrapped, va="top", fontsize=8)
    fig.suptitle("jobcast benchmarks (references measured in the same run)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True
