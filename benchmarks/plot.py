"""Draw the README's chart, and print its table, from the JSON that ``python -m benchmarks`` keeps.

    python benchmarks/plot.py [--results benchmarks/results] [--png docs/benchmarks.png] [--table]

The chart (``--png``, default ``benchmarks/results/benchmarks.png``) has one panel per benchmark that has results;
``--table`` prints the README's Markdown table (each figure, its baseline from the same run, the target, and the
command that produced it) on stdout. Needs matplotlib: ``pip install -e '.[bench]'``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def load(results: Path) -> dict[str, dict[str, Any]]:
    return {path.stem: json.loads(path.read_text()) for path in sorted(results.glob("*.json"))}


def _ok(met: bool | None) -> str:
    return "-" if met is None else ("yes" if met else "**no**")


def table(docs: dict[str, dict[str, Any]]) -> str:
    """The README's table: one row per figure."""
    rows: list[tuple[str, str, str, str, str, str]] = []

    def add(figure: str, value: str, baseline: str, target: str, met: bool | None, name: str) -> None:
        rows.append((figure, value, baseline, target, _ok(met), f"`{docs[name].get('command', name)}`"))

    if "ceiling" in docs:
        d = docs["ceiling"]
        raw = d["rows"].get("raw", {}).get("events_per_s")
        for row, key in (("memory", "memory_vs_raw"), ("redis", "redis_vs_memory")):
            fig = d.get("figures", {}).get(key)
            if fig:
                rate = d["rows"][row]["events_per_s"]
                base = f"raw StreamResponse {raw:,.0f} ev/s" if row == "memory" else "memory row"
                target = f">= {fig['target']:.0%} of {'raw' if row == 'memory' else 'memory'}"
                add(f"ceiling, {row}", f"{rate:,.0f} ev/s ({fig['value']:.0%})", base, target, fig["met"], "ceiling")
    if "first_event" in docs:
        d = docs["first_event"]
        base = d["rows"].get("baseline")
        for row in ("memory", "redis"):
            r = d["rows"].get(row)
            if r:
                baseline = f"aiohttp-sse {base['median_ms']:.2f} ms" if base else "-"
                value = f"{r['median_ms']:.2f} ms (p99 {r['p99_ms']:.2f})"
                add(f"first event, {row}", value, baseline, "median <= 2 ms", r["met"], "first_event")
    for name in ("fleet", "fleet_gc"):
        if name not in docs:
            continue
        d = docs[name]
        capacity = d.get("capacity", {})
        base = capacity.get("baseline", {}).get("streams")
        tuned = f", gc.set_threshold{tuple(d['gc_threshold'])}" if d.get("gc_threshold") else ""
        for row in ("memory", "redis"):
            c = capacity.get(row)
            if c:
                sizes = "/".join(str(s) for s in c["sizes_run"])
                value = f"{c['streams']} streams (of {sizes})"
                figure = f"fleet capacity, {row}{tuned}"
                add(figure, value, f"aiohttp-sse {base}", "= aiohttp-sse", c.get("met"), name)
    if "readers" in docs:
        d = docs["readers"]
        for row, r in d["rows"].items():
            runs = r["runs"]
            rate = f"{runs[-1]['delivered_per_s']:,.0f} ev/s delivered at R={runs[-1]['readers']:,}"
            if "commands_growth" in r:
                value = f"{runs[-1]['commands_per_event']:.2f} cmds/event ({r['commands_growth']:.2f}x); {rate}"
                baseline = f"{runs[0]['commands_per_event']:.2f} at R=1"
                add(f"readers, {row}", value, baseline, "flat (<= 1.1x)", r["met"], "readers")
            else:
                add(f"readers, {row}", rate, f"{runs[0]['delivered_per_s']:,.0f} at R=1", "-", None, "readers")
    if "resume_depth" in docs:
        d = docs["resume_depth"]
        for row, r in d["rows"].items():
            value = f"{r['deep_ms']:.2f} ms at {d['deep']:,} ({r['ratio']:.2f}x)"
            add(
                f"resume depth, {row}",
                value,
                f"{r['shallow_ms']:.2f} ms at {d['shallow']}",
                "<= 2x",
                r["met"],
                "resume_depth",
            )
    if "idle" in docs:
        d = docs["idle"]
        base = d["rows"].get("baseline")
        for name, r in d["rows"].items():
            if name != "baseline":
                baseline = f"aiohttp-sse {base['kb_per_connection']:.1f} KB" if base else "-"
                value = f"{r['kb_per_connection']:.1f} KB/conn, {r['connected']:,} conns"
                add(f"idle, {name}", value, baseline, "<= 20 KB", r["met"], "idle")
    if "scale_out" in docs:
        d = docs["scale_out"]
        for r in d["results"]:
            value = (
                f"Redis {r['redis_cpu_pct_per_process']:.1f}% CPU and {r['commands_per_s_per_process']:,.0f} cmds/s "
                f"per process at P={r['processes']}: feeds {r['feeds']}"
            )
            streams = f"{r['streams_per_process']} streams x {d['rate']:g} tok/s per process"
            met = r["feeds"] >= d["target_feeds"] if r["redis"] == "single" and r["feeds"] else None
            add(f"scale-out, {r['redis']}", value, streams, f">= {d['target_feeds']} processes", met, "scale_out")
    if "storm" in docs:
        d = docs["storm"]
        for r in d["results"]:
            value = (
                f"reconnect p50/p99/max {r['reconnect_p50_s']:.2f}/{r['reconnect_p99_s']:.2f}/"
                f"{r['reconnect_max_s']:.2f} s, {r['duplicates']} dups, {r['gaps']} gaps, B p99 "
                f"{r['during']['p99_ms']:,.0f} ms in the storm, {r['after']['p99_ms']:,.0f} ms after, "
                f"{r['commands_per_reader']:.1f} cmds/reader, ends {r['ends']}"
            )
            baseline = f"steady p99 {r['steady']['p99_ms']:,.0f} ms on A"
            goal = {1000: 1.0, 2000: 2.0}.get(r["streams"])
            target = f"p99 <= {goal:g} s and issue 26's other goals" if goal else "-"
            met = None if goal is None else r["verdict"] == "met"
            add(f"reconnect storm, S={r['streams']:,}", value, baseline, target, met, "storm")
    lines = ["| figure | measured | baseline (same run) | target | met | command |", "|---|---|---|---|---|---|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    if "alternatives" in docs:
        d = docs["alternatives"]
        lines += [
            "",
            f"Against the alternatives (`{d.get('command', 'alternatives')}`: one stream of {d['events']:,} tokens; "
            f"first event: median of {d['samples']} new streams; a resume after 30 of 100 paced tokens):",
            "",
            "| library | events/s | first event (p99) | resume mid-stream | resume after the end |",
            "|---|---|---|---|---|",
        ]
        for row, r in d["rows"].items():
            first = f"{r['first_event_ms']:.2f} ms ({r['first_event_p99_ms']:.2f} ms)"
            resumes = f"{r['resume_mid']['detail']} | {r['resume_after_end']['detail']}"
            lines.append(f"| {d['labels'][row]} | {r['events_per_s']:,.0f} | {first} | {resumes} |")
    machines = {json.dumps(d.get("machine", {}), sort_keys=True) for d in docs.values()}
    described = [json.loads(m) for m in machines]
    if described:
        first = described[0]
        dates = sorted(m.get("date", "") for m in described)
        loads = sorted(m.get("load", [0])[0] for m in described)
        lines.append("")
        lines.append(
            f"Measured on {first.get('cpu')} ({first.get('cpus')} CPUs, shared), Python {first.get('python')}, "
            f"{dates[0]} to {dates[-1]}; 1-minute load average {loads[0]:.1f} to {loads[-1]:.1f} at the ends of runs."
        )
    return "\n".join(lines)


def chart(docs: dict[str, dict[str, Any]], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    panels = [
        name for name in ("ceiling", "first_event", "fleet", "alternatives", "idle", "resume_depth") if name in docs
    ]
    columns = 3
    lines = (len(panels) + columns - 1) // columns
    figure, axes = plt.subplots(lines, columns, figsize=(15, 4.2 * lines), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    for ax, name in zip(axes.flat, panels, strict=False):
        d = docs[name]
        if name == "ceiling":
            labels = list(d["rows"])
            values = [d["rows"][row]["events_per_s"] / 1000 for row in labels]
            ax.bar(labels, values, color=["#999999", "#3b7dd8", "#d8553b"][: len(labels)])
            ax.set_title("One stream end to end (k events/s)")
        elif name == "first_event":
            labels = list(d["rows"])
            medians = [d["rows"][row]["median_ms"] for row in labels]
            p99 = [d["rows"][row]["p99_ms"] for row in labels]
            positions = range(len(labels))
            ax.bar([p - 0.2 for p in positions], medians, 0.4, label="median")
            ax.bar([p + 0.2 for p in positions], p99, 0.4, label="p99")
            ax.axhline(2.0, color="black", linestyle=":", linewidth=1, label="2 ms target")
            ax.set_xticks(list(positions), labels)
            ax.set_title("First event after the request (ms)")
            ax.legend()
        elif name == "fleet":
            colors = {"baseline": "C0", "memory": "C1", "redis": "C2"}
            tuned = docs.get("fleet_gc")  # the same rows with the garbage collector tuned: dashed
            for doc, style, suffix in ((d, "-", ""), (tuned, "--", ", GC tuned")):
                if doc is None:
                    continue
                for row in dict.fromkeys(r["row"] for r in doc["results"]):
                    points = sorted((r["streams"], r["p99_ms"]) for r in doc["results"] if r["row"] == row)
                    xs, ys = [p[0] for p in points], [p[1] for p in points]
                    ax.plot(xs, ys, style, marker="o", color=colors.get(row), label=row + suffix)
            ax.axhline(50, color="black", linestyle=":", linewidth=1, label="50 ms")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("concurrent streams, 20 tokens/s each")
            ax.set_title("Fleet: p99 yield-to-client latency (ms)")
            ax.legend()
        elif name == "alternatives":
            labels = [d["labels"][row] for row in d["rows"]]
            values = [r["events_per_s"] for r in d["rows"].values()]
            colors = ["#3b7dd8" if row in ("memory", "redis") else "#999999" for row in d["rows"]]
            ax.barh(labels, values, color=colors)
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value / 1000:g}k"))
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.invert_yaxis()
            ax.set_title("Against the alternatives: events/s, one stream")
        elif name == "idle":
            labels = list(d["rows"])
            values = [d["rows"][row]["kb_per_connection"] for row in labels]
            ax.bar(labels, values, color="#3b7dd8")
            ax.axhline(20, color="black", linestyle=":", linewidth=1, label="20 KB target")
            ax.set_title(f"Idle: KB RSS per connection ({d['streams']:,})")
            ax.legend()
        elif name == "resume_depth":
            labels = list(d["rows"])
            positions = range(len(labels))
            ax.bar([p - 0.2 for p in positions], [d["rows"][r]["shallow_ms"] for r in labels], 0.4, label="at 10")
            deep = [d["rows"][r]["deep_ms"] for r in labels]
            ax.bar([p + 0.2 for p in positions], deep, 0.4, label=f"at {d['deep']:,}")
            ax.set_xticks(list(positions), labels)
            ax.set_title(f"Resume: first resumed event (ms), of {d['events']:,}")
            ax.legend()
        ax.grid(axis="y", alpha=0.3)
    dates = sorted(doc.get("machine", {}).get("date", "") for doc in docs.values())
    cpu = next(iter(docs.values())).get("machine", {}).get("cpu", "")
    figure.suptitle(f"resumable-sse benchmarks: {cpu}, {dates[0]} to {dates[-1]}", fontsize=11)
    figure.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(png, dpi=80)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", default=str(HERE / "results"))
    parser.add_argument("--png", default=str(HERE / "results" / "benchmarks.png"))
    parser.add_argument("--table", action="store_true", help="print the README's Markdown table")
    args = parser.parse_args()
    docs = load(Path(args.results))
    if not docs:
        raise SystemExit(f"no results in {args.results}: run python -m benchmarks first")
    chart(docs, Path(args.png))
    if args.table:
        print(table(docs))


if __name__ == "__main__":
    main()
