"""The activation prior, the biased CelebA subset, the attribute classifier, the evaluation CLI."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset, Subset

from patronus.cli import main
from patronus.data import CelebA
from patronus.eval.classifier import (
    ClassifierConfig,
    load_classifier,
    save_classifier,
    train_classifier,
)
from patronus.models.prior import ActivationPrior, PriorConfig, sample_prior
from patronus.train.prior import train_prior


def test_biased_celeba_subset(tmp_path):
    from test_data import write_celeba

    write_celeba(tmp_path, count=8)
    names = (tmp_path / "list_attr_celeba.txt").read_text().splitlines()[1].split()
    lines = (tmp_path / "list_attr_celeba.txt").read_text().splitlines()
    renamed = {8: "Black_Hair", 9: "Blond_Hair", 11: "Brown_Hair", 31: "Smiling"}
    names = [renamed.get(i, n) for i, n in enumerate(names)]
    cases = [  # (black, blond, brown, smiling) -> kept
        ((0, 1, 0, 1), True),
        ((0, 0, 1, 1), True),
        ((1, 0, 0, 0), True),
        ((1, 0, 0, 1), False),
        ((0, 1, 0, 0), False),
        ((0, 0, 0, 1), False),
        ((0, 0, 1, 0), False),
        ((0, 0, 0, 0), False),
    ]
    rows = []
    for line, (flags, _) in zip(lines[2:], cases, strict=True):
        fields = line.split()
        values = [-1] * 40
        for column, flag in zip((8, 9, 11, 31), flags, strict=True):
            values[column] = 1 if flag else -1
        rows.append(" ".join([fields[0], *map(str, values)]))
    (tmp_path / "list_attr_celeba.txt").write_text("\n".join([lines[0], " ".join(names), *rows]))
    kept = CelebA(tmp_path, "all", biased=True).files
    assert kept == [f"{i + 1:06d}.jpg" for i, (_, keep) in enumerate(cases) if keep]


def toy_eps(x, t):
    return torch.tanh(x * 0.5) * torch.cos(t.double() / 30).reshape(-1, 1, 1).to(x.dtype)


def test_prior_training_refuses_what_it_cannot_fit():
    prior = ActivationPrior(PriorConfig(num_prototypes=6))
    good = torch.randn(32, 6)
    bad_rows = good.clone()
    bad_rows[3, 2] = float("nan")  # trained on, it would make every weight NaN
    for activations, match in [
        (good[:, :5], r"must be \(N, 6\)"),
        (bad_rows, "must be finite"),
        (good[:1], "at least 2 rows"),
    ]:
        with pytest.raises(ValueError, match=match):
            train_prior(prior, activations, epochs=1, progress=False)
    with pytest.raises(ValueError, match="batch_size >= 1"):
        train_prior(prior, good, epochs=1, batch_size=0, progress=False)
    assert len(train_prior(prior, good, epochs=2, batch_size=16, progress=False)) == 2


def test_prior_ddim_matches_float64_equations():
    prior = ActivationPrior(PriorConfig(num_prototypes=6))
    prior.forward = toy_eps  # the network replaced by a known function
    prior.mean.fill_(0.5)
    prior.std.fill_(2.0)
    generator = torch.Generator().manual_seed(0)
    drawn = sample_prior(prior, 4, steps=10, generator=generator)
    x = torch.randn((4, 1, 6), generator=torch.Generator().manual_seed(0)).double().numpy()
    abar = np.cumprod(1 - np.linspace(1e-3, 0.2, 100))
    levels = [round(i * 99 / 9) for i in range(10)][::-1]
    for i, t in enumerate(levels):
        prev = abar[levels[i + 1]] if i + 1 < len(levels) else 1.0
        eps = toy_eps(torch.from_numpy(x), torch.full((4,), t)).numpy()
        x0 = (x - np.sqrt(1 - abar[t]) * eps) / np.sqrt(abar[t])
        x = np.sqrt(prev) * x0 + np.sqrt(1 - prev) * eps
    np.testing.assert_allclose(drawn.numpy(), x[:, 0, :] * 2.0 + 0.5, rtol=1e-4, atol=1e-4)


def test_prior_dpm_solver_is_the_samplers_solver():
    from patronus.diffusion import dpm_solver_sampling, run_sampler

    prior = ActivationPrior(PriorConfig(num_prototypes=6))
    prior.forward = toy_eps
    drawn = sample_prior(prior, 3, steps=7, generator=torch.Generator().manual_seed(0),
                         sampler="dpmpp-3m")  # fmt: skip
    x = torch.randn((3, 1, 6), generator=torch.Generator().manual_seed(0))
    expected = run_sampler(dpm_solver_sampling(toy_eps, x, prior.schedule, 7, 3))
    assert torch.equal(drawn, prior.denormalise(expected))


def test_prior_original_sampler_renoises_with_fresh_noise():
    prior = ActivationPrior(
        PriorConfig(num_prototypes=3, timesteps=5, beta_start=0.1, beta_end=0.5)
    )
    prior.forward = toy_eps
    drawn = sample_prior(prior, 2, generator=torch.Generator().manual_seed(1), sampler="original")
    generator = torch.Generator().manual_seed(1)
    x = torch.randn((2, 1, 3), generator=generator)
    abar = torch.cumprod(1 - torch.linspace(0.1, 0.5, 5, dtype=torch.float64), 0)
    for t in range(4, -1, -1):
        eps = toy_eps(x, torch.full((2,), t))
        prev = float(abar[t - 1]) if t > 0 else 1.0
        x0 = (x - (1 - float(abar[t])) ** 0.5 * eps) / float(abar[t]) ** 0.5
        noise = torch.randn(x.shape, generator=generator) if t > 0 else 0.0
        x = prev**0.5 * x0 + (1 - prev) ** 0.5 * noise
    torch.testing.assert_close(drawn, x[:, 0, :])
    with pytest.raises(ValueError, match="sampler must be"):
        sample_prior(prior, 1, sampler="euler")
    with pytest.raises(ValueError, match="count must be >= 1, got -1"):  # a torch error before
        sample_prior(prior, -1)


def test_distances_feed_the_extractor_in_batches_with_a_progress_bar(capsys):
    from patronus.eval.generation import distances

    seen = []

    def extractor(chunk):
        seen.append((chunk.device.type, len(chunk)))
        return chunk.flatten(1)[:, :5]

    generated, reference = torch.rand(300, 1, 4, 4), torch.rand(10, 1, 4, 4)
    result = distances(extractor, generated, reference, device="cpu", progress=True)
    assert seen == [("cpu", 256), ("cpu", 44), ("cpu", 10)]
    assert (result["generated"], result["reference"], result["feature_dim"]) == (300, 10, 5)
    printed = capsys.readouterr().err
    assert "features of generated" in printed and "features of reference" in printed


def test_classifier_round_trip(tmp_path):
    config = ClassifierConfig(1, 16, 3)
    images, labels = torch.randn(8, 1, 16, 16), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    model = train_classifier(config, [(images, labels)], 3)
    loaded = load_classifier(save_classifier(model, tmp_path / "c"))
    torch.testing.assert_close(loaded(images), model(images))
    assert loaded.embed(images).shape == (8, 128)


@pytest.fixture(scope="module")
def shortcut_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("cli_run")
    assert (
        main(
            [
                "train",
                "--preset",
                "synthetic-tiny",
                "--dataset",
                "synthetic-shortcut",
                "--limit",
                "256",
                "--steps",
                "40",
                "--batch-size",
                "32",
                "--lr",
                "2e-3",
                "--amp",
                "off",
                "--out",
                str(run),
                "--no-progress",
            ]
        )
        == 0
    )
    return run


def test_evaluation_commands_end_to_end(shortcut_run, tmp_path, capsys):
    run = str(shortcut_run)
    before = {p: p.stat().st_mtime for p in Path(run).rglob("*")}
    assert (
        main(
            [
                "evaluate",
                "probes",
                run,
                "--limit",
                "200",
                "--out",
                str(tmp_path / "p"),
                "--no-progress",
            ]
        )
        == 0
    )
    probes = json.loads((tmp_path / "p" / "probes.json").read_text())
    assert probes["probes"]["colour"]["metric"] == "accuracy"
    assert probes["probes"]["background"]["metric"] == "roc_auc" and "tad" in probes
    assert (
        main(
            [
                "diagnose",
                run,
                "--target",
                "shape=square",
                "--limit",
                "300",
                "--num-images",
                "8",
                "--steps",
                "4",
                "--classifier-steps",
                "10",
                "--out",
                str(tmp_path / "d"),
                "--no-progress",
            ]
        )
        == 0
    )
    assert (tmp_path / "d" / "diagnosis.html").is_file()
    prior = str(tmp_path / "prior")
    assert main(["train-prior", run, "--epochs", "2", "--limit", "128", "--no-progress",
                 "--out", prior]) == 0  # fmt: skip
    assert (
        main(
            [
                "sample",
                run,
                "--unconditional",
                "--prior",
                prior,
                "--num",
                "4",
                "--steps",
                "3",
                "--out",
                str(tmp_path / "u"),
            ]
        )
        == 0
    )
    # samples without originals or variations wrap, 16 to a row (4 here: one row of 4)
    from PIL import Image

    assert "samples.png: 4 samples, 4 per row" in capsys.readouterr().out
    grid = Image.open(tmp_path / "u" / "samples.png")
    assert grid.width > 4 * 24 > grid.height > 24
    assert (
        main(
            [
                "evaluate",
                "fid",
                run,
                "--num",
                "32",
                "--steps",
                "3",
                "--unconditional",
                "--prior",
                prior,
                "--classifier-steps",
                "5",
                "--out",
                str(tmp_path / "f"),
                "--no-progress",
            ]
        )
        == 0
    )
    fid = json.loads((tmp_path / "f" / "fid.json").read_text())
    assert fid["fid"] >= 0 and fid["generated"] == 32
    assert len(list((tmp_path / "f" / "samples").glob("*.png"))) == 32
    captured = capsys.readouterr()
    printed = captured.out
    from patronus.eval.classifier import load_classifier

    embedded = load_classifier(tmp_path / "f" / "classifier").embed(torch.zeros(1, 3, 24, 24))
    assert fid["feature_dim"] == embedded.shape[1] > 32  # so the note on the bias is printed
    assert f"fewer than the {fid['feature_dim']} feature dimensions" in captured.err
    assert f"wrote 32 files in {tmp_path / 'f' / 'samples'}/" in printed
    assert f"wrote {tmp_path / 'f' / 'fid.json'}" in printed
    # the distances are those of the PNGs written (8-bit, as pytorch-fid reads a folder), read
    # back by the folder loader, against the first 32 test images
    from patronus import load_model
    from patronus.cli.loading import dataset_builder
    from patronus.data import ImageFolder
    from patronus.eval.generation import distances

    written = ImageFolder(tmp_path / "f" / "samples", image_size=24)
    _, build = dataset_builder(Path(run), load_model(run))
    reference = build("test")
    recomputed = distances(
        load_classifier(tmp_path / "f" / "classifier").embed,
        torch.stack([written[i][0] for i in range(32)]),
        torch.stack([reference[i][0] for i in range(32)]),
    )
    assert fid["fid"] == pytest.approx(recomputed["fid"], rel=1e-6)
    assert fid["kid"] == pytest.approx(recomputed["kid"], rel=1e-5, abs=1e-9)
    # nothing was written into the checkpoint's run folder
    assert {p: p.stat().st_mtime for p in Path(run).rglob("*")} == before


def test_evaluation_errors(shortcut_run, tiny_run, capsys):
    assert main(["diagnose", str(shortcut_run), "--target", "hair=blond", "--limit", "50"]) == 2
    assert "unknown binary attribute" in capsys.readouterr().err
    assert main(["evaluate", "fid", str(tiny_run), "--unconditional", "--num", "4"]) == 2
    assert "train-prior" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # one image has no covariance (it crashed after sampling)
        main(["evaluate", "fid", str(tiny_run), "--num", "1"])
    assert "--num: expected an integer >= 2, got 1" in capsys.readouterr().err
    from patronus import load_model, save_model

    missing = shortcut_run.parent / "missing_data"
    save_model(
        load_model(tiny_run),
        missing,
        metadata={"data": {"name": "celeba", "data_dir": "/nonexistent", "seed": 0}},
    )
    assert main(["evaluate", "probes", str(missing), "--no-progress"]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize(("split", "message"), [("test", "2 or more reference images"),
                                               ("train", "2 or more training images")])  # fmt: skip
def test_fid_refuses_a_dataset_split_of_one_image(tiny_run, tmp_path, capsys, monkeypatch, split,
                                                  message):  # fmt: skip
    import patronus.cli.evaluate as evaluate

    real = evaluate.dataset_builder

    def one_image_in_split(*args):
        spec, build = real(*args)
        return spec, lambda name: Subset(build(name), [0]) if name == split else build(name)

    monkeypatch.setattr(evaluate, "dataset_builder", one_image_in_split)
    command = ["evaluate", "fid", str(tiny_run), "--num", "4", "--steps", "2", "--no-progress"]
    assert main([*command, "--out", str(tmp_path / "f")]) == 2
    assert message in capsys.readouterr().err


def test_small_or_broken_inputs_are_user_errors_not_tracebacks(tiny_run, tmp_path, capsys):
    """Each of these crashed with a ValueError traceback from the library."""
    from patronus import load_model, save_model

    with pytest.raises(SystemExit):  # the prior normalises by a standard deviation
        main(["train-prior", str(tiny_run), "--limit", "1", "--out", str(tmp_path / "p")])
    assert "--limit: expected an integer >= 2, got 1" in capsys.readouterr().err
    probes = ["evaluate", "probes", str(tiny_run), "--limit", "3", "--no-progress"]
    assert main([*probes, "--out", str(tmp_path / "probes")]) == 2
    assert "5-fold probes need 5 or more images, got 3" in capsys.readouterr().err
    broken = load_model(tiny_run)
    with torch.no_grad():
        broken.prototype_layer.prototypes.fill_(float("nan"))
    save_model(broken, tmp_path / "nan", metadata={"data": {"name": "synthetic", "seed": 0}})
    prior = ["train-prior", str(tmp_path / "nan"), "--limit", "8", "--epochs", "1"]
    assert main([*prior, "--no-progress", "--out", str(tmp_path / "prior")]) == 2
    assert "activations of the training images hold NaN or Inf" in capsys.readouterr().err


def test_a_diagnosis_of_too_few_images_is_standard_json(tiny_run, tmp_path):
    """Three images leave every AUROC undefined: diagnosis.json says null, not NaN (which a
    browser's JSON.parse refuses)."""
    out = tmp_path / "diagnosis"
    command = ["diagnose", str(tiny_run), "--target", "shape=circle", "--limit", "3"]
    assert main([*command, "--no-progress", "--out", str(out)]) == 0

    def refuse(token):
        raise ValueError(f"not standard JSON: {token}")

    result = json.loads((out / "diagnosis.json").read_text(), parse_constant=refuse)
    assert result["suspects"] and all(not s["judged"] for s in result["suspects"])
    assert all(s["target_auroc"] is None for s in result["suspects"])


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: PriorConfig(0), "num_prototypes must be >= 1"),  # a conv error at the first call
        (lambda: PriorConfig(5, timesteps=1), "timesteps must be >= 2"),  # an IndexError
        (lambda: PriorConfig(5, beta_end=1.5), "beta_end < 1"),  # built, sampled NaN
        (lambda: PriorConfig(5, channels=12), "multiple of 8"),  # a GroupNorm error
        (lambda: ClassifierConfig(1, 16, 0), r"sizes must be >= 1, got \{'outputs': 0\}"),
        (lambda: ClassifierConfig(1, 4, 3), "image_size must be >= 8"),  # failed at the first call
    ],
)
def test_prior_and_classifier_configs_check_their_values(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_activation_prior_flags_and_a_prior_of_another_model_are_refused(tiny_run, tmp_path,
                                                                          capsys):  # fmt: skip
    """--prior without --unconditional used to be ignored (conditioned samples instead), and a
    prior trained for another model failed with a traceback after the FID classifier trained."""
    from patronus import load_model
    from patronus.models.prior import ActivationPrior, PriorConfig, save_prior

    prototypes = load_model(tiny_run).config.num_prototypes
    other = tmp_path / "other_prior"
    save_prior(ActivationPrior(PriorConfig(num_prototypes=prototypes + 3)), other)
    run = str(tiny_run)
    out = tmp_path / "out"
    common = ["--num", "4", "--steps", "2", "--no-progress", "--out", str(out)]
    refused = [
        (["sample", run, "--prior", str(other)],
         "--prior is the activation prior of --unconditional"),
        (["evaluate", "fid", run, "--prior", str(other), "--classifier-steps", "2"],
         "--prior is the activation prior of --unconditional"),
        (["sample", run, "--unconditional", "--prior", str(other)],
         f"draws {prototypes + 3} activations, but the model has {prototypes} prototypes"),
        (["evaluate", "fid", run, "--unconditional", "--prior", str(other), "--classifier-steps",
          "2"], f"draws {prototypes + 3} activations, but the model has {prototypes} prototypes"),
        (["sample", run, "--unconditional", "--dataset", "synthetic"],
         "--unconditional draws the activations from the prior: drop --dataset"),
        (["sample", run, "--activations", str(other / "prior.json"), "--images", str(other)],
         "--activations gives the activations, --images the images"),
    ]  # fmt: skip
    for command, message in refused:
        assert main(command + common) == 2, command
        assert message in capsys.readouterr().err, command
        # refused before any work: no samples, no classifier trained
        assert not out.exists() or not any(out.rglob("*")), command


def test_a_missing_optional_dependency_is_one_line_naming_the_install(
    tiny_run, tmp_path, monkeypatch, capsys
):
    """scikit-learn is an optional extra: without it the probes said so at the end of an
    ImportError traceback; now in the command's one-line error, and nothing is left behind."""
    import sys

    monkeypatch.setitem(sys.modules, "sklearn.linear_model", None)  # import fails as if absent
    out = tmp_path / "probes"
    command = ["evaluate", "probes", str(tiny_run), "--limit", "40", "--no-progress"]
    assert main([*command, "--out", str(out)]) == 2
    assert "linear probes need scikit-learn: pip install scikit-learn" in capsys.readouterr().err
    assert not out.exists()


def test_probes_refuse_images_whose_labels_never_vary(tiny_run, tmp_path, capsys, monkeypatch):
    """A folder without class folders labels every image 0: the probes wrote a probes.json of
    nulls (folds 0) as if they had measured something."""
    import patronus.cli.evaluate as evaluate
    from patronus.eval.attributes import attribute_table

    real = evaluate.dataset_builder

    class Unlabelled(Dataset):
        def __init__(self, dataset):
            self.dataset = dataset

        def __len__(self):
            return len(self.dataset)

        def __getitem__(self, index):
            image, label = self.dataset[index]
            return image, torch.zeros_like(label)

    def unlabelled(*args):
        spec, build = real(*args)
        return spec, lambda name: Unlabelled(build(name))

    monkeypatch.setattr(evaluate, "dataset_builder", unlabelled)
    out = tmp_path / "probes"
    command = ["evaluate", "probes", str(tiny_run), "--limit", "40", "--no-progress"]
    assert main([*command, "--out", str(out)]) == 2
    assert "carry no label that varies" in capsys.readouterr().err
    assert not out.exists()
    labels = torch.tensor([[0.0, 1.0], [1.0, 1.0], [float("nan"), 1.0]])
    table = attribute_table("chexpert", labels, ["a", "b"])
    assert table.varying() == ["a"]
