"""Turn a pytest-benchmark JSON file into a markdown table with device, versions and date.

usage: python benchmarks/report.py RESULTS.json [--out FOLDER]
Writes FOLDER/<device>-<date>.json and .md (FOLDER defaults to the JSON file's folder).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path


def markdown(data: dict) -> str:
    machine = data["machine_info"]
    lines = [
        f"# Benchmarks: {machine.get('device', 'unknown device')}",
        "",
        f"- date: {data['datetime']}",
        f"- torch {machine.get('torch')} (CUDA {machine.get('cuda') or 'none'}), "
        f"python {machine.get('python_version')}",
        f"- commit: {data.get('commit_info', {}).get('id', 'unknown')}",
        "",
        "| benchmark | preset | backend | batch | mean ms | images/s | rounds |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for bench in sorted(data["benchmarks"], key=lambda b: (b["group"] or "", b["name"])):
        info, stats = bench["extra_info"], bench["stats"]
        mean = stats["mean"]
        lines.append(
            f"| {info.get('kind', bench['name'])} | {info.get('preset', '')} | "
            f"{info.get('backend', '')} | {info.get('batch', '')} | {mean * 1e3:.1f} | "
            f"{info.get('batch', 0) / mean:.1f} | {stats['rounds']} |"
        )
    lines += ["", "```", machine.get("patronus_info", ""), "```", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("results", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    data = json.loads(args.results.read_text())
    device = data["machine_info"].get("device", "device")
    slug = re.sub(r"[^a-z0-9]+", "-", device.lower()).strip("-")
    stem = f"{slug}-{data['datetime'][:10]}"
    out = args.out or args.results.parent
    out.mkdir(parents=True, exist_ok=True)
    if args.results.resolve() != (out / f"{stem}.json").resolve():
        shutil.copyfile(args.results, out / f"{stem}.json")
    (out / f"{stem}.md").write_text(markdown(data))
    print(out / f"{stem}.md")


if __name__ == "__main__":
    main()
