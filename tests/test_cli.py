"""The `patronus` command end to end on tiny settings."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from patronus import load_model, save_model
from patronus.cli import main
from patronus.interpret.trust import fidelity_headline
from patronus.utils import save_grid


def test_info(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for op in ("prototype_min_distance", "prototype_distance_map", "scheduler_step", "q_sample"):
        assert op in out


def test_version_is_the_installed_distributions(capsys):
    """`patronus --version`, `patronus info` and the installed package metadata (built from
    pyproject.toml, whose version is read from patronus.__version__) name one version."""
    import importlib.metadata

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    installed = importlib.metadata.version("patronus")
    assert capsys.readouterr().out.strip() == f"patronus {installed}"
    assert main(["info"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == f"patronus {installed}"


def test_train_then_resume(tmp_path, capsys):
    flags = "--preset synthetic-tiny --dataset synthetic --limit 48 --batch-size 16 --no-progress"
    flags += " --amp off"
    common = ["train", *flags.split(), "--log-every", "1", "--out", str(tmp_path)]
    assert main([*common, "--steps", "3", "--activation-decorrelation", "0.25"]) == 0
    assert json.loads(capsys.readouterr().out)["step"] == 3
    assert main([*common, "--steps", "5", "--resume"]) == 0
    out = capsys.readouterr().out
    assert "resuming" in out and '"step": 5' in out
    rows = [json.loads(r) for r in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2, 3, 4, 5]
    # the resumed steps keep the run's terms
    assert all(row["decorrelation"] > 0 for row in rows)
    config = json.loads((tmp_path / "checkpoints" / "step_0000005" / "config.json").read_text())
    assert config["train"]["activation_decorrelation_weight"] == 0.25
    assert (tmp_path / "loss_curve.png").is_file()


def test_resume_refuses_flags_that_would_change_the_run(tmp_path, capsys):
    """--resume ignored every flag but --steps (a lower --lr trained at the old one) and wrote
    the default preset, fmnist-cpu, into the resumed run's checkpoints."""
    from PIL import Image

    for i in range(16):
        folder = tmp_path / "data" / ("cats" if i % 2 else "dogs")
        folder.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (30, 30), (15 * i, 0, 0)).save(folder / f"{i}.png")
    first = ["train", "--preset", "synthetic-tiny", "--dataset", "folder", "--limit", "16",
             "--batch-size", "8", "--no-progress", "--amp", "off", "--steps", "2"]  # fmt: skip
    run = tmp_path / "run"
    assert main([*first, "--data-dir", str(tmp_path / "data"), "--out", str(run)]) == 0
    resume = ["train", "--out", str(run), "--resume", "--no-progress"]
    for flags, message in [
        (["--lr", "1e-4"], "--lr 0.0001 (the run has 0.002)"),
        (["--preset", "fmnist-cpu"], "--preset fmnist-cpu (the run has synthetic-tiny)"),
        (["--batch-size", "4", "--seed", "3"], "--batch-size 4 (the run has 8), --seed 3"),
        (["--grad-clip", "0"], "--grad-clip 0.0 (the run has 1.0)"),
        # a flag at its parser default counts as given (it used to be indistinguishable)
        (["--amp", "auto"], "--amp auto (the run has off)"),
        (["--epochs", "2"], "--epochs applies to a new run only"),
    ]:
        assert main([*resume, "--steps", "3", *flags]) == 2, flags
        assert message in capsys.readouterr().err
    assert not (run / "checkpoints" / "step_0000003").exists()
    (tmp_path / "data").rename(tmp_path / "moved")  # the data moved: --data-dir follows it
    same = ["--preset", "synthetic-tiny", "--batch-size", "8", "--amp", "off",
            "--grad-clip", "1.0"]  # as saved (1.0 also the default)  # fmt: skip
    command = [*resume, *same, "--steps", "3", "--data-dir", str(tmp_path / "moved")]
    assert main([*command, "--num-workers", "1"]) == 0
    capsys.readouterr()
    config = json.loads((run / "checkpoints" / "step_0000003" / "config.json").read_text())
    assert config["preset"] == "synthetic-tiny" and config["data"]["name"] == "folder"
    assert config["data"]["data_dir"] == str(tmp_path / "moved")
    assert config["train"]["num_workers"] == 1 and config["train"]["learning_rate"] == 0.002


def test_train_with_cross_attention_conditioning_saves_a_model_that_loads(tmp_path, capsys):
    flags = "--preset synthetic-tiny --dataset synthetic --limit 32 --batch-size 16 --no-progress"
    args = ["train", *flags.split(), "--amp", "off", "--steps", "2", "--out", str(tmp_path)]
    assert main([*args, "--prototype-conditioning", "cross_attention"]) == 0
    capsys.readouterr()
    model = load_model(tmp_path)
    assert model.config.unet.prototype_conditioning == "cross_attention"
    assert hasattr(model.unet.encoder_blocks[0], "prototype_attention")
    s = torch.zeros(2, model.num_prototypes)
    assert model.sample(s, 2, generator=torch.Generator().manual_seed(0)).shape[0] == 2


def test_train_init_from_fine_tunes_a_trained_model(tiny_run, tmp_path, capsys):
    flags = "--preset synthetic-tiny --dataset synthetic --limit 48 --batch-size 16 --no-progress"
    common = ["train", *flags.split(), "--amp", "off", "--log-every", "1"]
    out = tmp_path / "tuned"
    args = [*common, "--init-from", str(tiny_run), "--out", str(out), "--steps", "2"]
    args += ["--edit-consistency", "0.5", "--edit-consistency-max-t", "150", "--lr", "1e-9"]
    args += ["--freeze-prototypes"]
    assert main(args) == 0
    capsys.readouterr()
    source, tuned = load_model(tiny_run), load_model(out, ema=False)
    assert source.config == tuned.config
    # a learning rate of 1e-9 leaves the source's weights (its EMA ones) all but unchanged
    for name, value in source.state_dict().items():
        torch.testing.assert_close(tuned.state_dict()[name], value, atol=1e-6, rtol=0)
    config = json.loads((out / "checkpoints" / "step_0000002" / "config.json").read_text())
    assert config["init_from"] == str(tiny_run)
    assert config["train"]["edit_consistency_weight"] == 0.5
    assert config["train"]["edit_consistency_max_timestep"] == 150
    assert config["train"]["freeze_prototypes"] is True
    rows = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(row["consistency"] > 0 for row in rows)
    # resuming keeps where the run came from
    assert main([*common, "--out", str(out), "--steps", "3", "--resume"]) == 0
    config = json.loads((out / "checkpoints" / "step_0000003" / "config.json").read_text())
    assert config["init_from"] == str(tiny_run)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--activation", "log"], "--activation would change it"),
        (["--resume"], "starts a new run"),
        (["--init-from", "missing"], "does not exist"),
    ],
)
def test_train_init_from_refuses_contradictions(tiny_run, tmp_path, capsys, extra, message):
    args = ["train", "--preset", "synthetic-tiny", "--init-from", str(tiny_run)]
    assert main([*args, "--out", str(tmp_path / "run"), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_train_falls_back_to_synthetic_with_a_message(tmp_path, capsys):
    args = [
        "train",
        "--preset",
        "fmnist-cpu",
        "--data-dir",
        str(tmp_path / "missing"),
        "--fallback-synthetic",
        "--limit",
        "64",
        "--steps",
        "1",
        "--batch-size",
        "32",
        "--out",
        str(tmp_path / "run"),
        "--no-progress",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "Fashion-MNIST" in out and "falling back to the synthetic shapes dataset" in out
    config = json.loads(
        (tmp_path / "run" / "checkpoints" / "step_0000001" / "config.json").read_text()
    )
    assert config["data"]["name"] == "synthetic"


def test_train_without_data_is_a_clear_error(tmp_path, capsys):
    code = main(
        [
            "train",
            "--preset",
            "fmnist-cpu",
            "--data-dir",
            str(tmp_path / "missing"),
            "--out",
            str(tmp_path / "run"),
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "Expected layout" in err


def test_sample_from_images_dataset_and_activation_files(tiny_run, tmp_path):
    images = torch.rand(3, 3, 24, 24) * 2 - 1
    for i in range(3):
        save_grid(images[i : i + 1], tmp_path / "in" / f"{i}.png", padding=0)
    out = tmp_path / "from_images"
    assert (
        main(
            [
                "sample",
                str(tiny_run),
                "--images",
                str(tmp_path / "in"),
                "--steps",
                "3",
                "--variations",
                "2",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    saved = load_file(out / "samples.safetensors")
    assert saved["samples"].shape == (3, 2, 3, 24, 24) and saved["activations"].shape == (3, 8)
    assert (out / "samples.png").is_file()
    out = tmp_path / "from_dataset"
    assert (
        main(
            [
                "sample",
                str(tiny_run),
                "--dataset",
                "synthetic",
                "--num",
                "4",
                "--steps",
                "2",
                "--sampler",
                "ddim",
                "--eta",
                "0.5",
                "--clip",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    activations = load_file(out / "samples.safetensors")["activations"]
    for suffix in ("pt", "npy", "safetensors"):
        path = tmp_path / f"s.{suffix}"
        if suffix == "pt":
            torch.save(activations, path)
        elif suffix == "npy":
            np.save(path, activations.numpy())
        else:
            save_file({"activations": activations}, path)
        target = tmp_path / f"from_{suffix}"
        assert (
            main(
                [
                    "sample",
                    str(tiny_run),
                    "--activations",
                    str(path),
                    "--steps",
                    "2",
                    "--out",
                    str(target),
                ]
            )
            == 0
        )
        assert load_file(target / "samples.safetensors")["samples"].shape == (4, 1, 3, 24, 24)


def test_sample_defaults_to_the_training_dataset_test_split(tiny_run, tmp_path):
    out = tmp_path / "default"
    assert main(["sample", str(tiny_run), "--num", "2", "--steps", "2", "--out", str(out)]) == 0
    assert load_file(out / "samples.safetensors")["samples"].shape == (2, 1, 3, 24, 24)


def test_sample_with_dpm_solver_is_the_models_solver(tiny_run, tmp_path):
    from patronus import load_model

    out = tmp_path / "dpm"
    command = ["sample", str(tiny_run), "--num", "2", "--steps", "4", "--sampler", "dpmpp-2m"]
    assert main([*command, "--seed", "3", "--out", str(out)]) == 0
    saved = load_file(out / "samples.safetensors")
    model = load_model(tiny_run)
    x_T = model.initial_noise(2, torch.Generator().manual_seed(3))
    expected = model.sample(saved["activations"], 4, sampler="dpmpp-2m", x_T=x_T)
    torch.testing.assert_close(saved["samples"][:, 0], expected, atol=1e-3, rtol=1e-3)
    ddim = model.sample(saved["activations"], 4, sampler="ddim", x_T=x_T)
    assert (saved["samples"][:, 0] - ddim).abs().max() > 1e-2  # the solver named was used


def test_sample_refuses_steps_with_ddpm_which_runs_every_step(tiny_run, tmp_path, capsys):
    """--steps 3 with --sampler ddpm ran all 1000 steps without a word about the 3."""
    out = tmp_path / "ddpm"
    command = ["sample", str(tiny_run), "--num", "1", "--sampler", "ddpm", "--no-progress"]
    assert main([*command, "--steps", "3", "--out", str(out)]) == 2
    assert "--steps 3 does not apply to --sampler ddpm" in capsys.readouterr().err
    assert not out.exists()
    assert main([*command, "--out", str(out)]) == 0
    assert "1000 ddpm network calls" in capsys.readouterr().err


def test_sample_and_invert_decode_in_batches_as_one_batch(tiny_run, tmp_path, monkeypatch,
                                                          capsys):  # fmt: skip
    """--batch-size chunks the decoding (10000 samples were one network batch); chunks decode
    what one batch does, and the grids show at most GRID_COLUMNS images side by side."""
    from PIL import Image

    import patronus.cli.generate as generate

    monkeypatch.setattr(generate, "GRID_COLUMNS", 3)
    common = ["--num", "5", "--steps", "3", "--no-progress"]
    outputs = {}
    for batch in ("256", "2"):
        for command in ("sample", "invert"):
            out = tmp_path / f"{command}{batch}"
            assert main([command, str(tiny_run), *common, "--batch-size", batch,
                         "--out", str(out)]) == 0  # fmt: skip
            name = "samples" if command == "sample" else "latents"
            outputs[command, batch] = load_file(out / f"{name}.safetensors")
            grid = Image.open(out / ("samples.png" if command == "sample" else
                                     "reconstructions.png"))  # fmt: skip
            assert grid.width < 4 * (24 + 2) + 2 < 5 * 24  # 3 columns of 24-pixel images
    for command in ("sample", "invert"):
        for key, value in outputs[command, "256"].items():
            torch.testing.assert_close(outputs[command, "2"][key], value, atol=1e-4, rtol=1e-4)
    assert "samples (the first 3 of 5; all in samples.safetensors)" in capsys.readouterr().out


def test_reconstruct_warns_when_the_decodes_do_not_reproduce_the_images(tiny_run, tmp_path,
                                                                  monkeypatch, capsys):  # fmt: skip
    """Too few inversion steps decode to other images (values far outside [-1, 1] for the tiny
    model at 3 steps, which the PNG clips): the command says so instead of nothing."""
    import patronus.interpret.trust as trust

    command = ["reconstruct", str(tiny_run), "--num", "2", "--steps", "3", "--no-progress"]
    for bar, warned in ((trust.RECONSTRUCTION_BAR, True), (float("inf"), False)):
        monkeypatch.setattr(trust, "RECONSTRUCTION_BAR", bar)
        assert main([*command, "--out", str(tmp_path / str(bar))]) == 0
        captured = capsys.readouterr()
        per_image = json.loads(captured.out.strip().splitlines()[-1])["per_image_mse"]
        assert min(per_image) > 10
        warning = "warning: the reconstructions do not reproduce the images (median MSE"
        assert (warning in captured.err) == warned
        assert ("try more --steps (e.g. 50)" in captured.err) == warned


@pytest.mark.parametrize("command", ["invert", "reconstruct"])
def test_invert_and_reconstruct(tiny_run, tmp_path, command, capsys):
    out = tmp_path / command
    assert (
        main(
            [
                command,
                str(tiny_run),
                "--dataset",
                "synthetic",
                "--num",
                "3",
                "--steps",
                "4",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["images"] == 3
    assert json.loads((out / "reconstruction.json").read_text()) == report
    latents = load_file(out / "latents.safetensors")
    assert latents["x_T"].shape == (3, 3, 24, 24)
    assert (out / "reconstructions.png").is_file()
    # each image's MSE is its saved latents' DDIM decode against the dataset's image
    from patronus import load_model
    from patronus.data.registry import build_dataset

    model = load_model(tiny_run)
    dataset = build_dataset("synthetic", None, "test", 24, 3, seed=0)
    images = torch.stack([dataset[i][0] for i in range(3)])
    with torch.no_grad():
        decoded = model.sample(latents["activations"], 4, x_T=latents["x_T"], sampler="ddim")
    expected = (decoded - images).square().flatten(1).mean(1)
    assert report["per_image_mse"] == pytest.approx(expected.tolist(), rel=1e-4, abs=1e-6)
    assert report["reconstruction_mse"] == pytest.approx(expected.mean().item(), rel=1e-4)


def test_user_errors_exit_2_with_a_message(tiny_run, tmp_path, capsys):
    assert main(["sample", str(tmp_path), "--dataset", "synthetic", "--out", str(tmp_path)]) == 2
    assert "neither a checkpoint folder" in capsys.readouterr().err
    bare = tmp_path / "bare"
    save_model(load_model(tiny_run), bare)
    assert main(["sample", str(bare), "--out", str(tmp_path / "x")]) == 2
    assert "names no dataset" in capsys.readouterr().err
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((2, 5), dtype=np.float32))
    assert (
        main(["sample", str(tiny_run), "--activations", str(bad), "--out", str(tmp_path / "y")])
        == 2
    )
    assert "must be (B, 8)" in capsys.readouterr().err
    # eta > 0 with the default (deterministic) sampler: refused before any folder is made
    assert main(["sample", str(tiny_run), "--eta", "0.5", "--out", str(tmp_path / "e")]) == 2
    assert 'eta > 0 needs sampler="ddim"' in capsys.readouterr().err
    assert not (tmp_path / "e").exists()
    assert (
        main(
            [
                "invert",
                str(tiny_run),
                "--images",
                str(tmp_path / "nope.png"),
                "--out",
                str(tmp_path / "z"),
            ]
        )
        == 2
    )
    assert "no such image" in capsys.readouterr().err


def test_every_flag_has_help_and_the_description_is_plain_text():
    import argparse

    from patronus.cli import build_parser

    missing = []

    def walk(parser, path):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    assert sub.description, f"patronus {' '.join([*path, name])} has no description"
                    walk(sub, [*path, name])
            elif not action.help:
                missing.append(f"{' '.join(path)} {action.option_strings or action.dest}")

    parser = build_parser()
    walk(parser, [])
    assert missing == []
    assert "``" not in parser.description and "`" not in parser.format_help()


def test_a_bug_shows_its_traceback_instead_of_a_user_error(tiny_run, tmp_path, monkeypatch):
    """Only the project's own errors exit 2 with one line; an internal ValueError propagates."""
    from patronus.cli import generate

    def broken(args):
        raise ValueError("an internal bug")

    monkeypatch.setattr(generate, "sample", broken)
    with pytest.raises(ValueError, match="an internal bug"):
        main(["sample", str(tiny_run), "--out", str(tmp_path / "o")])


def test_sample_precision_flag_sets_the_denoisers_arithmetic(tiny_run, tmp_path):
    from patronus import load_model

    out = tmp_path / "bf16"
    command = ["sample", str(tiny_run), "--num", "2", "--steps", "3", "--precision", "bf16"]
    assert main([*command, "--seed", "4", "--out", str(out)]) == 0
    saved = load_file(out / "samples.safetensors")
    model = load_model(tiny_run)
    x_T = model.initial_noise(2, torch.Generator().manual_seed(4))
    fp32 = model.sample(saved["activations"], 3, x_T=x_T)
    bf16 = model.set_precision("bf16").sample(saved["activations"], 3, x_T=x_T)
    torch.testing.assert_close(saved["samples"][:, 0], bf16, atol=1e-3, rtol=1e-3)
    assert not torch.equal(bf16, fp32)


def test_visualize_with_edits_in_region(tiny_run, tmp_path):
    out = tmp_path / "v"
    command = ["visualize", str(tiny_run), "--num-images", "2", "--steps", "2", "--prototypes",
               "0", "1", "--reference-size", "8", "--pool-size", "8", "--no-progress"]  # fmt: skip
    assert main([*command, "--edit-region", "--out", str(out)]) == 0
    numbers = json.loads((out / "visualize.json").read_text())
    assert numbers["edit_fidelity"]["confined_to_box"] is True
    described = Image.open(out / "what_where.png").text["Description"]
    assert described == fidelity_headline(numbers["edit_fidelity"])
    assert main([*command, "--out", str(tmp_path / "plain")]) == 0
    plain = json.loads((tmp_path / "plain" / "visualize.json").read_text())
    assert plain["edit_fidelity"]["confined_to_box"] is False
    # the unedited decodes do not depend on how the edits were decoded
    assert len(plain["reconstruction_mse"]) == 2 and min(plain["reconstruction_mse"]) > 0
    assert numbers["reconstruction_mse"] == pytest.approx(plain["reconstruction_mse"], abs=1e-7)
    assert plain["edit_fidelity"]["prototype_guided"] is False
    guided = tmp_path / "guided"
    assert main([*command, "--prototype-guidance", "3", "--out", str(guided)]) == 0
    numbers = json.loads((guided / "visualize.json").read_text())
    assert numbers["edit_fidelity"]["prototype_guided"] is True
    assert numbers["prototype_guidance"] == {"strength": 3.0, "smoothing": 1, "late_fraction": 0.5}
    assert plain["prototype_guidance"] is None
    assert main([*command, "--prototype-guidance", "--out", str(tmp_path / "default")]) == 0
    numbers = json.loads((tmp_path / "default" / "visualize.json").read_text())
    assert numbers["prototype_guidance"]["strength"] == 15.0
    assert numbers["reconstruction_mse"] == pytest.approx(plain["reconstruction_mse"], abs=1e-7)
    with pytest.raises(SystemExit):
        main([*command, "--prototype-guidance", "0", "--out", str(tmp_path / "bad")])


def test_trace_writes_the_emergence_curves_and_names_what_never_emerges(tiny_run, tmp_path, capsys):
    """`patronus trace`: the figure, the numbers (JSON) and the curves (NPZ) agree with each other,
    and the last line says how many prototypes emerge and which never do."""
    out = tmp_path / "when"
    command = ["trace", str(tiny_run), "--num-images", "3", "--steps", "4", "--prototypes", "0",
               "2", "5", "--reference-size", "16", "--no-progress", "--out", str(out)]  # fmt: skip
    assert main(command) == 0
    numbers = json.loads((out / "emergence.json").read_text())
    arrays = np.load(out / "emergence.npz")
    assert numbers["prototypes"] == [0, 2, 5]
    emerged_t = np.asarray(numbers["emergence_t"])
    assert emerged_t.shape == (3, 3)
    np.testing.assert_array_equal(emerged_t, arrays["emergence_t"])
    never = [p for p, row in zip([0, 2, 5], emerged_t, strict=True) if (row < 0).all()]
    assert numbers["never_emerging"] == never
    # an emergence step is a traced timestep, only where the final gap reaches 10% of the request
    final_gap = arrays["edit"][-1] - arrays["reference"][-1]
    reached = final_gap > 0.1 * arrays["requested"]
    assert ((emerged_t >= 0) <= reached).all()
    assert set(emerged_t[emerged_t >= 0].tolist()) <= set(arrays["timesteps"].tolist())
    assert (out / "when.png").stat().st_size > 1000
    said = capsys.readouterr().err
    twice = [*command[:7], "2", "0", "2", *command[10:-1], str(tmp_path / "twice")]
    assert main(twice) == 2  # the figure showed prototype 2 twice
    assert "--prototypes lists 2 more than once" in capsys.readouterr().err
    assert not (tmp_path / "twice").exists()
    assert f"emergence: {3 - len(never)} of 3 prototypes emerge in at least one of 3 images" in said
    if never:
        assert f"never: {', '.join(map(str, never))}" in said
    # the figure says it too (printed below the curves, and in the PNG's Description), with the
    # caution of 4-step decodes that do not reproduce their images: when.png alone is not misread
    sentence = next(line for line in said.splitlines() if line.startswith("emergence: "))
    assert "do not reproduce the images" in sentence
    assert Image.open(out / "when.png").text["Description"] == sentence


def test_report_command_writes_the_page_and_says_the_verdicts(tiny_run, tmp_path, capsys):
    """`patronus report`: the options given reach results.json, the page is written, and the
    command ends with the emergence sentence and the fidelity headline, then where to open it."""
    out = tmp_path / "report"
    command = ["report", str(tiny_run), "--num-images", "2", "--steps", "3", "--prototypes", "1",
               "3", "--reference-size", "16", "--pool-size", "8", "--quantile", "0.9",
               "--no-progress", "--out", str(out)]  # fmt: skip
    assert main(command) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["prototypes"] == [1, 3]
    options = results["options"]
    assert (options["num_images"], options["steps"], options["quantile"]) == (2, 3, 0.9)
    assert options["prototype_guidance"] is None and options["edit_region"] is False
    assert results["info"]["images"] == "the first 2 test images"  # which images it explains
    page = (out / "report.html").read_text()
    assert "the first 2 test images" in page
    assert "Can these explanations be trusted?" in page
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert lines[-2].startswith("emergence: ") and " of 2 prototypes emerge" in lines[-2]
    assert lines[-1].startswith("edit fidelity: median ")
    # each figure of an edit carries its verdict, as the page does
    assert Image.open(out / "when.png").text["Description"] == lines[-2]
    for edits in ("what_where.png", "extrapolation.png", "consistency.png"):
        assert Image.open(out / edits).text["Description"] == lines[-1]
    assert captured.out.strip().splitlines()[-1] == f"open {out / 'report.html'}"


def test_report_needs_two_images_and_says_so(tiny_run, tmp_path, capsys):
    """The report interpolates between two images: one is refused where it is parsed (it
    crashed with a traceback after the edits), while visualize and trace take one."""
    out = tmp_path / "report"
    with pytest.raises(SystemExit) as exit_info:
        main(["report", str(tiny_run), "--num-images", "1", "--out", str(out)])
    assert exit_info.value.code == 2
    assert "--num-images: expected an integer >= 2, got 1" in capsys.readouterr().err
    assert not out.exists()
    command = ["visualize", str(tiny_run), "--num-images", "1", "--steps", "2", "--prototypes",
               "0", "--reference-size", "8", "--pool-size", "4", "--no-progress"]  # fmt: skip
    assert main([*command, "--out", str(tmp_path / "one")]) == 0


def test_a_split_the_dataset_lacks_is_a_user_error(tiny_run, tmp_path, capsys):
    """`--split valid` on Fashion-MNIST was a ValueError traceback from the loader."""
    command = ["sample", str(tiny_run), "--split", "valid", "--num", "1", "--steps", "1"]
    assert main([*command, "--out", str(tmp_path / "s")]) == 2
    assert "--split valid: synthetic has the splits train, test" in capsys.readouterr().err
