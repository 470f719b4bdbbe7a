"""bf16 against fp32 for sampling on this machine: speed per network call, the error of the
predicted noise, and the FID of samples.

usage: python benchmarks/precision.py [--model assets/fmnist-patronus] [--num 400]
           [--sampler dpmpp-2m] [--calls 15] [--batch 200] [--out results/precision.json]

- speed: median seconds of one network call (batch ``--batch``) with ``set_precision("fp32")``
  and ``("bf16")``, interleaved rounds, for the shipped model and the paper's ``fmnist32``
  architecture (random weights);
- error: RMS of (bf16 - fp32) predicted noise over the RMS of the fp32 one, on noisy test images
  at 10 levels;
- FID (the model's classifier features) of ``--num`` conditional samples with each precision,
  same x_T and activations, against as many test images; and their RMS distance.
Writes ``--out`` (default ``benchmarks/results/precision.json``) and prints it; the thread count
(``OMP_NUM_THREADS``) is in the result.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).with_name("results")


def call_seconds(model, batch: int, rounds: int = 5) -> dict[str, float]:
    """Median seconds per network call for fp32 and bf16, rounds interleaved."""
    x = torch.randn(batch, *model.config.image_shape)
    t = torch.full((batch,), 500)
    s = torch.rand(batch, model.num_prototypes)
    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    with torch.no_grad():
        for precision in times:  # warm-up
            model.set_precision(precision).eps_fn(s)(x, t)
        for _ in range(rounds):
            for precision in times:
                fn = model.set_precision(precision).eps_fn(s)
                started = time.perf_counter()
                fn(x, t)
                times[precision].append(time.perf_counter() - started)
    model.set_precision("fp32")
    return {precision: statistics.median(values) for precision, values in times.items()}


def noise_error(model, images: torch.Tensor) -> float:
    """RMS(bf16 - fp32) / RMS(fp32) of the predicted noise on noisy images at 10 levels."""
    generator = torch.Generator().manual_seed(0)
    s = model.encode(images)
    errors, norms = 0.0, 0.0
    with torch.no_grad():
        for level in range(50, 1000, 100):
            t = torch.full((len(images),), level)
            abar = model.schedule.alphas_cumprod[level].float()
            noise = torch.randn(images.shape, generator=generator)
            x_t = abar.sqrt() * images + (1 - abar).sqrt() * noise
            exact = model.set_precision("fp32").eps_fn(s)(x_t, t)
            fast = model.set_precision("bf16").eps_fn(s)(x_t, t)
            errors += (fast - exact).pow(2).sum().item()
            norms += exact.pow(2).sum().item()
    model.set_precision("fp32")
    return (errors / norms) ** 0.5


def main() -> None:
    from solver_curve import conditioning

    from patronus import Patronus, load_model
    from patronus.eval.classifier import load_classifier
    from patronus.eval.generation import distances, generate
    from patronus.models.presets import get_preset

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path("assets/fmnist-patronus"))
    parser.add_argument("--num", type=int, default=400)
    parser.add_argument("--sampler", default="dpmpp-2m")
    parser.add_argument("--calls", type=int, default=15)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--out", type=Path, default=RESULTS / "precision.json")
    args = parser.parse_args()
    model = load_model(args.model).eval()
    torch.manual_seed(0)
    paper = Patronus(get_preset("fmnist32").model).eval()
    result = {
        "threads": torch.get_num_threads(),
        "speed_shipped": call_seconds(model, args.batch),
        "speed_fmnist32": call_seconds(paper, 32),
    }
    activations, reference = conditioning(model, args.model, args.num)
    result["noise_error_relative_rms"] = noise_error(model, reference[:200])
    classifier = load_classifier(args.model / "classifier")
    samples = {}
    for precision in ("fp32", "bf16"):
        model.set_precision(precision)
        started = time.perf_counter()
        generator = torch.Generator().manual_seed(0)  # the same x_T for both
        samples[precision] = generate(
            model, activations, args.calls, args.batch, generator, sampler=args.sampler
        )
        result[f"sampling_seconds_{precision}"] = time.perf_counter() - started
        result[f"fid_{precision}"] = distances(classifier.embed, samples[precision], reference)
    difference = (samples["bf16"] - samples["fp32"]).pow(2).flatten(1).mean(1).sqrt()
    result.update(sampler=args.sampler, calls=args.calls, num=args.num,
                  rms_bf16_to_fp32=difference.mean().item())  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
