"""One showcase candidate's measurements as one JSON object (for benchmarks/showcase_training.sh).

    python benchmarks/showcase_summary.py NAME RUN_DIR MEASURE_DIR

RUN_DIR is the trained run (its latest checkpoint says how far it got), MEASURE_DIR holds
`visualize/visualize.json` and `fid/fid.json` as `patronus visualize` and `patronus evaluate fid`
write them. A measurement that is missing (it failed or ran out of time) is null, with the reason.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def _read(path: Path) -> tuple[dict | None, str | None]:
    if not path.is_file():
        return None, f"no {path.name}: its command failed or ran out of time (see the log)"
    try:
        return json.loads(path.read_text()), None
    except ValueError as error:
        return None, f"{path.name} unreadable: {error}"


def summary(name: str, run: Path, measured: Path) -> dict:
    result: dict = {"candidate": name, "missing": []}
    latest = (run / "checkpoints" / "latest").read_text().strip()
    config, _ = _read(run / "checkpoints" / latest / "config.json")
    result["training_steps"] = None if config is None else config.get("step")
    visualize, why = _read(measured / "visualize" / "visualize.json")
    if visualize is None:
        result["missing"].append(why)
    else:
        result["edit_fidelity"] = visualize["edit_fidelity"]
        result["reconstruction_mse"] = statistics.fmean(visualize["reconstruction_mse"])
    fid, why = _read(measured / "fid" / "fid.json")
    if fid is None:
        result["missing"].append(why)
    else:
        result.update({key: fid[key] for key in ("fid", "kid", "kid_std")})
        result["fid_sampling"] = f"{fid['sampler']}, {fid['steps']} steps"
    return result


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    print(json.dumps(summary(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])), indent=2))
