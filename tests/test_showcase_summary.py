"""benchmarks/showcase_summary.py sums up what `patronus visualize` and `patronus evaluate fid`
really write for a trained run (the GPU showcase's measurements)."""

import importlib.util
import json
import shutil
import statistics
from pathlib import Path

from patronus.cli import main

SUMMARY = Path(__file__).resolve().parents[1] / "benchmarks" / "showcase_summary.py"


def load_summary():
    spec = importlib.util.spec_from_file_location("showcase_summary", SUMMARY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.summary


def test_summary_of_a_measured_run_and_of_a_missing_measurement(tiny_run, tmp_path):
    measured = tmp_path / "measure"
    common = ["--no-progress", "--seed", "0"]
    visualize = ["visualize", str(tiny_run), "--num-images", "2", "--steps", "2", "--prototypes",
                 "0", "1", "--reference-size", "8", "--pool-size", "8"]  # fmt: skip
    assert main([*visualize, *common, "--out", str(measured / "visualize")]) == 0
    fid = ["evaluate", "fid", str(tiny_run), "--num", "8", "--steps", "2", "--sampler", "ddim",
           "--classifier-steps", "5"]  # fmt: skip
    assert main([*fid, *common, "--out", str(measured / "fid")]) == 0

    result = load_summary()("base", tiny_run, measured)
    numbers = json.loads((measured / "visualize" / "visualize.json").read_text())
    written = json.loads((measured / "fid" / "fid.json").read_text())
    assert result["candidate"] == "base" and result["missing"] == []
    assert result["training_steps"] == 30  # the fixture's run
    assert result["edit_fidelity"] == numbers["edit_fidelity"]
    assert result["reconstruction_mse"] == statistics.fmean(numbers["reconstruction_mse"])
    assert (result["fid"], result["kid"]) == (written["fid"], written["kid"])
    assert result["fid_sampling"] == "ddim, 2 steps"

    shutil.rmtree(measured / "fid")
    result = load_summary()("base", tiny_run, measured)
    assert "fid" not in result and result["edit_fidelity"] == numbers["edit_fidelity"]
    assert result["missing"] == ["no fid.json: its command failed or ran out of time (see the log)"]
