#!/usr/bin/env python3
"""Plots and tables from `raft-kv bench --json` output (src/bin/raft-kv-bench/scaling.sh).

    python3 src/bin/raft-kv-bench/plot.py docs/perf/scaling.jsonl [--out docs/perf]

Reads one JSON object per line and writes, into --out (default: the input's
directory):

- scaling.svg: write and read throughput against clients (log scale), one
  line per node count and value size, beside the p99 latency of the same
  points;
- growth.svg: for each grow run, ops/s, p99 and max latency, and the
  members' memory and disk over time, with the snapshots marked;
- scaling.md: the same numbers as Markdown tables.

Python's standard library only: it must run on a fresh machine. The SVGs are
written by hand (axes, ticks, labels, legends) and open in any browser.
"""

import argparse
import json
import math
import os
import statistics
import sys
from xml.sax.saxutils import escape

MIB = 1024 * 1024

# Colour-blind-safe palette (Okabe & Ito).
COLOURS = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442"]
SNAPSHOT_COLOUR = "#CC79A7"
FONT = "font-family='DejaVu Sans, Helvetica, Arial, sans-serif'"


# ---------------------------------------------------------------- reading


def read_objects(path):
    """Every JSON object of the file, skipping lines that are not one."""
    objects = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                objects.append(json.loads(line))
            except json.JSONDecodeError as error:
                print(f"plot.py: {path}:{number}: not JSON ({error}), skipped", file=sys.stderr)
    return objects


def point_key(o):
    return (
        o.get("target"),
        o.get("workload"),
        o.get("nodes"),
        o.get("clients"),
        o.get("value_size"),
        o.get("keyspace") if o.get("workload") == "grow" else None,
        o.get("stale"),
    )


def latest_points(objects):
    """The last object for each point: a point measured again replaces the
    earlier one (scaling.sh with APPEND=1)."""
    points = {}
    for o in objects:
        if o.get("workload") in (None, "meta"):
            continue
        points[point_key(o)] = o
    return list(points.values())


# ---------------------------------------------------------------- formatting


def fmt(value, decimals=0):
    if value is None:
        return "-"
    return f"{value:.{decimals}f}"


def size(bytes_):
    """Bytes as MiB (KiB below 1 MiB)."""
    if bytes_ is None:
        return "-"
    if bytes_ < MIB:
        return f"{bytes_ / 1024:.0f} KiB"
    mib = bytes_ / MIB
    return f"{mib:.1f} MiB" if mib < 10 else f"{mib:.0f} MiB"


def value_label(value_size):
    if value_size is None:
        return "?"
    if value_size >= 1024 and value_size % 1024 == 0:
        return f"{value_size // 1024} KiB"
    return f"{value_size} B"


def max_or_none(values):
    values = [v for v in values if v is not None]
    return max(values) if values else None


def median_or_none(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


# ---------------------------------------------------------------- SVG


def nice_step(span, target):
    """A step of 1, 2 or 5 times a power of ten giving about `target` ticks."""
    if span <= 0:
        return 1
    raw = span / max(target, 1)
    power = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        if m * power >= raw:
            return m * power
    return 10 * power


def linear_ticks(low, high, target=5):
    step = nice_step(high - low, target)
    first = math.floor(low / step) * step
    ticks = []
    t = first
    while t <= high + step * 1e-9:
        if t >= low - step * 1e-9:
            ticks.append(round(t, 10))
        t += step
    return ticks


def log_ticks(low, high):
    """Powers of ten in [low, high], with 2 and 5 times them when the range
    spans fewer than three decades."""
    ticks = []
    first, last = math.floor(math.log10(low)), math.ceil(math.log10(high))
    multipliers = (1, 2, 5) if last - first <= 3 else (1,)
    for e in range(first, last + 1):
        for m in multipliers:
            t = m * 10 ** e
            if low * (1 - 1e-9) <= t <= high * (1 + 1e-9):
                ticks.append(t)
    return ticks


def tick_label(t):
    if t == 0:
        return "0"
    if abs(t) >= 1e6:
        return f"{t / 1e6:g}M"
    if abs(t) >= 1e3:
        return f"{t / 1e3:g}k"
    return f"{t:g}"


class Panel:
    """One plot area with axes at (x, y) of the SVG, `w` by `h` pixels
    including its margins for the tick labels and axis titles."""

    def __init__(self, x, y, w, h, title, xlabel, ylabel, xrange, yrange,
                 xlog=False, ylog=False, xticks=None, yticks=None, ylabel_format=tick_label):
        self.left, self.top = x + 70, y + 30
        self.width, self.height = w - 70 - 20, h - 30 - 50
        self.title, self.xlabel, self.ylabel = title, xlabel, ylabel
        self.xlog, self.ylog = xlog, ylog
        self.x0, self.x1 = xrange
        self.y0, self.y1 = yrange
        if xlog:
            self.x0, self.x1 = max(self.x0, 1e-12), max(self.x1, self.x0 * 10)
        if ylog:
            self.y0, self.y1 = max(self.y0, 1e-12), max(self.y1, self.y0 * 10)
        if self.x1 <= self.x0:
            self.x1 = self.x0 + 1
        if self.y1 <= self.y0:
            self.y1 = self.y0 + 1
        self.xticks = xticks if xticks is not None else (
            log_ticks(self.x0, self.x1) if xlog else linear_ticks(self.x0, self.x1))
        self.yticks = yticks if yticks is not None else (
            log_ticks(self.y0, self.y1) if ylog else linear_ticks(self.y0, self.y1))
        self.ylabel_format = ylabel_format
        self.parts = []
        self.legend = []

    def px(self, x):
        if self.xlog:
            f = (math.log10(x) - math.log10(self.x0)) / (math.log10(self.x1) - math.log10(self.x0))
        else:
            f = (x - self.x0) / (self.x1 - self.x0)
        return self.left + f * self.width

    def py(self, y):
        if self.ylog:
            y = max(y, self.y0)
            f = (math.log10(y) - math.log10(self.y0)) / (math.log10(self.y1) - math.log10(self.y0))
        else:
            f = (y - self.y0) / (self.y1 - self.y0)
        return self.top + self.height - f * self.height

    def usable(self, x, y):
        if x is None or y is None:
            return False
        if (self.xlog and x <= 0) or (self.ylog and y <= 0):
            return False
        return True

    def line(self, points, colour, label=None, dash=None, markers=True, width=2):
        pts = [(self.px(x), self.py(y)) for x, y in points if self.usable(x, y)]
        if not pts:
            return
        dash_attr = f" stroke-dasharray='{dash}'" if dash else ""
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
        self.parts.append(
            f"<polyline points='{path}' fill='none' stroke='{colour}' stroke-width='{width}'"
            f" stroke-linejoin='round'{dash_attr}/>")
        if markers:
            for x, y in pts:
                self.parts.append(f"<circle cx='{x:.1f}' cy='{y:.1f}' r='3' fill='{colour}'/>")
        if label:
            self.legend.append((label, colour, dash))

    def vline(self, x, colour, opacity=0.5):
        if not self.usable(x, self.y0):
            return
        px = self.px(x)
        if self.left <= px <= self.left + self.width:
            self.parts.append(
                f"<line x1='{px:.1f}' y1='{self.top}' x2='{px:.1f}' y2='{self.top + self.height}'"
                f" stroke='{colour}' stroke-width='1' opacity='{opacity}'/>")

    def legend_entry(self, label, colour, dash=None):
        self.legend.append((label, colour, dash))

    def svg(self, legend_at="top-left"):
        out = [f"<rect x='{self.left}' y='{self.top}' width='{self.width}' height='{self.height}'"
               f" fill='white' stroke='#444'/>"]
        for t in self.yticks:
            y = self.py(t)
            out.append(f"<line x1='{self.left}' y1='{y:.1f}' x2='{self.left + self.width}' y2='{y:.1f}'"
                       f" stroke='#ddd'/>")
            out.append(f"<text x='{self.left - 6}' y='{y + 4:.1f}' text-anchor='end' font-size='11' {FONT}>"
                       f"{escape(self.ylabel_format(t))}</text>")
        for t in self.xticks:
            x = self.px(t)
            out.append(f"<line x1='{x:.1f}' y1='{self.top}' x2='{x:.1f}' y2='{self.top + self.height}'"
                       f" stroke='#eee'/>")
            out.append(f"<line x1='{x:.1f}' y1='{self.top + self.height}' x2='{x:.1f}'"
                       f" y2='{self.top + self.height + 5}' stroke='#444'/>")
            out.append(f"<text x='{x:.1f}' y='{self.top + self.height + 18}' text-anchor='middle'"
                       f" font-size='11' {FONT}>{escape(tick_label(t))}</text>")
        out.append(f"<text x='{self.left + self.width / 2:.1f}' y='{self.top - 10}' text-anchor='middle'"
                   f" font-size='14' font-weight='bold' {FONT}>{escape(self.title)}</text>")
        out.append(f"<text x='{self.left + self.width / 2:.1f}' y='{self.top + self.height + 38}'"
                   f" text-anchor='middle' font-size='12' {FONT}>{escape(self.xlabel)}</text>")
        cy = self.top + self.height / 2
        out.append(f"<text x='{self.left - 52}' y='{cy:.1f}' text-anchor='middle' font-size='12' {FONT}"
                   f" transform='rotate(-90 {self.left - 52} {cy:.1f})'>{escape(self.ylabel)}</text>")
        out.append(f"<g clip-path='url(#clip{id(self)})'>")
        out.extend(self.parts)
        out.append("</g>")
        out.insert(0, f"<clipPath id='clip{id(self)}'><rect x='{self.left}' y='{self.top}'"
                      f" width='{self.width}' height='{self.height}'/></clipPath>")
        if self.legend:
            rows = len(self.legend)
            longest = max(len(label) for label, _, _ in self.legend)
            lw, lh = 34 + longest * 6.6, 8 + rows * 16
            lx = self.left + 8 if legend_at.endswith("left") else self.left + self.width - lw - 8
            ly = self.top + 8 if legend_at.startswith("top") else self.top + self.height - lh - 8
            out.append(f"<rect x='{lx:.1f}' y='{ly:.1f}' width='{lw:.1f}' height='{lh}' fill='white'"
                       f" fill-opacity='0.85' stroke='#999'/>")
            for i, (label, colour, dash) in enumerate(self.legend):
                y = ly + 12 + i * 16
                dash_attr = f" stroke-dasharray='{dash}'" if dash else ""
                out.append(f"<line x1='{lx + 6:.1f}' y1='{y:.1f}' x2='{lx + 26:.1f}' y2='{y:.1f}'"
                           f" stroke='{colour}' stroke-width='2'{dash_attr}/>")
                out.append(f"<text x='{lx + 30:.1f}' y='{y + 4:.1f}' font-size='11' {FONT}>"
                           f"{escape(label)}</text>")
        return "\n".join(out)


def write_svg(path, width, height, title, panels, notes=()):
    body = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}'"
            f" viewBox='0 0 {width} {height}'>",
            f"<rect width='{width}' height='{height}' fill='white'/>",
            f"<text x='{width / 2}' y='22' text-anchor='middle' font-size='16' font-weight='bold' {FONT}>"
            f"{escape(title)}</text>"]
    for panel, legend_at in panels:
        body.append(panel.svg(legend_at))
    for i, note in enumerate(notes):
        body.append(f"<text x='10' y='{height - 8 - 14 * (len(notes) - 1 - i)}' font-size='11'"
                    f" fill='#555' {FONT}>{escape(note)}</text>")
    body.append("</svg>")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(body) + "\n")


# ---------------------------------------------------------------- scaling


def series_label(o, several_targets):
    workload = "writes" if o["workload"] == "write-throughput" else "reads"
    if o.get("stale"):
        workload = "stale reads"
    label = f"{workload}, {o.get('nodes')} nodes, {value_label(o.get('value_size'))}"
    if several_targets:
        label = f"{o.get('target')} {label}"
    return label


def scaling_series(points):
    """{label: [objects sorted by clients]} for the throughput workloads."""
    throughput = [o for o in points if o["workload"] in ("write-throughput", "read-throughput")]
    several = len({o.get("target") for o in throughput}) > 1
    series = {}
    for o in throughput:
        series.setdefault(series_label(o, several), []).append(o)
    for objects in series.values():
        objects.sort(key=lambda o: o.get("clients") or 0)

    def order(label):
        o = series[label][0]
        return (o.get("target"), o["workload"] != "write-throughput", o.get("nodes") or 0,
                o.get("value_size") or 0)
    return {label: series[label] for label in sorted(series, key=order)}


def plot_scaling(points, path, meta):
    series = scaling_series(points)
    if not series:
        return False
    clients = sorted({o["clients"] for s in series.values() for o in s if o.get("clients")})
    ops = [o.get("ops_per_sec") for s in series.values() for o in s]
    p99 = [o.get("p99_ms") for s in series.values() for o in s if o.get("p99_ms")]
    xr = (min(clients) / 1.5, max(clients) * 1.5)
    # A colour per node count and value size; reads dashed.
    styles = {}
    for s in series.values():
        o = s[0]
        styles.setdefault((o.get("target"), o.get("nodes"), o.get("value_size")), len(styles))
    throughput = Panel(0, 30, 620, 440, "Throughput", "clients (log scale)", "operations per second",
                       xr, (0, (max_or_none(ops) or 1) * 1.1), xlog=True, xticks=clients)
    latency = Panel(620, 30, 620, 440, "p99 latency", "clients (log scale)", "p99 latency, ms (log scale)",
                    xr, (min(p99 or [0.1]) / 1.5, max(p99 or [1]) * 1.5), xlog=True, ylog=True,
                    xticks=clients)
    for label, objects in series.items():
        o = objects[0]
        colour = COLOURS[styles[(o.get("target"), o.get("nodes"), o.get("value_size"))] % len(COLOURS)]
        dash = "6,4" if o["workload"] == "read-throughput" else None
        # One legend, in the latency panel, whose top left is emptiest.
        throughput.line([(p["clients"], p.get("ops_per_sec")) for p in objects], colour, None, dash)
        latency.line([(p["clients"], p.get("p99_ms")) for p in objects], colour, label, dash)
    notes = [meta_note(meta) + "; each point a fresh cluster, closed-loop clients (docs/performance.md)"]
    write_svg(path, 1240, 500, "raft-kv: scaling with nodes, clients and value size",
              [(throughput, "top-left"), (latency, "top-left")], notes)
    return True


# ---------------------------------------------------------------- growth


def grow_runs(points):
    runs = [o for o in points if o["workload"] == "grow" and o.get("timeline")]
    runs.sort(key=lambda o: (o.get("target") or "", o.get("keyspace") or 0))
    return runs


def mid(interval):
    """The middle of one interval of a grow timeline, in seconds."""
    return interval["t"] - (interval.get("seconds") or 0) / 2


def plot_growth(points, path, meta):
    runs = grow_runs(points)
    if not runs:
        return False
    column_w, panel_h = 620, 300
    panels = []
    for c, run in enumerate(runs):
        timeline = run["timeline"]
        x0 = c * column_w
        t_end = max(i["t"] for i in timeline)
        xr = (0, t_end * 1.02)
        keys = run.get("keyspace") or timeline[-1]["keys"]
        name = f"{run.get('target')}: grow to {tick_label(keys)} keys, {run.get('nodes')} nodes, " \
               f"{run.get('clients')} clients, {value_label(run.get('value_size'))}"
        snapshots = [e for e in run.get("snapshots") or [] if not e.get("installed")]
        members = [m["name"] for m in run.get("members") or []]
        first_member = members[0] if members else None
        # Mark the snapshots of one member: the members take theirs at
        # nearly the same moments (every threshold entries of the same log).
        marks = [e["t"] for e in snapshots if e.get("member") == first_member]

        ops = Panel(x0, 30, column_w, panel_h, name, "seconds since the start", "writes per second",
                    xr, (0, (max_or_none(i.get("ops_per_sec") for i in timeline) or 1) * 1.15))
        for t in marks:
            ops.vline(t, SNAPSHOT_COLOUR)
        # A second's writes and latencies are drawn at its middle; the
        # members' memory and disk at the moment they were read, its end.
        ops.line([(mid(i), i.get("ops_per_sec")) for i in timeline], COLOURS[0], "writes/s, each second")
        if marks:
            ops.legend_entry(f"snapshot taken ({first_member}; {len(snapshots)} by all members)",
                             SNAPSHOT_COLOUR)

        lat = [i.get("max_ms") for i in timeline] + [i.get("p99_ms") for i in timeline] + \
              [i.get("p50_ms") for i in timeline]
        lat = [v for v in lat if v]
        latency = Panel(x0, 30 + panel_h, column_w, panel_h, "Latency of the writes each second",
                        "seconds since the start", "ms (log scale)", xr,
                        (min(lat or [0.1]) / 1.5, max(lat or [1]) * 1.5), ylog=True)
        for t in marks:
            latency.vline(t, SNAPSHOT_COLOUR)
        latency.line([(mid(i), i.get("max_ms")) for i in timeline], COLOURS[1], "max", markers=False)
        latency.line([(mid(i), i.get("p99_ms")) for i in timeline], COLOURS[0], "p99", markers=False)
        latency.line([(mid(i), i.get("p50_ms")) for i in timeline], COLOURS[2], "p50", markers=False)

        def largest(field):
            return [(i["t"], max_or_none(i.get(field) or [])) for i in timeline]
        mem = [v for _, v in largest("rss_bytes") + largest("data_bytes") if v is not None]
        memory = Panel(x0, 30 + 2 * panel_h, column_w, panel_h, "Memory and disk (largest member)",
                       "seconds since the start", "MiB", xr, (0, (max(mem or [MIB]) / MIB) * 1.15))
        for t in marks:
            memory.vline(t, SNAPSHOT_COLOUR)
        memory.line([(t, v / MIB) for t, v in largest("rss_bytes") if v is not None], COLOURS[0],
                    "resident memory (VmRSS)", markers=False)
        memory.line([(t, v / MIB) for t, v in largest("data_bytes") if v is not None], COLOURS[2],
                    "data dir (log + snapshot)", markers=False)
        memory.line([(t, v / MIB) for t, v in largest("log_bytes") if v is not None], COLOURS[4],
                    "log file", dash="6,4", markers=False)
        memory.line([(t, v / MIB) for t, v in largest("snapshot_bytes") if v is not None], COLOURS[3],
                    "snapshot file", dash="2,3", markers=False)
        panels += [(ops, "bottom-left"), (latency, "top-left"), (memory, "top-left")]
    notes = [meta_note(meta),
             snapshot_setting(runs[0]) + ";"
             " vertical lines: one member's snapshots"]
    write_svg(path, column_w * len(runs), 30 + 3 * panel_h + 44,
              "raft-kv: writing new keys as the state grows", panels, notes)
    return True


def snapshot_setting(run):
    """The snapshot trigger a run had: bytes of log since 2026-12, entries before."""
    if run.get("snapshot_log_bytes") is not None:
        return f"snapshot after {run['snapshot_log_bytes'] / MIB:g} MiB of log or the last snapshot's size"
    return f"snapshot threshold {run.get('snapshot_threshold')} entries"


# ---------------------------------------------------------------- markdown


def meta_note(meta):
    if not meta:
        return "raft-kv bench"
    quick = " QUICK mode (tiny counts)," if meta.get("quick") else ""
    return (f"raft-kv {meta.get('commit', '?')},{quick} {meta.get('date', '?')}, "
            f"{meta.get('cores', '?')} cores, load before {meta.get('loadavg', '?')}")


def markdown_table(header, rows, right_from=1):
    align = ["---" if i < right_from else "---:" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def at_keys(timeline, keys):
    """The first second by the end of which `keys` keys were written."""
    for i in timeline:
        if i.get("keys", 0) >= keys:
            return i
    return None


def growth_markdown(runs):
    out = []
    rows = []
    for run in runs:
        timeline = run["timeline"]
        taken = [e for e in run.get("snapshots") or [] if not e.get("installed")]
        installed = len(run.get("snapshots") or []) - len(taken)
        members = run.get("members") or []
        writes = [e.get("write_ms") for e in taken]
        rewrites = [e.get("rewrite_ms") for e in taken]
        end = timeline[-1] if timeline else {}
        per_member = len(taken) / len(members) if members else None
        rss_at = []
        for k in (100_000, 1_000_000):
            i = at_keys(timeline, k)
            rss_at.append(size(max_or_none(i.get("rss_bytes") or [])) if i else "-")
        rows.append([
            f"{run.get('target')} {tick_label(run.get('keyspace') or 0)}",
            fmt(run.get("seconds"), 1),
            fmt(run.get("ops_per_sec")),
            fmt(run.get("p99_ms"), 2),
            fmt(run.get("max_ms"), 1),
            (f"{len(taken)} ({per_member:g} per member)" if per_member is not None else str(len(taken)))
            + (f", +{installed} installed" if installed else ""),
            f"{fmt(median_or_none(writes), 1)} / {fmt(max_or_none(writes), 1)}",
            f"{fmt(median_or_none(rewrites), 1)} / {fmt(max_or_none(rewrites), 1)}",
            size(max_or_none(e.get("file_bytes") for e in taken)),
            rss_at[0],
            rss_at[1],
            f"{size(max_or_none(end.get('data_bytes') or []))} / "
            f"{size(max_or_none(max_or_none(i.get('data_bytes') or []) for i in timeline))}",
            size(max_or_none(max_or_none(i.get("log_bytes") or []) for i in timeline)),
            size(run.get("bench_rss_max_bytes")),
        ])
    out.append(markdown_table(
        ["run (keys)", "seconds", "writes/s", "p99 ms", "max ms", "snapshots",
         "snapshot write ms, median / max", "log rewrite ms, median / max", "largest snapshot",
         "server RSS at 100k keys", "server RSS at 1M keys", "data dir at the end / max seen",
         "log file, max seen", "bench RSS"], rows))
    out.append("\nServer RSS, data dir and log: the largest member's. The snapshot times are "
               "the storage's (`snapshot file written: ... in X ms, log rewritten in Y ms`), "
               "over every member's snapshots.\n")
    for run in runs:
        timeline = run["timeline"]
        if not timeline:
            continue
        keyspace = run.get("keyspace") or timeline[-1]["keys"]
        out.append(f"\n#### {run.get('target')}: grow to {keyspace} keys, as the data grows\n\n")
        rows = []
        snapshots = [e for e in run.get("snapshots") or [] if not e.get("installed")]
        # One row per tenth of the keys, the seconds in it pooled.
        tenths = {}
        for i in timeline:
            tenth = min(10, max(1, math.ceil(i.get("keys", 0) * 10 / max(keyspace, 1))))
            tenths.setdefault(tenth, []).append(i)
        start = 0.0
        for tenth in sorted(tenths):
            chunk = tenths[tenth]
            seconds = sum(i.get("seconds") or 0 for i in chunk)
            ops = sum(i.get("ops") or 0 for i in chunk)
            last = chunk[-1]
            in_chunk = [e for e in snapshots if start < e["t"] <= last["t"]
                        or (tenth == max(tenths) and e["t"] > last["t"])]
            rows.append([
                last["keys"],
                f"{start:.1f}-{last['t']:.1f}",
                fmt(ops / seconds if seconds else None),
                fmt(max_or_none(i.get("p99_ms") for i in chunk), 2),
                fmt(max_or_none(i.get("max_ms") for i in chunk), 1),
                len(in_chunk),
                fmt(max_or_none(e.get("write_ms") for e in in_chunk), 1),
                size(max_or_none(last.get("rss_bytes") or [])),
                size(max_or_none(last.get("data_bytes") or [])),
                size(max_or_none(last.get("log_bytes") or [])),
            ])
            start = last["t"]
        out.append(markdown_table(
            ["keys", "seconds", "writes/s", "worst p99 of a second, ms", "max ms", "snapshots",
             "slowest snapshot write ms", "server RSS", "data dir", "log"], rows))
    return "".join(out)


def scaling_markdown(points):
    rows = []
    throughput = [o for o in points if o["workload"] in ("write-throughput", "read-throughput")]
    throughput.sort(key=lambda o: (o.get("target") or "", o["workload"] != "write-throughput",
                                   o.get("nodes") or 0, o.get("value_size") or 0, o.get("clients") or 0))
    for o in throughput:
        rows.append([
            o.get("target"),
            o["workload"] + (" (stale)" if o.get("stale") else ""),
            o.get("nodes"),
            o.get("clients"),
            value_label(o.get("value_size")),
            o.get("ops"),
            o.get("errors"),
            fmt(o.get("ops_per_sec")),
            fmt(o.get("p50_ms"), 2),
            fmt(o.get("p99_ms"), 2),
            fmt(o.get("server_cpu_pct")) + "%" if o.get("server_cpu_pct") is not None else "-",
            size(o.get("server_rss_max_bytes")),
            size(o.get("data_max_bytes")),
        ])
    if not rows:
        return ""
    return markdown_table(["system", "workload", "nodes", "clients", "value", "ops", "errors", "ops/s",
                           "p50 ms", "p99 ms", "server CPU", "server RSS", "data dir"], rows, right_from=2)


def write_markdown(points, path, metas, svgs):
    scaling_meta, growth_meta = metas
    note = meta_note(scaling_meta)
    if growth_meta is not scaling_meta:
        note = f"Scaling: {note}. Growth: {meta_note(growth_meta)}"
    out = ["<!-- Generated by src/bin/raft-kv-bench/plot.py from scaling.jsonl; do not edit by hand. -->\n",
           "# raft-kv scaling and memory\n\n",
           f"{note}. Made by `make bench-scaling` (src/bin/raft-kv-bench/scaling.sh); "
           "how to read it: docs/performance.md.\n\n"]
    if any(m and m.get("quick") for m in metas):
        out.append("**QUICK mode: tiny counts, for trying the tooling only; these numbers mean "
                   "nothing.**\n\n")
    table = scaling_markdown(points)
    if table:
        out.append("## Throughput and latency by nodes, clients and value size\n\n")
        if "scaling.svg" in svgs:
            out.append("![throughput and p99 latency against clients](scaling.svg)\n\n")
        out.append(table)
        out.append("\nserver CPU: the members together, percent of one core; server RSS and data dir: "
                   "the largest member's, after the workload.\n\n")
    runs = grow_runs(points)
    if runs:
        out.append("## Growth: writing new keys as the state grows\n\n")
        if "growth.svg" in svgs:
            out.append("![ops/s, latency and memory over time as the keys grow](growth.svg)\n\n")
        out.append(growth_markdown(runs))
    with open(path, "w", encoding="utf-8") as f:
        f.write("".join(out))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("jsonl", help="raft-kv bench --json output, one object per line")
    parser.add_argument("--out", help="directory for scaling.svg, growth.svg and scaling.md "
                                      "(default: the input's directory)")
    args = parser.parse_args(argv)
    out = args.out or os.path.dirname(os.path.abspath(args.jsonl))
    os.makedirs(out, exist_ok=True)
    objects = read_objects(args.jsonl)
    # Each point belongs to the run whose meta line precedes it: with
    # APPEND=1 the file holds several runs, perhaps of different commits.
    meta = None
    point_meta = {}
    for o in objects:
        if o.get("workload") == "meta":
            meta = o
        else:
            point_meta[id(o)] = meta
    points = latest_points(objects)
    if not points:
        print(f"plot.py: no bench results in {args.jsonl}", file=sys.stderr)
        return 1

    def latest_meta(grow):
        found = [point_meta.get(id(p)) for p in points if (p.get("workload") == "grow") == grow]
        found = [m for m in found if m]
        return found[-1] if found else meta

    scaling_meta, growth_meta = latest_meta(False), latest_meta(True)
    written = []
    if plot_scaling(points, os.path.join(out, "scaling.svg"), scaling_meta):
        written.append("scaling.svg")
    if plot_growth(points, os.path.join(out, "growth.svg"), growth_meta):
        written.append("growth.svg")
    write_markdown(points, os.path.join(out, "scaling.md"), (scaling_meta, growth_meta), written)
    written.append("scaling.md")
    print(f"plot.py: wrote {', '.join(os.path.join(out, w) for w in written)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
