"""Prototype conditioning for diffusers UNets (the real diffusers classes): a UNet2DModel and a
UNet2DConditionModel as Patronus denoisers train with our Trainer and with a plain loop, sample,
go through checkpoints, and the whole interpretability report runs on one of them."""

import json

import pytest
import torch

diffusers = pytest.importorskip("diffusers", reason="diffusers is an optional extra")

from patronus import Patronus, load_model  # noqa: E402
from patronus.data import SyntheticShapes  # noqa: E402
from patronus.interpret.report import ReportInputs, ReportOptions, build_report  # noqa: E402
from patronus.models import PatronusConfig  # noqa: E402
from patronus.models.diffusers_denoiser import DiffusersDenoiser  # noqa: E402
from patronus.models.presets import get_preset  # noqa: E402
from patronus.train import TrainConfig, Trainer  # noqa: E402

BASE = get_preset("synthetic-tiny").model  # 3 x 24 x 24 images, 10 prototypes
COMMON = {"sample_size": 24, "in_channels": 3, "out_channels": 3, "block_out_channels": (16, 32),
          "layers_per_block": 1, "norm_num_groups": 8}  # fmt: skip
UNETS = {
    "UNet2DModel": {**COMMON, "down_block_types": ("DownBlock2D", "DownBlock2D"),
                    "up_block_types": ("UpBlock2D", "UpBlock2D")},
    "UNet2DConditionModel": {**COMMON, "cross_attention_dim": 16, "attention_head_dim": 4,
                             "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
                             "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D")},
}  # fmt: skip


def config_of(unet_class: str) -> PatronusConfig:
    return BASE.replace(diffusers_unet={"class": unet_class, "config": UNETS[unet_class]})


@pytest.fixture(scope="module", params=list(UNETS))
def trained_run(request, tmp_path_factory):
    """60 steps of our Trainer (fp32) on synthetic shapes; (run folder, metrics rows)."""
    run = tmp_path_factory.mktemp(request.param)
    torch.manual_seed(0)
    config = TrainConfig(max_steps=60, batch_size=16, learning_rate=2e-3, progress=False,
                         log_every=1, amp="off")  # fmt: skip
    dataset = SyntheticShapes(256, 24, 3, seed=1)
    Trainer(Patronus(config_of(request.param)), dataset, config, run, "cpu").fit()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return request.param, run, rows


def test_trainer_lowers_the_loss_and_the_checkpoint_loads_back(trained_run):
    unet_class, run, rows = trained_run
    losses = torch.tensor([row["loss"] for row in rows if "loss" in row])
    assert losses[-10:].mean() < 0.6 * losses[:10].mean(), losses
    model = load_model(run)
    assert isinstance(model.unet, DiffusersDenoiser)
    assert type(model.unet.unet).__name__ == unet_class
    assert model.config == config_of(unet_class)
    s = model.encode(torch.rand(2, 3, 24, 24) * 2 - 1)
    samples = model.sample(s, 5, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (2, 3, 24, 24) and torch.isfinite(samples).all()
    scheduler = diffusers.DPMSolverMultistepScheduler(trained_betas=model.schedule.betas.tolist())
    solved = model.sample(s, 5, scheduler=scheduler, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(solved).all()


def test_the_activations_condition_the_unet():
    """Different activations, different predictions: the conditioning path is wired."""
    for unet_class in UNETS:
        torch.manual_seed(0)
        model = Patronus(config_of(unet_class)).eval()
        with torch.no_grad():  # a fresh zero-initialised output layer would hide everything
            for parameter in model.unet.unet.parameters():
                parameter.add_(0.05 * torch.randn_like(parameter))
            x, t = torch.randn(2, 3, 24, 24), torch.tensor([300, 300])
            a = model(x, t, torch.zeros(2, BASE.num_prototypes))
            b = model(x, t, torch.ones(2, BASE.num_prototypes))
        assert (a - b).abs().max() > 1e-4, unet_class


def test_a_plain_training_loop_works_too():
    torch.manual_seed(0)
    model = Patronus(config_of("UNet2DModel"))
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    data = SyntheticShapes(64, 24, 3, seed=2)
    images = torch.stack([data[i][0] for i in range(64)])
    losses = []
    for step in range(40):
        x0 = images[(step * 16) % 64 :][:16]
        t = torch.randint(0, 1000, (16,))
        loss = model.training_loss(x0, t, torch.randn_like(x0))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-8:]) < 0.6 * sum(losses[:8])


@pytest.mark.parametrize("trained_run", ["UNet2DConditionModel"], indirect=True)
def test_the_report_runs_on_a_diffusers_unet_model(trained_run, tmp_path):
    unet_class, run, _ = trained_run
    model = load_model(run).eval()
    data = SyntheticShapes(200, 24, 3, seed=3)
    images = torch.stack([data[i][0] for i in range(200)])
    inputs = ReportInputs(images[:3], images[50:150], images[150:200], {"model": unet_class})
    options = ReportOptions(num_images=3, steps=6, prototypes=(0, 1), nearest_k=2)
    page = build_report(model, inputs, tmp_path / "report", options).read_text()
    assert "edit fidelity" in page.lower()
    results = json.loads((tmp_path / "report" / "results.json").read_text())
    assert results["prototypes"] == [0, 1]


def test_invalid_specs_are_refused():
    with pytest.raises(ValueError, match="diffusers_unet must be"):
        BASE.replace(diffusers_unet={"config": {}})
    with pytest.raises(ValueError, match="class must be one of"):
        Patronus(BASE.replace(diffusers_unet={"class": "UNet3DConditionModel", "config": {}}))
    wrong = {**UNETS["UNet2DModel"], "in_channels": 1, "out_channels": 1}
    with pytest.raises(ValueError, match="in/out channels"):
        Patronus(BASE.replace(diffusers_unet={"class": "UNet2DModel", "config": wrong}))


@pytest.mark.parametrize("trained_run", ["UNet2DModel"], indirect=True)
def test_a_diffusers_unet_model_is_a_patronus_pipeline_too(trained_run, tmp_path):
    from patronus.pipelines.diffusers_pipeline import PatronusPipeline

    _, run, _ = trained_run
    model = load_model(run).eval()
    PatronusPipeline.from_patronus(model).save_pretrained(tmp_path)
    loaded = PatronusPipeline.from_pretrained(tmp_path)
    assert loaded.patronus.config == model.config
    s = model.encode(torch.rand(2, 3, 24, 24) * 2 - 1)
    got = loaded(activations=s, num_inference_steps=4, output_type="pt",
                 generator=torch.Generator().manual_seed(1)).images  # fmt: skip
    expected = model.sample(s, 4, generator=torch.Generator().manual_seed(1),
                            scheduler=loaded.scheduler)  # fmt: skip
    assert torch.equal(got, (expected / 2 + 0.5).clamp(0, 1))
