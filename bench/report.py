"""What a run found: one table with every figure, its target and the verdict; JSON; a chart."""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import textwrap
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from .api import CpuResult, PushResult
from .config import CLUSTER_API_PROCESSES, CLUSTER_NAME, Sizes
from .progress import ProgressCost
from .sse import FanoutPoint, IdleResult, StormResult

#: Table columns after the measure: the servers, then the progress reference.
COLUMNS = ("jobcast", "tutorial", "bare ASGI", "broadcaster", "recipe", "tqdm")

#: The targets, each checked on jobcast's figure.
TARGETS = {
    "fanout_p99_ms": 30.0,  # at the ladder's lowest rate (50 ev/s)...
    "fanout_vs_broadcaster": 1.2,  # ...and at most this much the broadcaster's p99 there
    "capacity_vs_bare": 2.0,  # times bare ASGI's capacity (or the ladder's top rate)
    "capacity_floor": 200.0,
    "capacity_p99_ms": 100.0,  # what a rate must keep to count toward capacity
    "big_p99_ms": 200.0,
    "idle_kib": 12.0,
    "storm_settle_s": 1.0,
    "cpu_ratio": 10.0,
    "advance_ratio": 1.0,
    "track_ratio": 1.5,
    # Through Redis (two API processes), no worse than the same subscribers on one process;
    # nothing lost or repeated: ids continuous per subscriber, and every tick delivered.
    "cluster_vs_one": 1.0,
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

    def capacity(self, server: str) -> float | None:
        """The highest ladder rate where every event reached everyone and p99 ≤ 100 ms."""
        points = [point for point in self.ladder if point.server == server and point.delivered_all]
        limit = TARGETS["capacity_p99_ms"]
        return max((point.rate for point in points if point.p99_ms <= limit), default=None)

    def to_json(self) -> dict[str, Any]:
        return {
            "machine": self.machine,
            "sizes": dataclasses.asdict(self.sizes),
            "notes": self.notes,
            "targets": TARGETS,
            "fanout": {
                "ladder": [dataclasses.asdict(point) for point in self.ladder],
                "big": [dataclasses.asdict(point) for point in self.big],
                "capacity": {name: self.capacity(name) for name in _servers(self.ladder)},
            },
            "idle": [dataclasses.asdict(result) for result in self.idle],
            "storm": [dataclasses.asdict(result) for result in self.storm],
            "cpu": [dataclasses.asdict(result) for result in self.cpu],
            "progress": self.progress and dataclasses.asdict(self.progress),
            "push": [dataclasses.asdict(result) for result in self.push],
            "cluster": [dataclasses.asdict(point) for point in self.cluster],
            "errors": self.errors,
            "table": [dataclasses.asdict(row) for row in rows(self)],
        }


def _servers(points: Iterable[FanoutPoint]) -> list[str]:
    return list(dict.fromkeys(point.server for point in points))


M = TypeVar("M", FanoutPoint, IdleResult, StormResult)


def _jobcast(results: Iterable[M]) -> M | None:
    return next((result for result in results if result.server == "jobcast"), None)


def _cells(results: Iterable[M], text: Callable[[M], str]) -> dict[str, str]:
    return {result.server: text(result) for result in results}


@dataclass(slots=True)
class Row:
    scenario: str
    measure: str
    cells: dict[str, str]
    target: str = ""
    verdict: str = ""  # "met", "MISSED", or "" where no target applies

    def judge(self, target: str, ok: bool) -> None:
        self.target, self.verdict = target, "met" if ok else "MISSED"

    def judge_lateness(self, point: FanoutPoint | None, limit: float) -> None:
        if point is not None:
            ok = point.delivered_all and point.p99_ms <= limit
            self.judge(f"p99 ≤ {limit:g} ms, all delivered", ok)


def _ms(value: float) -> str:
    if math.isnan(value):
        return "—"
    if value < 10:
        return f"{value:.1f} ms"
    if value < 1000:
        return f"{value:.0f} ms"
    return f"{value / 1000:.1f} s"


def _lateness(point: FanoutPoint) -> str:
    text = f"{_ms(point.p50_ms)} / {_ms(point.p99_ms)}"
    if not point.delivered_all:
        text += f" · {point.delivered_fraction:.0%} delivered"
    return text


def _fanout_rows(results: Results) -> list[Row]:
    ladder, big, sizes = results.ladder, results.big, results.sizes
    out: list[Row] = []
    if ladder:
        label = f"fan-out, {sizes.fanout_subscribers:,} subscribers"
        rates = sorted({point.rate for point in ladder})
        for rate in rates:
            points = [point for point in ladder if point.rate == rate]
            row = Row(label, f"p50 / p99 lateness @ {rate:g} ev/s", _cells(points, _lateness))
            if rate == rates[0]:
                limit = TARGETS["fanout_p99_ms"]
                reference = next((p for p in points if p.server == "broadcaster"), None)
                if reference is not None:
                    limit = min(limit, TARGETS["fanout_vs_broadcaster"] * reference.p99_ms)
                row.judge_lateness(_jobcast(points), round(limit, 1))
            out.append(row)
        capacity = {name: results.capacity(name) for name in _servers(ladder)}
        cells = {
            name: "none" if rate is None else f"{rate:g} ev/s" for name, rate in capacity.items()
        }
        row = Row(label, "capacity (all delivered, p99 ≤ 100 ms)", cells)
        if "jobcast" in capacity:
            wanted = TARGETS["capacity_vs_bare"] * (capacity.get("bare ASGI") or 0)
            wanted = min(max(wanted, TARGETS["capacity_floor"]), rates[-1])  # what it can show
            ok = (capacity["jobcast"] or 0) >= wanted
            row.judge(f"≥ {wanted:g} ev/s (2x bare ASGI's, at most the top rate)", ok)
        lowest = [point for point in ladder if point.rate == rates[0]]
        cost = _cells(lowest, lambda p: f"{p.server_cpu_us_per_delivery:.1f} µs")
        busy = _cells(lowest, lambda p: f"{p.server_cpu_share:.0%}")
        out += [
            row,
            Row(label, f"server CPU per delivery @ {rates[0]:g} ev/s", cost),
            Row(label, f"server busy (share of one core) @ {rates[0]:g} ev/s", busy),
        ]
    if big:
        label = f"fan-out, {sizes.big_subscribers:,} subscribers"
        row = Row(label, f"p50 / p99 lateness @ {sizes.big_rate:g} ev/s", _cells(big, _lateness))
        row.judge_lateness(_jobcast(big), TARGETS["big_p99_ms"])
        out.append(row)
    return out


def _idle_rows(results: Results) -> list[Row]:
    if not results.idle:
        return []
    measure = f"memory per open stream ({results.idle[0].connections:,} open)"
    row = Row(
        "idle streams", measure, _cells(results.idle, lambda r: f"{r.kib_per_connection:.1f} KB")
    )
    if jobcast := _jobcast(results.idle):
        limit = TARGETS["idle_kib"]
        row.judge(f"≤ {limit:g} KB", jobcast.kib_per_connection <= limit)
    return [row]


def _storm_rows(results: Results) -> list[Row]:
    storm = results.storm
    if not storm:
        return []
    label = f"reconnect storm, {storm[0].clients:,} clients @ {storm[0].rate:g} ev/s"
    settle = Row(label, "all live again after", _cells(storm, _settle))
    lost = Row(label, "events lost", _cells(storm, lambda r: f"{r.lost:,}"))
    duplicated = Row(label, "events duplicated", _cells(storm, lambda r: f"{r.duplicated:,}"))
    if jobcast := _jobcast(storm):
        limit = TARGETS["storm_settle_s"]
        settle.judge(f"< {limit:g} s", jobcast.settled and jobcast.settle_s < limit)
        lost.judge("0", jobcast.lost == 0 and jobcast.complete == jobcast.clients)
        duplicated.judge("0", jobcast.duplicated == 0)
    return [settle, lost, duplicated]


def _settle(result: StormResult) -> str:
    return f"{result.settle_s:.2f} s" if result.settled else f"{result.live}/{result.clients} live"


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
    for column, result in (("recipe", recipe), ("jobcast", process)):
        if result is not None:
            idle.cells[column] = _ms(result.idle.p99_ms)
            load.cells[column] = _ms(result.load.p99_ms)
    if thread is not None:
        threads.cells["jobcast"] = _ms(thread.load.p99_ms)
    if recipe is not None and process is not None:
        ratio = recipe.load.p99_ms / process.load.p99_ms
        target = f"≥ {TARGETS['cpu_ratio']:g}x better than the recipe (here {ratio:.0f}x)"
        load.judge(target, ratio >= TARGETS["cpu_ratio"])
    return [idle, load, threads]


def _progress_rows(results: Results) -> list[Row]:
    if (cost := results.progress) is None:
        return []
    out: list[Row] = []
    for measure, ours, tqdm, ratio, limit in (
        ("ctx.advance() vs tqdm.update()", cost.advance_ns, cost.tqdm_update_ns,
         cost.advance_ratio, TARGETS["advance_ratio"]),
        ("ctx.track() item vs tqdm iterator item", cost.track_ns, cost.tqdm_iter_ns,
         cost.track_ratio, TARGETS["track_ratio"]),
    ):  # fmt: skip
        cells = {"jobcast": f"{ours:.0f} ns", "tqdm": f"{tqdm:.0f} ns"}
        row = Row("progress cost", f"ns per {measure}", cells)
        row.judge(f"≤ {limit:g}x tqdm (here {ratio:.2f}x)", ratio <= limit)
        out.append(row)
    return out


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
            setup += f" ({point.subscribers // CLUSTER_API_PROCESSES:,} each)"
        late = Row(label, f"p50 / p99 lateness, {setup}", {"jobcast": _lateness(point)})
        ids = f"{point.lost:,} / {point.duplicated:,}" if point.checked else "—"
        if point.resets:
            ids += f" · {point.resets:,} resets"
        loss = Row(label, f"ids lost / duplicated, {setup}", {"jobcast": ids})
        server = f"{CLUSTER_API_PROCESSES} APIs together" if clustered else "server"
        busy = ", ".join(
            [f"{server} {point.server_cpu_share:.0%}"]
            + [f"{name.removeprefix('jobcast ')} {share:.0%}"
               for name, share in point.other_cpu_share.items()]
        )  # fmt: skip
        cpu = Row(label, f"CPU, share of one core, {setup}", {"jobcast": busy})
        if clustered:
            one = next((p for p in results.cluster if p.server != CLUSTER_NAME), None)
            if one is not None:
                limit = TARGETS["cluster_vs_one"] * one.p99_ms
                ok = point.delivered_all and point.p99_ms <= limit
                late.judge(f"p99 ≤ one process's ({_ms(one.p99_ms)}), all delivered", ok)
            exact = point.lost == point.duplicated == point.resets == 0
            loss.judge("0 / 0", point.checked and point.delivered_all and exact)
        out += [late, loss, cpu]
    return out


def rows(results: Results) -> list[Row]:
    """Every scenario's rows, in table order."""
    sections = (
        _fanout_rows, _idle_rows, _storm_rows, _cpu_rows, _progress_rows, _push_rows,
        _cluster_rows,
    )  # fmt: skip
    return [row for section in sections for row in section(results)]


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
        padded = (cell.ljust(width) for cell, width in zip(cells, widths, strict=True))
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join("-" * (width + 2) for width in widths) + "|"
    return "\n".join([line(header), rule, *(line(cells) for cells in body)])


def write_json(results: Results, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results.to_json(), indent=2, allow_nan=True) + "\n")


_COLORS = {"jobcast": "#1f77b4", "ctx": "#1f77b4", "tutorial": "#d62728", "bare": "#7f7f7f",
           "broadcaster": "#9467bd",
           "recipe": "#ff7f0e", "tqdm": "#2ca02c"}  # fmt: skip


def _color(label: str) -> str:
    return _COLORS.get(label.split()[0].split(".")[0], "black")


def _target_line(ax: Any, value: float, color: str = "grey") -> None:
    ax.axhline(value, color=color, lw=0.8, ls=":")


class _Bars(NamedTuple):
    values: dict[str, float]  # by label
    title: str
    unit: str
    log: bool = False
    target: float | None = None


def _draw(ax: Any, bars: _Bars) -> None:
    labels, values = list(bars.values), list(bars.values.values())
    ax.bar(range(len(values)), values, color=[_color(label) for label in labels])
    ax.set_xticks(range(len(values)), labels, rotation=15, fontsize=8)
    ax.set_title(bars.title, fontsize=10)
    ax.set_ylabel(bars.unit)
    if bars.log:
        ax.set_yscale("log")
    if bars.target is not None:
        _target_line(ax, bars.target)
    for i, value in enumerate(values):
        if not math.isnan(value):
            text = f"{value:,.0f}" if value >= 100 else f"{value:.3g}"
            ax.annotate(text, (i, value), ha="center", va="bottom", fontsize=8)


def _draw_ladder(ax: Any, results: Results) -> None:
    for name in _servers(results.ladder):
        points = sorted((p for p in results.ladder if p.server == name), key=lambda p: p.rate)
        rates = [p.rate for p in points]
        color = _color(name)
        ax.plot(rates, [p.p99_ms for p in points], "o-", color=color, label=f"{name} p99")
        ax.plot(rates, [p.p50_ms for p in points], ".--", color=color, alpha=0.6)
        lost = [p for p in points if not p.delivered_all]
        if lost:
            ax.plot([p.rate for p in lost], [p.p99_ms for p in lost], "x", color="black",
                    markersize=10, mew=2)  # fmt: skip
    _target_line(ax, TARGETS["capacity_p99_ms"])
    _target_line(ax, TARGETS["fanout_p99_ms"], _color("jobcast"))
    ax.set(xscale="log", yscale="log", xlabel="events/s", ylabel="lateness (ms)")
    rates = sorted({p.rate for p in results.ladder})
    ax.set_xticks(rates, [f"{rate:g}" for rate in rates])
    ax.minorticks_off()
    ax.set_title(
        f"Fan-out, {results.sizes.fanout_subscribers:,} subscribers\n"
        "p99 solid, p50 dashed, x = not all delivered"
    )
    if results.ladder:
        ax.legend(fontsize=8)


def _cluster_bars(points: list[FanoutPoint]) -> _Bars:
    values: dict[str, float] = {}
    for point in points:
        setup = "2 API + Redis" if point.server == CLUSTER_NAME else "1 process"
        notes = f"lost {point.lost:,}, dup {point.duplicated:,}" if point.checked else ""
        if not point.delivered_all:
            notes += f", {point.delivered_fraction:.0%} delivered"
        values[f"jobcast p50\n{setup}\n{notes}"] = point.p50_ms
        values[f"jobcast p99\n{setup}\n{notes}"] = point.p99_ms
    title = "Scale-out through Redis"
    if points:
        title = (
            f"Scale-out, {points[0].subscribers:,} subscribers x {points[0].rate:g} ev/s: lateness"
        )
    return _Bars(values, title, "ms")


def _storm_bars(storms: list[StormResult]) -> _Bars:
    values = {
        f"{r.server}\n{'' if r.settled else f'{r.live}/{r.clients} live, '}"
        f"lost {r.lost:,}, dup {r.duplicated:,}": r.settle_s if r.settled else math.nan
        for r in storms
    }
    title = "Reconnect storm"
    if storms:
        title += f", {storms[0].clients:,} clients: all live again after"
    return _Bars(values, title, "s", target=TARGETS["storm_settle_s"])


def _cpu_bars(cpu: list[CpuResult]) -> _Bars:
    values: dict[str, float] = {}
    for result in cpu:
        if result.server.startswith("recipe"):
            values |= {"recipe idle": result.idle.p99_ms, "recipe loaded": result.load.p99_ms}
            continue
        if result.mode == "process":
            values["jobcast idle"] = result.idle.p99_ms
        values[f"jobcast loaded ({result.mode})"] = result.load.p99_ms
    return _Bars(values, "API GET p99 while 2 CPU-bound jobs run", "ms", log=True)


def _bars(results: Results) -> dict[str, _Bars]:
    """Every bar panel of the chart, by its place in the mosaic."""
    sizes, cost = results.sizes, results.progress
    big = f"Fan-out, {sizes.big_subscribers:,} subscribers x {sizes.big_rate:g} ev/s: p99 lateness"
    push = {
        f"{r.server.split(' ')[0]} {name}": value
        for r in results.push
        for name, value in (("p50", r.p50_ms), ("p99", r.p99_ms))
    }
    progress: dict[str, float] = {}
    if cost is not None:
        progress = {"ctx.advance()": cost.advance_ns, "tqdm.update()": cost.tqdm_update_ns}
        progress |= {"ctx.track() item": cost.track_ns, "tqdm iter item": cost.tqdm_iter_ns}
    return {
        "big": _Bars(
            {p.server: p.p99_ms for p in results.big}, big, "ms", True, TARGETS["big_p99_ms"]
        ),
        "cluster": _cluster_bars(results.cluster),
        "idle": _Bars(
            {r.server: r.kib_per_connection for r in results.idle},
            "Memory per idle stream",
            "KB",
            target=TARGETS["idle_kib"],
        ),
        "storm": _storm_bars(results.storm),
        "cpu": _cpu_bars(results.cpu),
        "push": _Bars(push, "State change seen after: SSE push vs 1 s poll", "ms", log=True),
        "progress": _Bars(progress, "Progress cost per update", "ns"),
    }


def write_chart(results: Results, path: Path) -> bool:
    """Draw the chart to ``path``; False when matplotlib (the ``bench`` extra) is missing."""
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
    _draw_ladder(axes["ladder"], results)
    for name, bars in _bars(results).items():
        _draw(axes[name], bars)
    axes["cluster"].tick_params(axis="x", labelrotation=0, labelsize=7)
    for i, storm in enumerate(results.storm):
        if not storm.settled:
            axes["storm"].annotate("never all\nlive again", (i, 0), ha="center", va="bottom",
                                   fontsize=8)  # fmt: skip
    machine = results.machine
    lines = [
        f"{machine.get('cpu', '?')}, {machine.get('cores', '?')} cores",
        f"Python {machine.get('python', '?')}, uvicorn with uvloop + httptools",
        *results.notes,
    ]
    axes["text"].axis("off")
    wrapped = "\n".join(textwrap.fill(line, 110, subsequent_indent="  ") for line in lines)
    axes["text"].text(0, 1, wrapped, va="top", fontsize=8)
    fig.suptitle("jobcast benchmarks (references measured in the same run)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True
