"""Turn a pytest-benchmark JSON file into a markdown table with device, versions and date.

usage: python benchmarks/report.py RESULTS.json [MORE.json ...] [--out FOLDER]
Several files (e.g. one per stage of the GPU check) are merged into one report. Writes
FOLDER/<device>-<date>.md and a slim FOLDER/<device>-<date>.json (each benchmark's summary
statistics and facts, without the per-round timings of pytest-benchmark's raw file); FOLDER
defaults to the first JSON file's folder.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

SUMMARY_STATS = ("min", "max", "mean", "stddev", "median", "iqr", "rounds", "iterations")


def markdown(data: dict) -> str:
    machine = data["machine_info"]
    lines = [
        f"# Benchmarks: {machine.get('device', 'unknown device')}",
        "",
        f"- date: {data['datetime']}",
        f"- torch {machine.get('torch')} (CUDA {machine.get('cuda') or 'none'}), "
        f"python {machine.get('python_version')}",
        f"- commit: {data.get('commit_info', {}).get('id', 'unknown')}",
        "- times are medians over the benchmark's rounds",
    ]
    rows = []
    for bench in sorted(data["benchmarks"], key=lambda b: (b["group"] or "", b["name"])):
        info, stats = bench["extra_info"], bench["stats"]
        if "provider" in info or "variant" in info:
            continue  # in the tables below
        median = stats["median"]
        rows.append(
            f"| {info.get('kind', bench['name'])} | {info.get('preset', '')} | "
            f"{info.get('backend', '')} | {info.get('batch', '')} | {median * 1e3:.1f} | "
            f"{info.get('batch', 0) / median:.1f} | {stats['rounds']} |"
        )
    if rows:
        lines += ["", "## end-to-end steps", "",
                  "| benchmark | preset | backend | batch | median ms | images/s | rounds |",
                  "|---|---|---|---:|---:|---:|---:|", *rows]  # fmt: skip
    lines += provider_tables(data["benchmarks"])
    lines += step_tables(data["benchmarks"])
    lines += loop_tables(data["benchmarks"])
    lines += matched_tables(data["benchmarks"])
    lines += training_tables(data["benchmarks"])
    lines += ["", "```", machine.get("patronus_info", ""), "```", ""]
    threads = machine.get("threads")
    if threads and "CPU" in machine.get("device", ""):  # every table says its thread count
        suffix = f" [{threads} thread{'s' if threads > 1 else ''}]"
        lines = [line + suffix if line.startswith("## ") else line for line in lines]
    return "\n".join(lines)


def provider_tables(benchmarks: list[dict]) -> list[str]:
    """Per (op, shape): providers side by side, patronus's speed-up over each, peak memory."""
    cells: dict[tuple[str, str, str], dict[str, dict[str, dict]]] = {}
    for bench in benchmarks:
        info = bench["extra_info"]
        if info.get("kind") != "min distance":
            continue
        key = (info["kind"], info["shape"], info.get("dtype", ""))
        cells.setdefault(key, {}).setdefault(info["provider"], {})[info["mode"]] = bench
    lines = []
    for (kind, shape, _), providers in sorted(cells.items()):
        ours = providers.get("patronus", {})
        any_bench = next(iter(next(iter(providers.values())).values()))
        info = any_bench["extra_info"]
        lines += [
            "",
            f"## {kind}: {shape} ({info.get('dims', '')}, {info.get('dtype', '')})",
            "",
            "| provider | forward ms | backward ms | fwd+bwd ms | patronus speed-up "
            "(fwd / bwd / fwd+bwd) | peak MB (fwd+bwd) | saved for backward MB |",
            "|---|---:|---:|---:|---|---:|---:|",
        ]
        for provider, modes in providers.items():
            medians = {mode: modes[mode]["stats"]["median"] for mode in modes}
            speedups = [
                f"{medians[m] / ours[m]['stats']['median']:.2f}x"
                if m in ours and m in medians
                else "-"
                for m in ("forward", "backward", "forward+backward")
            ]
            extra = next(iter(modes.values()))["extra_info"]
            ours_extra = next(iter(ours.values()))["extra_info"] if ours else {}
            peak = with_ratio(extra.get("peak_mb"), ours_extra.get("peak_mb"))
            saved = with_ratio(extra.get("activation_mb"), ours_extra.get("activation_mb"))
            row = " | ".join(
                f"{medians[m] * 1e3:.2f}" if m in medians else "-"
                for m in ("forward", "backward", "forward+backward")
            )
            lines.append(f"| {provider} | {row} | {' / '.join(speedups)} | {peak} | {saved} |")
        if "forward" in ours and "product_flops" in ours["forward"]["extra_info"]:
            rate = (
                ours["forward"]["extra_info"]["product_flops"] / ours["forward"]["stats"]["median"]
            )
            lines += [
                "",
                f"patronus forward: {rate / 1e12:.2f} TFLOP/s of patch-prototype products",
            ]
    return lines


def step_tables(benchmarks: list[dict]) -> list[str]:
    """Scheduler step per solver and shape: time, GB/s, fraction of the copy's bandwidth,
    speed-ups."""
    shapes: dict[tuple[str, str], dict[str, dict]] = {}
    for bench in benchmarks:
        info = bench["extra_info"]
        if info.get("kind") == "scheduler step":
            key = (info.get("solver", "DDIM"), info["shape"])
            shapes.setdefault(key, {})[info["provider"]] = bench
    lines = []
    for (solver, shape), providers in sorted(shapes.items()):
        rate = {
            p: b["extra_info"]["bytes"] / b["stats"]["median"] / 1e9 for p, b in providers.items()
        }
        ours = providers.get("patronus")
        lines += ["", f"## scheduler step ({solver}, float32): {shape}", "",
                  "| provider | median ms | GB/s | of copy bandwidth | patronus speed-up |",
                  "|---|---:|---:|---:|---:|"]  # fmt: skip
        for provider, bench in providers.items():
            median = bench["stats"]["median"]
            copy = f"{rate[provider] / rate['copy']:.0%}" if "copy" in rate else "-"
            speedup = f"{median / ours['stats']['median']:.2f}x" if ours else "-"
            lines.append(
                f"| {provider} | {median * 1e3:.3f} | {rate[provider]:.1f} | {copy} | {speedup} |"
            )
    return lines


def matched_tables(benchmarks: list[dict]) -> list[str]:
    """Sampling at matched quality: images/s of each sampler against the original pipeline."""
    rows = {b["extra_info"]["provider"]: b for b in benchmarks
            if b["extra_info"].get("kind") == "matched sampling"}  # fmt: skip
    if not rows:
        return []
    original = rows.get("original-ddim-1000")
    lines = ["", "## sampling at matched quality (fmnist-cpu, the shipped architecture)", "",
             "| provider | sampler | network calls | batch | s per batch | images/s | "
             "vs the original pipeline |", "|---|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for provider, bench in rows.items():
        info, median = bench["extra_info"], bench["stats"]["median"]
        ratio = f"{original['stats']['median'] / median:.1f}x" if original else "-"
        lines.append(
            f"| {provider} | {info['sampler']} | {info['calls']} | {info['batch']} | "
            f"{median:.2f} | {info['batch'] / median:.1f} | {ratio} |"
        )
    return lines


def loop_tables(benchmarks: list[dict]) -> list[str]:
    """Whole sampling loops: images/s, speed-ups, and the share of time outside the network (the
    loop against its network calls alone, with or without a CUDA graph like the loop)."""
    loops: dict[str, dict[str, dict]] = {}
    for bench in benchmarks:
        info = bench["extra_info"]
        if info.get("kind") == "sampling loop":
            loops.setdefault(info["loop"], {})[info["provider"]] = bench
    lines = []
    for loop, providers in sorted(loops.items()):
        ours = providers.get("patronus")
        lines += ["", f"## sampling loop: {loop} (paper Fashion-MNIST model)", "",
                  "| provider | batch | CUDA graph | s per loop | images/s | patronus speed-up "
                  "| outside the network |",
                  "|---|---:|---|---:|---:|---:|---:|"]  # fmt: skip
        for provider, bench in providers.items():
            info, median = bench["extra_info"], bench["stats"]["median"]
            speedup = f"{median / ours['stats']['median']:.2f}x" if ours else "-"
            network = providers.get("network-graph" if info["cuda_graph"] else "network")
            outside = "-"
            if network is not None and not provider.startswith("network"):
                outside = f"{1 - network['stats']['median'] / median:.1%}"
            lines.append(
                f"| {provider} | {info['batch']} | {info['cuda_graph']} | {median:.3f} | "
                f"{info['batch'] / median:.1f} | {speedup} | {outside} |"
            )
    return lines


def training_tables(benchmarks: list[dict]) -> list[str]:
    """Training variants of one model: images/s and the speed-up over the original code."""
    rows = [b for b in benchmarks if b["extra_info"].get("kind") == "training variant"]
    if not rows:
        return []
    original = next((b for b in rows if b["extra_info"]["variant"] == "original"), None)
    lines = ["", "## training step: paper Fashion-MNIST model (fmnist32)", "",
             "| variant | batch | median ms | images/s | vs the original code |",
             "|---|---:|---:|---:|---:|"]  # fmt: skip
    for bench in rows:
        info, median = bench["extra_info"], bench["stats"]["median"]
        ratio = f"{original['stats']['median'] / median:.2f}x" if original else "-"
        lines.append(
            f"| {info['variant']} | {info['batch']} | {median * 1e3:.1f} | "
            f"{info['batch'] / median:.1f} | {ratio} |"
        )
    return lines


def with_ratio(value: float | None, ours: float | None) -> str:
    """'12.3 (4.1x patronus)' or what is known of it."""
    if value is None:
        return "n/a"
    if ours and ours > 0:
        return f"{value:.1f} ({value / ours:.1f}x)"
    return f"{value:.1f}"


def slim(data: dict) -> dict:
    """The raw results without per-round timings and the long machine description."""
    machine = {k: v for k, v in data["machine_info"].items() if k != "patronus_info"}
    machine["patronus_info"] = data["machine_info"].get("patronus_info", "").splitlines()
    return {
        "datetime": data["datetime"],
        "commit_info": {k: data.get("commit_info", {}).get(k) for k in ("id", "branch", "dirty")},
        "machine_info": machine,
        "benchmarks": [
            {
                "group": bench["group"],
                "name": bench["name"],
                "extra_info": bench["extra_info"],
                "stats": {k: bench["stats"][k] for k in SUMMARY_STATS if k in bench["stats"]},
            }
            for bench in data["benchmarks"]
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("results", type=Path, nargs="+", help="pytest-benchmark JSON files")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    runs = [json.loads(path.read_text()) for path in args.results]
    data = {**runs[0], "benchmarks": [bench for run in runs for bench in run["benchmarks"]]}
    device = data["machine_info"].get("device", "device")
    slug = re.sub(r"[^a-z0-9]+", "-", device.lower()).strip("-")
    stem = f"{slug}-{data['datetime'][:10]}"
    out = args.out or args.results[0].parent
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.md").write_text(markdown(data))
    (out / f"{stem}.json").write_text(json.dumps(slim(data), indent=1) + "\n")
    print(out / f"{stem}.md")


if __name__ == "__main__":
    main()
