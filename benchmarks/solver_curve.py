"""Sample quality against network calls per image, for DDIM and DPM-Solver++ 2M / 3M.

usage: python benchmarks/solver_curve.py [--model assets/fmnist-patronus] [--num 400]
           [--work runs/solver-curve] [--only SAMPLER[:CALLS],...] [--report]

Conditional samples of one model (activations of its first ``num`` training images, the same
x_T for every sampler: deterministic samplers drawing x_T from one seed), at 5, 8, 10, 15, 20, 25
and 50 network calls per image, and 1000-step DDIM (the original implementation's sampler) as the
reference. Two views:

- FID and KID against as many test images, in the features of the model's own classifier
  (``CHECKPOINT/classifier``, as ``patronus evaluate fid``), x0 clipped to [-1, 1] as there;
- the deterministic view: per image, the RMS distance (pixels in [-1, 1]) of each sampler's image
  to the 1000-step DDIM image from the same x_T and s; the mean over images.

Each (sampler, calls) is sampled once and kept in ``--work`` (resumable; ``--only`` splits the
work across processes). ``--report`` writes ``benchmarks/results/solver-curve.json``,
``solver-curve.md`` (the table the README shows) and ``solver-curve.png`` from what is there.
With ``--no-clip`` it samples the plain solvers (x0 unclipped) into their own ``--work`` folder
and its ``--report`` writes ``solver-curve-unclipped.{json,md}`` (RMS only).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

CALLS = (5, 8, 10, 15, 20, 25, 50)
SAMPLERS = ("ddim", "dpmpp-2m", "dpmpp-3m")
REFERENCE = ("ddim", 1000)
RESULTS = Path(__file__).with_name("results")


def tasks() -> list[tuple[str, int]]:
    return [REFERENCE] + [(sampler, calls) for sampler in SAMPLERS for calls in CALLS]


def parse_only(text: str | None) -> list[tuple[str, int]]:
    if not text:
        return tasks()
    chosen = []
    for item in text.split(","):
        sampler, _, calls = item.partition(":")
        chosen += [t for t in tasks() if t[0] == sampler and (not calls or t[1] == int(calls))]
    return chosen


def conditioning(model, checkpoint: Path, num: int):
    """(activations of the first ``num`` training images, ``num`` test images, the builder)."""
    from patronus.cli.loading import dataset_builder
    from patronus.eval.encode import encode_dataset

    _, build = dataset_builder(checkpoint, model)
    activations, _ = encode_dataset(model, build("train"), num)
    test = build("test")
    reference = torch.stack([test[i][0] for i in range(num)])
    return activations, reference


def sample_task(
    model, activations, sampler: str, calls: int, work: Path, batch: int, clip: bool = True
) -> None:
    from patronus.eval.generation import generate

    path = work / f"{sampler}-{calls}.pt"
    if path.exists():
        return
    started = time.perf_counter()
    generator = torch.Generator().manual_seed(0)  # the same x_T for every sampler
    images = generate(
        model, activations, calls, batch, generator, progress=True, sampler=sampler, clip_x0=clip
    )
    seconds = time.perf_counter() - started
    torch.save({"images": images, "seconds": seconds, "threads": torch.get_num_threads()}, path)
    print(f"{sampler} {calls} calls: {seconds:.0f} s", flush=True)


def report(model_dir: Path, work: Path, reference_images: torch.Tensor, fid: bool = True) -> dict:
    from patronus.eval.classifier import load_classifier
    from patronus.eval.generation import distances

    classifier = load_classifier(model_dir / "classifier") if fid else None
    truth = torch.load(work / "{}-{}.pt".format(*REFERENCE))["images"]
    rows = []
    for sampler, calls in tasks():
        path = work / f"{sampler}-{calls}.pt"
        if not path.exists():
            continue
        saved = torch.load(path)
        images = saved["images"]
        rms = (images - truth).pow(2).flatten(1).mean(1).sqrt()
        row = {"sampler": sampler, "calls": calls, "seconds": saved["seconds"],
               "threads": saved["threads"], "rms_to_ddim1000": rms.mean().item()}  # fmt: skip
        if fid:
            row.update(distances(classifier.embed, images, reference_images))
        rows.append(row)
        print(json.dumps(row), flush=True)
    return {"model": str(model_dir), "num": len(truth), "rows": rows}


def table(result: dict) -> str:
    """Markdown: FID / RMS (or the RMS alone, without FIDs) per sampler (rows) and network calls
    (columns), the reference below."""
    rows = {(r["sampler"], r["calls"]): r for r in result["rows"]}
    reference = rows[REFERENCE]
    with_fid = "fid" in reference
    header = "| sampler | " + " | ".join(f"{c} calls" for c in CALLS) + " |"
    lines = [header, "|---|" + "---:|" * len(CALLS)]
    for sampler in SAMPLERS:
        cells = []
        for calls in CALLS:
            row = rows.get((sampler, calls))
            rms = f"{row['rms_to_ddim1000']:.3f}" if row else "-"
            cells.append(f"{row['fid']:.1f} / {rms}" if row and with_fid else rms)
        lines.append(f"| {sampler} | " + " | ".join(cells) + " |")
    clipping = (
        "x0 clipped" if result.get("clip_x0", True) else "x0 unclipped (the plain ODE solvers)"
    )
    lines.append("")
    if with_fid:
        lines.append(
            f"FID / RMS distance to the 1000-step DDIM image, {clipping}; 1000-step DDIM: FID "
            f"{reference['fid']:.1f} ({result['num']} samples, {result['num']} test images)."
        )
    else:
        lines.append(
            f"RMS distance to the 1000-step DDIM image from the same x_T and activations, "
            f"{clipping}; {result['num']} images."
        )
    return "\n".join(lines) + "\n"


def _curves(axis, result: dict, key: str) -> None:
    for sampler in SAMPLERS:
        rows = sorted((r for r in result["rows"] if r["sampler"] == sampler and r["calls"] < 1000),
                      key=lambda r: r["calls"])  # fmt: skip
        axis.plot([r["calls"] for r in rows], [r[key] for r in rows], "o-", label=sampler)


def plot(result: dict, unclipped: dict | None, path: Path) -> None:
    """FID and RMS (x0 clipped) against calls, and the unclipped RMS where it was measured."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 2 if unclipped is None else 3
    figure, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4.2))
    fid_axis, rms_axis = axes[:2]
    reference = next(r for r in result["rows"] if (r["sampler"], r["calls"]) == REFERENCE)
    _curves(fid_axis, result, "fid")
    _curves(rms_axis, result, "rms_to_ddim1000")
    fid_axis.axhline(reference["fid"], color="k", ls="--", label="DDIM, 1000 calls")
    fid_axis.axhline(reference["fid"] * 1.1, color="k", ls=":", label="+10%")
    fid_axis.set(xscale="log", xlabel="network calls per image", ylabel="FID (classifier features)",
                 title=f"FID of {result['num']} conditional samples (x0 clipped)")  # fmt: skip
    rms_axis.set(xscale="log", yscale="log", xlabel="network calls per image",
                 ylabel="RMS distance to the 1000-step DDIM image",
                 title="same x_T and activations (x0 clipped)")  # fmt: skip
    if unclipped is not None:
        _curves(axes[2], unclipped, "rms_to_ddim1000")
        axes[2].set(xscale="log", yscale="log", xlabel="network calls per image",
                    ylabel="RMS distance to the 1000-step DDIM image",
                    title=f"x0 unclipped: the ODE solvers ({unclipped['num']} images)")  # fmt: skip
    for axis in axes:
        axis.set_xticks(CALLS, [str(c) for c in CALLS])
        axis.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        axis.grid(alpha=0.3)
        axis.legend()
    figure.suptitle(f"Samplers of {result['model']}")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    from patronus import load_model

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path("assets/fmnist-patronus"))
    parser.add_argument("--num", type=int, default=400)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--work", type=Path, default=Path("runs/solver-curve"))
    parser.add_argument("--only", help="e.g. ddim:1000 or dpmpp-2m,ddim:5")
    parser.add_argument("--report", action="store_true")
    parser.add_argument(
        "--no-clip",
        action="store_true",
        help="the plain solvers (x0 unclipped) for the deterministic view only: --report then "
        "writes solver-curve-unclipped.{json,md} with the RMS distances, no FID (run it before "
        "the clipped --report, whose plot then shows it too)",
    )
    args = parser.parse_args()
    model = load_model(args.model).eval()
    activations, reference = conditioning(model, args.model, args.num)
    args.work.mkdir(parents=True, exist_ok=True)
    if args.report and args.no_clip:
        result = report(args.model, args.work, reference, fid=False)
        result["clip_x0"] = False
        (RESULTS / "solver-curve-unclipped.json").write_text(json.dumps(result, indent=2) + "\n")
        (RESULTS / "solver-curve-unclipped.md").write_text(table(result))
        return
    if args.report:
        result = report(args.model, args.work, reference)
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "solver-curve.json").write_text(json.dumps(result, indent=2) + "\n")
        (RESULTS / "solver-curve.md").write_text(table(result))
        unclipped_path = RESULTS / "solver-curve-unclipped.json"
        unclipped = json.loads(unclipped_path.read_text()) if unclipped_path.exists() else None
        plot(result, unclipped, RESULTS / "solver-curve.png")
        return
    for sampler, calls in parse_only(args.only):
        sample_task(model, activations, sampler, calls, args.work, args.batch, not args.no_clip)


if __name__ == "__main__":
    main()
