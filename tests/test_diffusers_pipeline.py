"""PatronusPipeline against diffusers itself: its save/load path, its schedulers' loop written as
diffusers' pipelines write it, and the conversion of the shipped model both ways."""

from pathlib import Path

import pytest
import torch

diffusers = pytest.importorskip("diffusers", reason="diffusers is an optional extra")

from patronus import Patronus, load_model  # noqa: E402
from patronus.cli import main  # noqa: E402
from patronus.diffusion.diffusers_schedulers import (  # noqa: E402
    PatronusDDIMScheduler,
    PatronusDDPMScheduler,
)
from patronus.models import PatronusConfig  # noqa: E402
from patronus.models.presets import get_preset  # noqa: E402
from patronus.pipelines.diffusers_pipeline import PatronusDenoiser, PatronusPipeline  # noqa: E402

SHIPPED = Path(__file__).resolve().parents[1] / "assets" / "fmnist-patronus"


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Patronus(get_preset("synthetic-tiny").model).eval()


@pytest.fixture(scope="module")
def activations(model):
    images = torch.rand(2, *model.config.image_shape, generator=torch.Generator().manual_seed(1))
    return model.encode(images * 2 - 1)


def _betas(model) -> list[float]:
    return model.schedule.betas.tolist()


def _pixels(samples: torch.Tensor) -> torch.Tensor:
    return (samples / 2 + 0.5).clamp(0, 1)


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    first, second = a.state_dict(), b.state_dict()
    assert list(first) == list(second)
    for name in first:
        assert torch.equal(first[name], second[name]), name


def test_save_and_load_round_trip_bit_exactly(model, activations, tmp_path):
    pipe = PatronusPipeline.from_patronus(model, metadata={"preset": "synthetic-tiny"})
    pipe.save_pretrained(tmp_path)
    loaded = PatronusPipeline.from_pretrained(tmp_path)
    assert type(loaded.scheduler) is PatronusDDIMScheduler
    assert type(loaded.unet) is PatronusDenoiser
    assert loaded.patronus.config == model.config
    assert loaded.unet.config.metadata == {"preset": "synthetic-tiny"}
    _same_weights(loaded.patronus, model)
    outputs = [
        p(activations=activations, num_inference_steps=6, output_type="pt",
          generator=torch.Generator().manual_seed(0)).images
        for p in (pipe, loaded)
    ]  # fmt: skip
    assert torch.equal(outputs[0], outputs[1])


@pytest.mark.parametrize(
    "make_scheduler",
    [
        lambda betas: PatronusDDIMScheduler(trained_betas=betas, clip_sample=False),
        lambda betas: PatronusDDPMScheduler(trained_betas=betas),
        lambda betas: diffusers.DDPMScheduler(trained_betas=betas, variance_type="fixed_large"),
        lambda betas: diffusers.DPMSolverMultistepScheduler(trained_betas=betas),
    ],
    ids=["patronus-ddim", "patronus-ddpm", "diffusers-ddpm", "diffusers-dpm-solver"],
)
def test_pipeline_is_patronus_sample_with_its_scheduler(model, activations, make_scheduler):
    pipe = PatronusPipeline.from_patronus(model, make_scheduler(_betas(model)))
    got = pipe(activations=activations, num_inference_steps=7, output_type="pt",
               generator=torch.Generator().manual_seed(3)).images  # fmt: skip
    expected = model.sample(activations, 7, generator=torch.Generator().manual_seed(3),
                            scheduler=pipe.scheduler)  # fmt: skip
    assert torch.equal(got, _pixels(expected))


def test_the_scheduler_loop_is_diffusers_pipelines_loop(model, activations):
    """DDPMPipeline's loop, written out with diffusers' own stock scheduler and generator."""
    scheduler = diffusers.DDPMScheduler(trained_betas=_betas(model))
    generator = torch.Generator().manual_seed(5)
    x = torch.randn((2, *model.config.image_shape), generator=generator)
    scheduler.set_timesteps(9)
    with torch.no_grad():
        for t in scheduler.timesteps:
            eps = model(x, t.repeat(2), activations)
            x = scheduler.step(eps, t, x, generator=generator).prev_sample
    got = model.sample(activations, 9, generator=torch.Generator().manual_seed(5),
                       scheduler=diffusers.DDPMScheduler(trained_betas=_betas(model)))  # fmt: skip
    assert torch.equal(got, x)


def test_guidance_combines_the_outputs_before_the_step(activations):
    torch.manual_seed(0)
    config = get_preset("synthetic-tiny").model.replace(condition_dropout=0.1)
    guided_model = Patronus(config).eval()
    with torch.no_grad():
        guided_model.null_activations.normal_()
    scheduler = diffusers.DDIMScheduler(trained_betas=_betas(guided_model), clip_sample=False)
    generator = torch.Generator().manual_seed(2)
    x = torch.randn((2, *config.image_shape), generator=generator)
    null = guided_model.null_activations.expand_as(activations)
    scheduler.set_timesteps(4)
    with torch.no_grad():
        for t in scheduler.timesteps:
            level = t.repeat(2)
            out = guided_model(x, level, activations)
            out_null = guided_model(x, level, null)
            x = scheduler.step(out_null + 3.0 * (out - out_null), t, x).prev_sample
    pipe = PatronusPipeline.from_patronus(guided_model, scheduler)
    got = pipe(activations=activations, num_inference_steps=4, guidance_scale=3.0,
               output_type="pt", generator=torch.Generator().manual_seed(2)).images  # fmt: skip
    # the model evaluates both in one batched call, this loop in two: float32 rounding apart
    torch.testing.assert_close(got, _pixels(x), atol=1e-4, rtol=1e-4)


def test_encode_and_images_input(model):
    pipe = PatronusPipeline.from_patronus(model)
    images = torch.rand(3, *model.config.image_shape) * 2 - 1
    encoded = pipe.encode(images)
    expected = model.prototype_output(images)
    assert torch.equal(encoded.activations, expected.activations)
    assert torch.equal(encoded.min_distances, expected.min_distances)
    assert torch.equal(encoded.patch_index, expected.patch_index)
    from_images = pipe(images=images, num_inference_steps=3, output_type="np",
                       generator=torch.Generator().manual_seed(0)).images  # fmt: skip
    from_activations = pipe(
        activations=encoded.activations,
        num_inference_steps=3,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).images
    assert from_images.shape == (3, 24, 24, 3) and (from_images == from_activations).all()
    pil = pipe(images=images[:1], num_inference_steps=2).images
    assert len(pil) == 1 and pil[0].size == (24, 24)


def test_invalid_calls_are_refused(model, activations):
    pipe = PatronusPipeline.from_patronus(model)
    with pytest.raises(ValueError, match="either images or activations"):
        pipe(num_inference_steps=2)
    with pytest.raises(ValueError, match="output_type"):
        pipe(activations=activations, num_inference_steps=2, output_type="latent")
    scheduler = PatronusDDIMScheduler(trained_betas=_betas(model))
    with pytest.raises(ValueError, match="its config decides"):
        model.sample(activations, 2, scheduler=scheduler, sampler="ddpm")
    with pytest.raises(ValueError, match="noise schedule"):
        model.sample(activations, 2, scheduler=diffusers.DDIMScheduler(num_train_timesteps=100))
    with pytest.raises(TypeError, match="DDPM-family"):
        model.sample(activations, 2, scheduler=diffusers.EulerDiscreteScheduler.__new__(
            diffusers.EulerDiscreteScheduler))  # fmt: skip


def test_the_shipped_model_exports_and_imports_bit_exactly(tmp_path, capsys):
    pipeline, back = tmp_path / "pipeline", tmp_path / "back"
    assert main(["export-diffusers", str(SHIPPED), str(pipeline)]) == 0
    shipped = load_model(SHIPPED)  # EMA weights
    pipe = PatronusPipeline.from_pretrained(pipeline)
    _same_weights(pipe.patronus, shipped)
    assert pipe.unet.config.metadata["preset"] == "fmnist-cpu"
    assert main(["import-diffusers", str(pipeline), str(back)]) == 0
    imported = load_model(back)
    _same_weights(imported, shipped)
    assert imported.config == shipped.config
    import json

    saved = json.loads((back / "config.json").read_text())
    original = json.loads((SHIPPED / "config.json").read_text())
    # the model config in today's full form (fields added since have their defaults)
    canonical = json.loads(json.dumps(PatronusConfig.from_dict(original.pop("model")).to_dict()))
    assert saved.pop("model") == canonical
    assert saved == original  # step, training settings, preset and dataset kept
    assert main(["import-diffusers", str(tmp_path / "nothing"), str(tmp_path / "x")]) == 2
    assert "is not a pipeline folder" in capsys.readouterr().err
    # a command given the pipeline folder says what it is and how to convert it
    assert main(["sample", str(pipeline), "--num", "1", "--out", str(tmp_path / "s")]) == 2
    hint = f"{pipeline} is a diffusers pipeline folder: `patronus import-diffusers {pipeline} OUT`"
    assert hint in capsys.readouterr().err
    assert main(["export-diffusers", str(SHIPPED), str(pipeline)]) == 2  # not over files
    assert "already holds files" in capsys.readouterr().err
    # --out as in every other command (it was "unrecognized arguments: --out")
    again = tmp_path / "again"
    assert main(["import-diffusers", str(pipeline), "--out", str(again)]) == 0
    _same_weights(load_model(again), shipped)
    assert main(["export-diffusers", str(SHIPPED), str(again), "--out", str(back)]) == 2
    assert "two destinations" in capsys.readouterr().err
    # --overwrite writes into a folder; a checkpoint never replaces another's files
    (again / "notes.txt").write_text("mine")
    assert main(["import-diffusers", str(pipeline), "--out", str(again), "--overwrite"]) == 2
    assert "is not only a checkpoint (notes.txt)" in capsys.readouterr().err
    assert (again / "notes.txt").read_text() == "mine"


def test_import_refuses_damaged_and_foreign_pipeline_folders_in_one_line(tmp_path, capsys):
    """Each of these was a diffusers traceback (or, for another pipeline's unet, an
    AttributeError after loading it); nothing is written for any of them."""
    import json
    import shutil

    good = tmp_path / "good"
    assert main(["export-diffusers", str(SHIPPED), str(good)]) == 0
    capsys.readouterr()

    def damaged(name, change):
        folder = shutil.copytree(good, tmp_path / name)
        change(folder)
        return folder

    def index(folder, **changes):
        path = folder / "model_index.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))

    cases = {
        "another pipeline": (lambda f: index(f, _class_name="DDPMPipeline"),
                             "holds a DDPMPipeline pipeline, not a PatronusPipeline"),
        "another unet": (lambda f: index(f, unet=["diffusers", "UNet2DModel"]),
                         "unet must be a PatronusDenoiser (as `patronus export-diffusers` "
                         "writes), got a UNet2DModel"),
        "index not JSON": (lambda f: (f / "model_index.json").write_text("{"),
                           "is not a readable pipeline index"),
        "no unet config": (lambda f: (f / "unet" / "config.json").unlink(),
                           "holds no readable PatronusPipeline: Error no file named config.json"),
        "weights not safetensors": (
            lambda f: (f / "unet" / "diffusion_pytorch_model.safetensors").write_text("x"),
            "holds no readable PatronusPipeline: Unable to load weights"),
    }  # fmt: skip
    for number, (name, (change, message)) in enumerate(cases.items()):
        folder = damaged(f"case{number}", change)
        out = tmp_path / f"out{number}"
        assert main(["import-diffusers", str(folder), "--out", str(out)]) == 2, name
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (name, err)
        assert not out.exists(), name
