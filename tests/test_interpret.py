"""Interpretability on the synthetic shapes, whose factors and object boxes are known."""

import base64
import dataclasses
import io
import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from patronus import Patronus, load_model
from patronus.data import FACTOR_NAMES, FACTORS, SyntheticShapes
from patronus.eval import factor_auroc
from patronus.interpret import (
    activation_bounds,
    analyses,
    box_iou,
    edited_activations,
    emergence_steps,
    invert_images,
    localize,
    nearest_patches,
    slerp,
    trace_emergence,
    upsample_cells,
    visualize_prototypes,
)
from patronus.interpret.report import ReportInputs, ReportOptions, build_report
from patronus.models.presets import PRESETS, get_preset

STEPS = 20


FIXTURE = Path(__file__).resolve().parent / "fixtures" / "synthetic-tiny-600"


@pytest.fixture(scope="module")
def trained():
    """The tiny preset trained for 600 steps on 512 synthetic images, loaded from the committed
    fixture (tests/fixtures/train_synthetic_tiny.py): a model trained inside the test would follow
    an instruction-set-dependent trajectory, and the margins below would hold on some CPUs only."""
    return load_model(FIXTURE).eval()


@pytest.fixture(scope="module")
def test_set():
    data = SyntheticShapes(400, 24, 3, seed=1)
    images = torch.stack([data[i][0] for i in range(len(data))])
    boxes = torch.tensor([data.box(i) for i in range(len(data))])
    return data, images, boxes


def test_prototypes_are_tied_to_the_factors(trained, test_set, record_property):
    data, images, _ = test_set
    with torch.no_grad():
        s = trained.encode(images)
    best = {}
    for column, name in enumerate(FACTOR_NAMES):
        values = range(len(FACTORS[name]))
        best[name] = max(
            float(factor_auroc(s, data.factor_table[:, column] == v).max()) for v in values
        )
    record_property("best_prototype_auroc", json.dumps(best))
    print("AUROC of each factor from its best prototype:", best)
    assert best["colour"] > 0.7 and best["size"] > 0.65 and best["background"] > 0.65


def test_where_boxes_overlap_the_object(trained, test_set):
    _, images, boxes = test_set
    located = localize(trained, images)
    iou = box_iou(located.boxes, boxes[:, None, :])  # (N, P)
    # the same prototypes' boxes on other images: the overlap expected by chance
    chance = box_iou(located.boxes.roll(1, dims=0), boxes[:, None, :])
    assert iou.mean() > 1.5 * chance.mean()


def test_edits_change_the_marked_patch_more_than_elsewhere(trained, test_set, record_property):
    """Edits decoded as the report decodes them (the inversion's own settings) change the edited
    prototype's patch more than the rest of the image. Measured on the fixture (32 images):
    inside / outside = 1.0997, the same under ATEN_CPU_CAPABILITY=avx2 and the default AVX-512
    kernels (inference from fixed weights varies in the 5th digit). Models of the same recipe
    trained from seeds 0-3 under both capabilities gave 1.11-1.90. This small model's edits are
    only weakly local; the issue about models that listen must make this claim strong."""
    _, images, _ = test_set
    inversion = invert_images(trained, images[:32], STEPS)
    with torch.no_grad():
        bounds = activation_bounds(trained.encode(images[100:300]))
        reference = inversion.decode(trained, inversion.activations)
    inside = outside = 0.0
    for prototype in range(trained.num_prototypes):
        s = edited_activations(inversion.activations, [prototype], bounds[[prototype]])
        with torch.no_grad():
            edit = inversion.decode(trained, s)
            index = trained.prototype_output(edit).patch_index[:, prototype]
        change = (edit - reference).abs().mean(1)  # (n, H, W)
        for image, box in enumerate(trained.patch_boxes(index)):
            mask = torch.zeros_like(change[image], dtype=torch.bool)
            mask[box[0] : box[2], box[1] : box[3]] = True
            inside += float(change[image][mask].mean())
            outside += float(change[image][~mask].mean())
    record_property("inside_over_outside", inside / outside)
    assert inside > 1.05 * outside


def test_unedited_decodes_have_flat_emergence_curves(trained, test_set):
    _, images, _ = test_set
    inversion = invert_images(trained, images[:4], STEPS)
    prototypes = list(range(trained.num_prototypes))
    own = inversion.activations[:, prototypes].t()  # (J, n): "edit" to the values it has
    emergence = trace_emergence(trained, inversion, prototypes, own)
    assert torch.equal(emergence.gap, torch.zeros_like(emergence.gap))
    assert (emergence.emergence_t == -1).all()
    assert emergence.timesteps.tolist() == sorted(emergence.timesteps.tolist(), reverse=True)
    # the unedited decode's error, so a reader knows whether the curves start from the image
    reconstruction = inversion.decode(trained, inversion.activations)
    expected = (reconstruction - inversion.images).square().flatten(1).mean(1)
    torch.testing.assert_close(emergence.reconstruction_mse, expected)


def test_emergence_summary_warns_when_decodes_do_not_reproduce_the_images(tiny_inversion):
    """3 steps of an untrained model decode other images: the one-line summary says so."""
    from patronus.interpret.report import emergence_summary
    from patronus.interpret.trust import RECONSTRUCTION_BAR

    model, inversion, reference = tiny_inversion
    emergence = trace_emergence(model, inversion, [0, 1], reference.amax(0)[[0, 1]])
    assert float(emergence.reconstruction_mse.median()) > RECONSTRUCTION_BAR
    assert "but the unedited decodes do not reproduce the images" in emergence_summary(emergence)
    faithful = dataclasses.replace(emergence, reconstruction_mse=torch.full((3,), 0.001))
    assert "reproduce" not in emergence_summary(faithful)


def test_emergence_share_of_the_requested_change():
    """Known answer: gaps over 3 steps for one prototype in 3 images that asked for +2, +4 and
    (already above the value) -1: shares gap / 2, gap / 4, and NaN where nothing was asked."""
    from patronus.interpret.when import Emergence

    gap = torch.tensor([[[4.0, -2.0, 0.5]], [[1.0, 1.0, 0.5]], [[2.0, 3.0, 0.5]]])  # (S, J, n)
    emergence = Emergence(
        [7], torch.tensor([999, 500, 0]), gap + 10, torch.full_like(gap, 10.0),
        torch.zeros(1, 3, dtype=torch.long), torch.zeros(1, 3, dtype=torch.long),
        torch.tensor([[2.0, 4.0, -1.0]]), 0.1,
    )  # fmt: skip
    share = emergence.share
    torch.testing.assert_close(share[:, 0, 0], torch.tensor([2.0, 0.5, 1.0]))
    torch.testing.assert_close(share[:, 0, 1], torch.tensor([-0.5, 0.25, 0.75]))
    assert share[:, 0, 2].isnan().all()


def test_emergence_step_definition():
    gap = torch.tensor([[0.0, 0.0], [0.1, 0.0], [0.6, 0.01], [0.4, 0.0], [0.9, 0.02], [1.0, 0.02]])
    steps = emergence_steps(gap, fraction=0.5, min_gain=0.05)
    # column 0: >= 0.5 from step 4 on (step 2 dips below at step 3); column 1: gain too small
    assert steps.tolist() == [4, -1]


def test_visualization_is_deterministic_and_consistent(trained, test_set):
    _, images, _ = test_set
    bounds = activation_bounds(trained.encode(images[100:300]).detach())
    runs = [visualize_prototypes(trained, invert_images(trained, images[:4], STEPS), bounds,
                                 [0, 3, 5], batch_size=8) for _ in range(2)]  # fmt: skip
    assert torch.equal(runs[0].edits, runs[1].edits) and torch.equal(runs[0].best, runs[1].best)
    vis = runs[0]
    assert vis.edits.shape == (3, 4, 3, 24, 24) and vis.network_evaluations_per_edit == 2 * STEPS
    # the kept edit is the one whose s_J rose most from the image's own value
    with torch.no_grad():
        assert torch.equal(vis.before, trained.encode(images[:4])[:, [0, 3, 5]].t())
    assert torch.equal(vis.best, (vis.edit_activation - vis.before).argmax(1).cpu())
    kept = vis.best_after() - vis.best_before()
    assert (kept >= (vis.edit_activation - vis.before).max(1).values).all()


def test_every_unedited_decode_is_the_reconstruction(trained, test_set):
    """Frame 0 of an interpolation, an extrapolation to the image's own value, an "edit" to the
    value an image already has: each must be the reconstruction shown beside it."""
    from patronus.interpret import consistency, extrapolation, interpolation, reconstruction

    _, images, _ = test_set
    inversion = invert_images(trained, images[:4], STEPS)
    reconstructed, mse = reconstruction(trained, inversion)
    own = inversion.activations

    def same(a, b):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=0)

    frames = interpolation(trained, inversion, 0, 1, 4)
    same(frames[0], reconstructed[0])
    same(frames[-1], reconstructed[1])
    same(extrapolation(trained, inversion, 2, torch.stack([own[0, 2], own[0, 2] + 3]))[0],
         reconstructed[0])  # fmt: skip
    values = torch.stack([own[1, 2], own[1, 2] + 3])
    guided = extrapolation(trained, inversion, 2, values, image=1, edit_guidance=4.0)
    same(guided[0], reconstructed[1])  # guidance against the image's own s: no change at own
    plain = extrapolation(trained, inversion, 2, values, image=1)
    assert (guided[1] - reconstructed[1]).abs().mean() > (plain[1] - reconstructed[1]).abs().mean()
    same(consistency(trained, inversion, 5, float(own[3, 5])).edits[3], reconstructed[3])
    vis = visualize_prototypes(trained, inversion, own[1], [0, 4])
    same(vis.reconstructions, reconstructed)
    same(vis.reconstruction_mse(), mse)
    same(vis.edits[:, 1], reconstructed[1].expand(2, -1, -1, -1))
    traced = trace_emergence(trained, inversion, [0, 4], own[:, [0, 4]].t())
    with torch.no_grad():
        final = trained.encode(reconstructed)[:, [0, 4]].t()
    same(traced.reference[-1], final)
    same(traced.requested, own[:, [0, 4]].t() - final)


def test_variations_are_sampled_like_samples(trained, test_set):
    from patronus.interpret import variations

    _, images, _ = test_set
    inversion = invert_images(trained, images[:2], STEPS)
    varied = variations(trained, inversion, 3, torch.Generator().manual_seed(0))
    s = inversion.activations.repeat_interleave(3, 0)
    expected = trained.sample(s, STEPS, generator=torch.Generator().manual_seed(0), clip_x0=True)
    assert torch.equal(varied.reshape(expected.shape), expected)
    solved = variations(trained, inversion, 3, torch.Generator().manual_seed(0), "dpmpp-2m")
    expected = trained.sample(s, STEPS, generator=torch.Generator().manual_seed(0), clip_x0=True,
                              sampler="dpmpp-2m")  # fmt: skip
    assert torch.equal(solved.reshape(expected.shape), expected)


def test_nearest_patches_are_the_minimum_distances(trained, test_set):
    _, images, _ = test_set
    found = nearest_patches(trained, images[:100].split(33), k=3)
    with torch.no_grad():
        output = trained.prototype_output(images[:100])
    expected = output.min_distances.t().sort(dim=1).values[:, :3]
    torch.testing.assert_close(found.distance, expected.cpu())
    assert torch.equal(found.boxes, trained.patch_boxes(output.patch_index.t()[
        torch.arange(trained.num_prototypes)[:, None], found.image_index]))  # fmt: skip
    # one tensor of images is one batch (iterating it gave images without a batch axis)
    whole = nearest_patches(trained, images[:100], k=3)
    assert torch.equal(whole.image_index, found.image_index)
    torch.testing.assert_close(whole.distance, found.distance)
    assert nearest_patches(trained, images[:2], k=5).distance.shape == (trained.num_prototypes, 2)
    with pytest.raises(ValueError, match="no images to search"):
        nearest_patches(trained, images[:0])
    with pytest.raises(ValueError, match="k must be >= 1"):
        nearest_patches(trained, images[:2], k=0)


def test_bounds():
    activations = torch.tensor([[0.0, 5.0], [1.0, 7.0], [2.0, 6.0]])
    assert activation_bounds(activations, 1.0).tolist() == [2.0, 7.0]
    assert activation_bounds(activations, 0.5).tolist() == [1.0, 6.0]
    assert activation_bounds(activations, global_max=True).tolist() == [7.0, 7.0]
    with pytest.raises(ValueError, match="quantile"):
        activation_bounds(activations, 0.0)
    with pytest.raises(ValueError, match="NaN"):  # it returned NaN bounds
        activation_bounds(activations.index_fill(0, torch.tensor([1]), float("nan")))


def test_prototype_and_image_indices_are_checked(trained, test_set):
    """Out-of-range indices raised bare IndexErrors, -1 silently edited the last prototype, a
    prototype listed twice was shown twice, and bounds or values of the wrong length were
    silently cut to what the call used."""
    _, images, _ = test_set
    inversion = invert_images(trained, images[:2], 2)
    count = trained.num_prototypes
    bounds = activation_bounds(inversion.activations)
    calls = [
        lambda j: visualize_prototypes(trained, inversion, bounds, [j]),
        lambda j: trace_emergence(trained, inversion, [j], bounds[[0]]),
        lambda j: analyses.extrapolation(trained, inversion, j, bounds[:2]),
        lambda j: analyses.consistency(trained, inversion, j, 1.0),
    ]
    for call in calls:
        with pytest.raises(
            ValueError, match=re.escape(f"must be in 0 .. {count - 1}, got [{count}]")
        ):
            call(count)
        with pytest.raises(ValueError, match=re.escape("got [-1]")):
            call(-1)
    repeated = "prototypes must be distinct, got [1] more than once"
    with pytest.raises(ValueError, match=re.escape(repeated)):  # the gallery showed p1 twice
        visualize_prototypes(trained, inversion, bounds, [1, 0, 1])
    with pytest.raises(ValueError, match=re.escape(repeated)):  # and so did the curves
        trace_emergence(trained, inversion, [1, 0, 1], bounds[[1, 0, 1]])
    empty = "prototypes must list at least one index, got none"  # was an error from torch.cat
    with pytest.raises(ValueError, match=empty):
        visualize_prototypes(trained, inversion, bounds, [])
    with pytest.raises(ValueError, match=empty):  # was one from reshape
        trace_emergence(trained, inversion, [], bounds[[]])
    with pytest.raises(ValueError, match=re.escape(f"bounds must be ({count},)")):
        visualize_prototypes(trained, inversion, bounds[:3], [0])
    with pytest.raises(ValueError, match=re.escape("values must be finite and (2,) or (2, 2)")):
        trace_emergence(trained, inversion, [0, 1], bounds[[0]])
    with pytest.raises(ValueError, match=re.escape("image indices must be in 0 .. 1, got [2]")):
        analyses.interpolation(trained, inversion, 0, 2)
    with pytest.raises(ValueError, match="values must be finite"):
        analyses.extrapolation(trained, inversion, 0, torch.tensor([0.0, float("inf")]))
    # counts and values that torch took (an error from repeat, an empty or one-frame result)
    with pytest.raises(ValueError, match=re.escape("values must be (K,) with K >= 1, got (0,)")):
        analyses.extrapolation(trained, inversion, 0, torch.tensor([]))
    with pytest.raises(ValueError, match="count must be at least 1, got -1"):
        analyses.variations(trained, inversion, -1)
    with pytest.raises(ValueError, match=re.escape("count must be at least 2 (the two images)")):
        analyses.interpolation(trained, inversion, 0, 1, count=1)
    with pytest.raises(ValueError, match="value must be finite, got nan"):  # said "got (1,)"
        analyses.consistency(trained, inversion, 0, float("nan"))
    # settings named as themselves, checked before decoding (batch 0 and fraction 2 were taken)
    with pytest.raises(ValueError, match=r"edit_guidance must be finite and > 0 \(1: plain"):
        visualize_prototypes(trained, inversion, bounds, [0], edit_guidance=float("nan"))
    for w in (0.0, -2.0):  # the unedited image, the opposite edit: judged as the model's failure
        with pytest.raises(ValueError, match=f"edit_guidance must be finite and > 0.*got {w}"):
            visualize_prototypes(trained, inversion, bounds, [0], edit_guidance=w)
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        visualize_prototypes(trained, inversion, bounds, [0], batch_size=0)
    with pytest.raises(ValueError, match=re.escape("fraction must be in (0, 1], got 2.0")):
        trace_emergence(trained, inversion, [0], bounds[[0]], fraction=2.0)
    with pytest.raises(ValueError, match="guidance_scale must be finite, got nan"):  # not "needs
        invert_images(trained, inversion.images, steps=2, guidance_scale=float("nan"))  # dropout"


def test_upsampling_puts_cell_values_at_receptive_field_centres():
    field = get_preset("fmnist32").model.encoder
    from patronus.nn import receptive_field

    rf = receptive_field(field.kernel_sizes, field.strides, field.paddings)  # start 6.5, jump 2
    cells = torch.zeros(1, 10, 10)
    cells[0, 3, 4] = 1.0
    pixels = upsample_cells(cells, rf, (32, 32))[0]
    # cell (3, 4) is centred on pixel centre (6.5 + 6, 6.5 + 8) = pixel (12, 14)
    assert pixels[12, 14] == 1.0 and pixels.argmax() == 12 * 32 + 14
    assert pixels[11, 14] == pixels[13, 14] == 0.5  # halfway to the neighbouring centres
    edge = upsample_cells(torch.arange(10.0).expand(1, 10, 10), rf, (32, 32))[0]
    assert (edge[:, :7] == 0).all() and (edge[:, 25:] == 9).all()  # constant beyond the centres


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_boxes_of_every_preset_follow_the_geometry(name):
    """Box of cell k along an axis: [floor(start + k jump - size / 2), + size), clamped."""
    model = Patronus(PRESETS[name].model)
    size = model.config.image_size
    field = model.encoder.receptive_field
    height, width = model.encoder.output_size((size, size))
    for row, col in [(0, 0), (height // 2, width // 3), (height - 1, width - 1)]:
        box = model.encoder.patch_box(row * width + col, (size, size))
        for lo, hi, index in ((box[0], box[2], row), (box[1], box[3], col)):
            edge = math.floor(field.start + index * field.jump - field.size / 2)
            assert (lo, hi) == (max(0, edge), min(size, edge + field.size))


def test_slerp_endpoints_and_norm():
    a, b = torch.randn(3, 4, 4), torch.randn(3, 4, 4)
    path = slerp(a, b, torch.tensor([0.0, 0.5, 1.0]))
    torch.testing.assert_close(path[0], a)
    torch.testing.assert_close(path[2], b)


def _report(trained, test_set, out):
    _, images, _ = test_set
    inputs = ReportInputs(images[:4], images[100:228], images[228:300], {"model": "test"})
    options = ReportOptions(num_images=4, steps=8, prototypes=(0, 1, 2), nearest_k=3)
    return build_report(trained, inputs, out, options)


def test_report_is_self_contained_and_every_figure_decodes(
    trained, test_set, tmp_path, monkeypatch
):
    from patronus.interpret import reconstruction, report

    counted = []
    close = report._Progress.close

    def count_then_close(bar):
        counted.append((bar.calls, bar.bar.total))
        close(bar)

    monkeypatch.setattr(report._Progress, "close", count_then_close)
    path = _report(trained, test_set, tmp_path / "report")
    ((calls, expected),) = counted
    assert calls == expected  # the progress bar's total is the network calls the report makes
    page = path.read_text()
    assert 'src="http' not in page and "<script" not in page
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 8
    for encoded in images:
        picture = Image.open(io.BytesIO(base64.b64decode(encoded))).convert("L")
        colours = picture.getcolors(maxcolors=1 << 16)
        assert picture.size[0] > 50 and len(colours) > 10  # drawn, not blank
    results = json.loads((tmp_path / "report" / "results.json").read_text())
    assert results["network_evaluations"]["per_edit"] == 16
    assert results["network_evaluations"]["original_per_edit"] == 2000
    # what a reader is told of each kept edit: s_J before (the image's own), after, the target
    _, images, _ = test_set
    with torch.no_grad():
        own = trained.encode(images[:4])
    for i, p in enumerate(results["prototypes"]):
        assert results["best_before"][i] == pytest.approx(float(own[results["best_image"][i], p]))
        reached = results["best_after"][i] >= results["bounds"][i]
        assert results["best_reached_bound"][i] == reached
    assert "s_J before" in page and "every activation is negative" in page
    if not all(results["best_reached_bound"]):
        assert "no edit reached the value s_J was set to" in page
    # the fidelity headline, recomputed from the saved activations of every edit
    arrays = np.load(tmp_path / "report" / "results.npz")
    requested = np.asarray(results["bounds"])[:, None] - arrays["before"]
    shares = (arrays["edit_activation"] - arrays["before"])[requested > 0] / requested[
        requested > 0
    ]
    summary = results["edit_fidelity"]
    assert summary["edits"] == requested.size
    assert summary["median_fidelity"] == pytest.approx(
        float(torch.tensor(shares).clamp(-1, 2).median()), abs=1e-5
    )
    assert summary["share_reaching_half"] == pytest.approx(float((shares >= 0.5).mean()))
    assert "Can these explanations be trusted?" in page
    assert f"{summary['median_fidelity']:.2f}" in page
    # the prototypes the page says never emerge: in no image does the decoded edit's final gap
    # exceed 10% of the requested change (recomputed from the saved curves)
    final_gap = arrays["emergence_edit"][-1] - arrays["emergence_reference"][-1]
    request = np.asarray(results["bounds"])[:, None] - arrays["emergence_reference"][-1]
    np.testing.assert_allclose(arrays["emergence_requested"], request, rtol=0, atol=1e-5)
    emerged = final_gap > 0.1 * request
    never = [p for p, row in zip(results["prototypes"], emerged, strict=True) if not row.any()]
    if never:
        listed = re.search(r"never emerge</b> \(prototypes ([\d, ]+)\)", page)
        assert listed and [int(p) for p in listed.group(1).split(", ")] == never
    else:
        assert "Every prototype emerges in at least one image." in page
    assert results["emergence_min_share"] == 0.1  # the report traces with the default threshold
    assert "final\ngap is below 10% of the requested change (dashed)" in page
    # the reconstructions shown are the gallery's unedited decodes: the same as decoding anew
    inversion = invert_images(trained, images[:4], 8)
    _, mse = reconstruction(trained, inversion)
    assert results["reconstruction_mse"] == pytest.approx(mse.tolist(), abs=1e-7)
    # the extrapolation's "is" values: s_J re-encoded from decoding the same requests anew
    strongest, values = results["strongest_prototype"], results["extrapolation_values"]
    again = analyses.extrapolation(trained, inversion, strongest, torch.tensor(values))
    with torch.no_grad():
        reached = trained.encode(again)[:, strongest]
    np.testing.assert_allclose(results["extrapolation_reached"], reached, rtol=0, atol=1e-4)
    tolerance = 0.1 * (max(values) - min(values))
    followed = sum(abs(float(r) - v) <= tolerance for v, r in zip(values, reached, strict=True))
    assert f"the decoded images follow {followed} of {len(values)} values" in page
    bound = results["bounds"][results["prototypes"].index(strongest)]
    consistent = analyses.consistency(trained, inversion, strongest, bound)
    np.testing.assert_allclose(results["consistency_reached"], consistent.activation, atol=1e-4)


def test_extrapolation_sentence_names_the_values_not_followed():
    from patronus.interpret.report_page import _extrapolation_reach

    assert _extrapolation_reach([0.0, 5.0, 10.0], [0.5, 5.0, 9.5]) == (
        "the decoded images follow 3 of 3 values to within a tenth of the range."
    )
    assert _extrapolation_reach([0.0, 5.0, 10.0], [0.5, 3.9, 4.0]) == (
        "the decoded images follow 1 of 3 values to within a tenth of the range; the others "
        "(asked 5.00, 10.00) come out at 3.90, 4.00, so those frames do not show s_J at the value "
        "above them."
    )


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("steps", 0, "steps must be >= 1"),
        ("nearest_k", 0, "nearest_k must be >= 1"),
        ("quantile", 1.5, r"quantile must be in \(0, 1\]"),
        ("emergence_fraction", 0.0, r"emergence_fraction must be in \(0, 1\]"),
        ("edit_guidance", float("nan"), "edit_guidance must be finite"),
        ("edit_guidance", 0.0, r"edit_guidance must be > 0 \(1: plain edits\), got 0.0"),
        ("sampler", "euler", "sampler must be one of"),
    ],
)
def test_report_options_are_checked_when_made(field, value, match):
    """Not minutes into a report, where they failed inside torch or went unnoticed."""
    with pytest.raises(ValueError, match=match):
        ReportOptions(**{field: value})


def test_report_refuses_a_single_image_before_any_work(trained, test_set, tmp_path):
    _, images, _ = test_set
    inputs = ReportInputs(images[:1], images[100:164], images[164:200], {"model": "test"})
    with pytest.raises(ValueError, match=r"needs 2 or more, got 1 \(num_images=8, 1 given\)"):
        build_report(trained, inputs, tmp_path / "report", ReportOptions(steps=2))
    assert not (tmp_path / "report").exists()


def test_report_with_edits_in_region_says_so(trained, test_set, tmp_path):
    _, images, _ = test_set
    inputs = ReportInputs(images[:4], images[100:228], images[228:300], {"model": "test"})
    options = ReportOptions(num_images=4, steps=8, prototypes=(0, 1), nearest_k=3, edit_region=True)
    page = build_report(trained, inputs, tmp_path / "report", options).read_text()
    results = json.loads((tmp_path / "report" / "results.json").read_text())
    assert results["edit_fidelity"]["confined_to_box"] is True
    assert results["options"]["edit_region"] is True
    assert "not judged: edits decoded confined to the box" in page
    assert "gallery edits confined to the prototype" in page
    assert "outside it every edit is the unedited decode" in page


def test_report_with_prototype_guided_edits_says_so(trained, test_set, tmp_path):
    """Guided edits are not judged as the model's: the headline, the facts and the gallery's
    text say the edits were guided, and results.json records the settings."""
    from patronus.interpret.prototype_guidance import PrototypeGuidance

    _, images, _ = test_set
    inputs = ReportInputs(images[:4], images[100:228], images[228:300], {"model": "test"})
    guidance = PrototypeGuidance(strength=12.5)
    options = ReportOptions(
        num_images=4, steps=8, prototypes=(0, 1), nearest_k=3, prototype_guidance=guidance
    )
    page = build_report(trained, inputs, tmp_path / "report", options).read_text()
    results = json.loads((tmp_path / "report" / "results.json").read_text())
    assert results["edit_fidelity"]["prototype_guided"] is True
    assert results["options"]["prototype_guidance"] == guidance.settings()
    assert "Not judged here: the edits were guided by each prototype's own gradient" in page
    assert "yes: nudges of the predicted clean image totalling 12.5 (L2) over t &lt;= 0.5 T" in page
    assert "They show the pattern the prototype layer responds to" in page
    assert "Extrapolation and consistency below are guided the same way" in page
    assert page.count("Guided by the prototype's gradient towards the value s_J was set to") == 2
    assert "<th>these guided edits</th>" in page and "<th>this model</th>" not in page


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(
    CHROMIUM is None, reason="Debian chromium is not installed (make test installs it)"
)
def test_report_renders_in_headless_chromium(trained, test_set, tmp_path):
    path = _report(trained, test_set, tmp_path / "report")
    shot = tmp_path / "shot.png"
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
               "--no-first-run", "--disable-background-networking", "--disable-component-update",
               "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
               "--window-size=1200,4000", f"--screenshot={shot}", f"file://{path}"]  # fmt: skip
    subprocess.run(command, capture_output=True, timeout=120, check=True)
    picture = Image.open(shot).convert("RGB")
    colours = picture.getcolors(maxcolors=1_000_000)
    assert picture.size == (1200, 4000)
    assert colours is not None and len(colours) > 200  # text and figures, not a blank page
