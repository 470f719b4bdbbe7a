"""benchmarks/report.py: the markdown every committed benchmark table comes from."""

import importlib.util
from pathlib import Path

REPORT = Path(__file__).resolve().parents[1] / "benchmarks" / "report.py"


def load_report():
    spec = importlib.util.spec_from_file_location("benchmark_report", REPORT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(device: str, threads: int) -> dict:
    stats = {"median": 0.5, "rounds": 3}
    bench = {"group": "g", "name": "sampling", "stats": stats,
             "extra_info": {"kind": "sampling step", "preset": "fmnist32", "batch": 8}}  # fmt: skip
    machine = {"device": device, "threads": threads, "torch": "2", "python_version": "3.11"}
    return {"machine_info": machine, "datetime": "2026-11-29T00:00", "benchmarks": [bench]}


def test_every_cpu_table_says_its_thread_count():
    text = load_report().markdown(run("x86_64 CPU, 1 threads", 1))
    headings = [line for line in text.splitlines() if line.startswith("## ")]
    assert headings == ["## end-to-end steps [1 thread]"]
    assert "| sampling step | fmnist32 |  | 8 | 500.0 | 16.0 | 3 |" in text
    text = load_report().markdown(run("x86_64 CPU, 2 threads", 2))
    assert "## end-to-end steps [2 threads]" in text


def test_gpu_tables_carry_no_thread_count():
    text = load_report().markdown(run("NVIDIA H200", 16))
    assert (
        "## end-to-end steps\n" in text and "thread" not in text.split("```")[0].split("\n", 1)[1]
    )
