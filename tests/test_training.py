"""The Trainer: learning, exact resume, interruption, EMA, logs and DDP under torchrun."""

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from patronus import Patronus, load_model
from patronus.data import SyntheticShapes
from patronus.models.presets import get_preset
from patronus.train import TrainConfig, Trainer
from patronus.train.divergence import TrainingDiverged
from patronus.train.trainer import TrainingInterrupted

PRESET = get_preset("synthetic-tiny")


def make_trainer(run_dir, dataset=None, model_seed=0, **overrides):
    torch.manual_seed(model_seed)
    model = Patronus(PRESET.model)
    dataset = dataset or SyntheticShapes(96, 24, 3, seed=1)
    # fp32 (amp "auto" would pick bf16 on CPUs with it in hardware, and not on others)
    settings = {"batch_size": 16, "learning_rate": 2e-3, "progress": False, "log_every": 2,
                "amp": "off"}  # fmt: skip
    config = TrainConfig(**{**settings, **overrides})
    return Trainer(model, dataset, config, run_dir, "cpu")


@pytest.mark.slow
def test_a_few_hundred_steps_lower_the_loss_clearly(tmp_path):
    trainer = make_trainer(
        tmp_path, SyntheticShapes(512, 24, 3), max_steps=300, log_every=20, checkpoint_every=1000
    )
    trainer.fit()
    losses = [row["loss"] for row in trainer.metrics.rows()]
    assert len(losses) == 15
    first, last = sum(losses[:2]) / 2, sum(losses[-3:]) / 3
    assert last < 0.2 * first, losses


def _assert_same_weights_and_ema(straight, resumed):
    for (name, a), (_, b) in zip(
        straight.model.state_dict().items(), resumed.model.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    for name, value in straight.ema.state_dict().items():
        assert torch.equal(value, resumed.ema.state_dict()[name]), name


def test_resume_after_interruption_is_bit_exact(tmp_path):
    straight = make_trainer(tmp_path / "a", max_steps=8, ema_decay=0.9)
    straight.fit()

    def interrupt(step, row):
        if step == 4:
            raise KeyboardInterrupt

    first = make_trainer(tmp_path / "b", max_steps=8, ema_decay=0.9)
    with pytest.raises(KeyboardInterrupt):
        first.fit(on_step=interrupt)
    assert (tmp_path / "b" / "checkpoints" / "step_0000004").is_dir()
    resumed = make_trainer(tmp_path / "b", max_steps=8, ema_decay=0.9, model_seed=123)
    assert resumed.resume() == 4
    resumed.fit()
    _assert_same_weights_and_ema(straight, resumed)
    rows_a = [(r["step"], r["loss"]) for r in straight.metrics.rows()]
    rows_b = [(r["step"], r["loss"]) for r in resumed.metrics.rows()]
    assert rows_a == rows_b


def _signal_inside_step(trainer, step, count):
    """Send ``count`` SIGINTs to this process from inside training step ``step``, after the
    optimizer has updated the weights and before the EMA follows them."""
    update, calls = trainer.ema.update, []

    def update_with_signals(model):
        calls.append(1)
        if len(calls) == step:
            for _ in range(count):
                os.kill(os.getpid(), signal.SIGINT)
        update(model)

    trainer.ema.update = update_with_signals


def test_a_signal_in_the_middle_of_a_step_stops_after_it_and_resumes_bit_exactly(tmp_path):
    """Ctrl-C used to raise wherever it landed: inside a step, the checkpoint then held the new
    weights, the old EMA and the previous step's number. Now the step completes first."""
    straight = make_trainer(tmp_path / "a", max_steps=6, ema_decay=0.9, log_every=1)
    straight.fit()
    first = make_trainer(tmp_path / "b", max_steps=6, ema_decay=0.9, log_every=1)
    _signal_inside_step(first, step=3, count=1)
    with pytest.raises(TrainingInterrupted) as stopped:
        first.fit()
    assert stopped.value.signal_number == signal.SIGINT
    assert sorted(p.name for p in (tmp_path / "b" / "checkpoints").glob("step_*")) == [
        "step_0000003"
    ]
    assert [row["step"] for row in first.metrics.rows()] == [1, 2, 3]
    resumed = make_trainer(tmp_path / "b", max_steps=6, ema_decay=0.9, log_every=1, model_seed=9)
    assert resumed.resume() == 3
    resumed.fit()
    _assert_same_weights_and_ema(straight, resumed)


def test_a_second_signal_stops_at_once_and_saves_nothing_half_done(tmp_path, capsys):
    trainer = make_trainer(tmp_path, max_steps=6, ema_decay=0.9, checkpoint_every=2)
    _signal_inside_step(trainer, step=3, count=2)
    with pytest.raises(TrainingInterrupted):
        trainer.fit()
    # step 3 was cut short: only the checkpoint of step 2 exists
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*")) == ["step_0000002"]
    assert "interrupted in the middle of step 3: nothing saved" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


def _agree(rank: int, port: int, received: list[list[int]], results) -> None:
    import torch.distributed as dist

    from patronus.train.distributed import DistributedContext

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=len(received))  # fmt: skip
    try:
        context = DistributedContext(rank, len(received), torch.device("cpu"), True)
        results[rank] = context.agreed_signal(received[rank])
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("received", [[[], [15]], [[2], []], [[], []]])
def test_every_process_agrees_on_a_signal_one_of_them_received(received):
    """Under DDP a signal reaches the processes at slightly different moments: all must stop
    after the same step (a process that went on would wait in its all-reduce for ever)."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    results = mp.Manager().dict()
    mp.spawn(_agree, args=(port, received, results), nprocs=2)
    expected = max((r[0] for r in received if r), default=0)
    assert dict(results) == {0: expected, 1: expected}


def test_a_diverging_training_stops_and_keeps_its_last_good_checkpoint(tmp_path):
    make_trainer(tmp_path, max_steps=4, checkpoint_every=4, ema_decay=0.9).fit()
    checkpoints = tmp_path / "checkpoints"
    diverging = make_trainer(
        tmp_path, max_steps=16, checkpoint_every=4, ema_decay=0.9, learning_rate=1e30, grad_clip=0
    )
    assert diverging.resume() == 4
    with pytest.raises(TrainingDiverged, match=r"by step \d+, \d+ weight tensors hold NaN") as info:
        diverging.fit()
    assert f"the last checkpoint, {checkpoints / 'step_0000004'}, is kept" in str(info.value)
    assert "--lr, now 1e+30" in str(info.value)
    assert sorted(p.name for p in checkpoints.glob("step_*")) == ["step_0000004"]
    assert (checkpoints / "latest").read_text() == "step_0000004"
    assert not (tmp_path / "samples" / "step_0000016.png").exists()
    for ema in (True, False):
        model = load_model(tmp_path, ema=ema)
        assert all(torch.isfinite(p).all() for p in model.parameters())


def test_dropout_and_distinct_loss_paths_train(tmp_path):
    config = PRESET.model.replace(
        unet=PRESET.model.unet.__class__(**{**PRESET.model.unet.__dict__, "dropout": 0.2})
    )
    torch.manual_seed(0)
    trainer = Trainer(
        Patronus(config),
        SyntheticShapes(64, 24, 3),
        TrainConfig(
            max_steps=4, batch_size=16, distinct_loss_weight=0.5, progress=False, log_every=1
        ),
        tmp_path,
        "cpu",
    )
    trainer.fit()
    rows = trainer.metrics.rows()
    assert all(row["distinct"] >= 0 for row in rows) and len(rows) == 4


@pytest.mark.parametrize(
    ("weights", "column"),
    [
        ({"edit_consistency_weight": 0.5, "edit_consistency_max_timestep": 999}, "consistency"),
        ({"activation_decorrelation_weight": 0.5}, "decorrelation"),
    ],
)
def test_an_extra_term_is_logged_and_added_only_when_enabled(tmp_path, weights, column):
    rows = {}
    for enabled in (False, True):
        trainer = make_trainer(
            tmp_path / str(enabled), max_steps=2, log_every=1, **(weights if enabled else {})
        )
        trainer.fit(on_step=lambda step, row, on=enabled: rows.setdefault(on, row))
    assert column not in rows[False]
    assert rows[True][column] > 0
    assert rows[True]["loss"] == pytest.approx(rows[True]["mse"] + 0.5 * rows[True][column])


def test_frozen_prototypes_keep_their_weights_and_resume(tmp_path):
    """freeze_prototypes: encoder and prototypes unchanged after training (edit consistency on),
    the denoiser trained; a resumed run is bit-exact as without freezing."""
    settings = {"max_steps": 6, "ema_decay": 0.9, "freeze_prototypes": True,
                "edit_consistency_weight": 0.5, "edit_consistency_max_timestep": 199}  # fmt: skip
    straight = make_trainer(tmp_path / "a", **settings)
    before = {k: v.clone() for k, v in straight.model.state_dict().items()}
    straight.fit()
    after = straight.model.state_dict()
    frozen = [k for k in before if k.startswith(("encoder.", "prototype_layer."))]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)
    assert not torch.equal(before["unet.head.2.weight"], after["unet.head.2.weight"])
    first = make_trainer(tmp_path / "b", **{**settings, "max_steps": 3})
    first.fit()
    resumed = make_trainer(tmp_path / "b", **settings, model_seed=5)
    assert resumed.resume() == 3
    resumed.fit()
    for name, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name


def test_run_folder_contents(tmp_path):
    trainer = make_trainer(
        tmp_path,
        max_steps=6,
        checkpoint_every=3,
        keep_checkpoints=1,
        ema_decay=0.5,
        num_sample_images=4,
        sample_steps=3,
    )
    summary = trainer.fit()
    assert summary["step"] == 6
    checkpoints = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert checkpoints == ["latest", "step_0000006"]
    folder = tmp_path / "checkpoints" / "step_0000006"
    assert {p.name for p in folder.iterdir()} == {
        "config.json",
        "model.safetensors",
        "ema.safetensors",
        "train_state.safetensors",
        "train_state.json",
    }
    config = json.loads((folder / "config.json").read_text())
    assert config["step"] == 6 and config["train"]["max_steps"] == 6
    assert (tmp_path / "loss_curve.png").stat().st_size > 1000
    assert (tmp_path / "samples" / "step_0000006.png").is_file()
    header = (tmp_path / "metrics.csv").read_text().splitlines()[0]
    assert header.startswith("step,epoch,loss,mse,distinct,grad_norm,lr,images_per_s")
    ema_model = load_model(tmp_path)
    raw_model = load_model(tmp_path, ema=False)
    torch.testing.assert_close(raw_model.state_dict(), trainer.model.state_dict())
    assert not torch.equal(
        ema_model.prototype_layer.prototypes, raw_model.prototype_layer.prototypes
    )


def test_dataset_and_batch_mismatches_are_reported(tmp_path):
    with pytest.raises(ValueError, match=r"dataset images are \(1, 24, 24\)"):
        make_trainer(tmp_path, SyntheticShapes(64, 24, 1), max_steps=1)
    with pytest.raises(ValueError, match="less than a batch"):
        make_trainer(tmp_path, SyntheticShapes(8, 24, 3), max_steps=1)
    with pytest.raises(ValueError, match="amp must be"):
        TrainConfig(amp="fp8")


def test_resume_refuses_another_model(tmp_path):
    make_trainer(tmp_path, max_steps=2).fit()
    other = Patronus(PRESET.model.replace(num_prototypes=9))
    trainer = Trainer(
        other,
        SyntheticShapes(96, 24, 3),
        TrainConfig(max_steps=4, batch_size=16, progress=False),
        tmp_path,
        "cpu",
    )
    from patronus.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="different model configuration"):
        trainer.resume()


@pytest.mark.slow
def test_torchrun_two_cpu_processes_train_and_checkpoint(tmp_path):
    """DDP with gloo: 2 processes, the global batch split between them, one checkpoint."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = "-m torch.distributed.run --standalone --nproc-per-node 2"
    train = (
        "-m patronus train --preset synthetic-tiny --dataset synthetic --limit 64 --steps 4 "
        "--batch-size 16 --lr 2e-3 --log-every 1 --no-progress --device cpu --amp off"
    )
    command = [sys.executable, *torchrun.split(), *train.split(), "--out", str(tmp_path)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2, 3, 4]  # written once, by rank 0
    model = load_model(tmp_path)
    assert model.num_prototypes == PRESET.model.num_prototypes
    # the two processes kept identical replicas: a single-process run on the same global
    # batches reaches the same weights up to the order of floating-point reduction
    single = tmp_path / "single"
    command[command.index("--nproc-per-node") + 1] = "1"
    command[command.index("--out") + 1] = str(single)
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    single_model = load_model(single)
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, single_model.state_dict()[name], atol=2e-4, rtol=1e-3)


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_on_cpu_trains_and_resumes(tmp_path, amp):
    """Autocast (and, for fp16, the grad scaler whose state the checkpoint keeps) on CPU."""
    trainer = make_trainer(tmp_path, max_steps=3, amp=amp)
    assert trainer.amp_dtype == {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    assert trainer.scaler.is_enabled() == (amp == "fp16")
    trainer.fit()
    assert all(torch.isfinite(torch.tensor(row["loss"])) for row in trainer.metrics.rows())
    resumed = make_trainer(tmp_path, max_steps=4, amp=amp)
    assert resumed.resume() == 3
    assert resumed.scaler.state_dict() == trainer.scaler.state_dict()
    resumed.fit()


@pytest.mark.parametrize("backend", ["cpp", "triton"])
def test_fused_backends_train_like_the_reference(tmp_path, monkeypatch, backend):
    """Same data, noise and initial weights: the loss curve of a short run matches the pure
    PyTorch reference path within float tolerance (triton runs under the interpreter on CPU)."""
    curves = {}
    for name in ("torch", backend):
        monkeypatch.setenv("PATRONUS_BACKEND", name)
        trainer = make_trainer(tmp_path / name, max_steps=12, log_every=1)
        trainer.fit()
        curves[name] = torch.tensor([row["loss"] for row in trainer.metrics.rows()])
    assert len(curves[backend]) == 12
    torch.testing.assert_close(curves[backend], curves["torch"], rtol=1e-3, atol=1e-5)


def test_amp_auto_picks_bf16_where_the_hardware_has_it(monkeypatch):
    from patronus.train import trainer
    from patronus.utils import cpu_features

    intel = "processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_bf16 amx_tile\n\nprocessor\t: 1\n"
    assert "avx512_bf16" in cpu_features.cpu_flags(intel)
    assert cpu_features.cpu_flags("processor : 0\n") == set()
    for fast in (True, False):
        monkeypatch.setattr(trainer, "fast_cpu_bf16", lambda fast=fast: fast)
        expected = torch.bfloat16 if fast else None
        assert trainer._amp_dtype("auto", torch.device("cpu")) == expected
        assert trainer._amp_dtype("off", torch.device("cpu")) is None
    assert trainer._amp_dtype("auto", torch.device("cuda")) == torch.bfloat16


def test_a_loaded_model_comes_in_eval_mode_and_trains_in_train_mode(tmp_path):
    from patronus import save_model

    save_model(Patronus(PRESET.model), tmp_path / "ckpt")
    model = load_model(tmp_path / "ckpt")
    assert not model.training  # dropout off for sampling, as diffusers' from_pretrained
    modes = []
    model.unet.register_forward_hook(lambda module, inputs, output: modes.append(module.training))
    config = TrainConfig(max_steps=2, batch_size=16, progress=False, log_every=1, amp="off")
    Trainer(model, SyntheticShapes(32, 24, 3, seed=1), config, tmp_path / "run", "cpu").fit()
    assert modes[:2] == [True, True]  # the two training steps (sampling afterwards is in eval)


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("learning_rate", -1e-3, "learning_rate must be a number > 0"),
        ("learning_rate", float("nan"), "learning_rate must be a number > 0"),
        ("grad_clip", -1.0, "grad_clip must be >= 0"),  # torch would flip every gradient's sign
        ("weight_decay", float("inf"), "weight_decay must be >= 0"),
        ("warmup_steps", -5, "warmup_steps must be >= 0"),
        ("num_workers", -1, "num_workers must be >= 0"),
        ("distinct_margin", -0.1, "distinct_margin must be >= 0"),
        ("sample_steps", 0, "sample_steps and num_sample_images must be >= 1"),
    ],
)
def test_train_config_refuses_values_that_would_train_wrongly(field, value, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**{field: value})
    TrainConfig(grad_clip=None)
    TrainConfig(grad_clip=0.0)  # off, as --grad-clip 0


class _Items(torch.utils.data.Dataset):
    """32 items made by ``make(i)``."""

    def __init__(self, make):
        self.make = make

    def __len__(self):
        return 32

    def __getitem__(self, index):
        return self.make(index)


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda i: torch.rand(3, 24, 24) * 2 - 1, ValueError, "must be \\(image, label\\) pairs"),
        (lambda i: (torch.full((3, 24, 24), 128, dtype=torch.uint8), 0), TypeError,
         "must be floating point in \\[-1, 1\\], got torch.uint8"),
        (lambda i: (torch.rand(3, 24, 24) * 255, 0), ValueError,
         r"must be in \[-1, 1\]; the first 16 span \[.*, 25\d"),
        (lambda i: (torch.full((3, 24, 24), float("nan")), 0), ValueError, "hold NaN or Inf"),
    ],
    ids=["no-label", "uint8", "0-255", "nan"],
)  # fmt: skip
def test_a_dataset_the_model_cannot_train_on_is_refused_before_training(tmp_path, make, error,
                                                                        match):  # fmt: skip
    """Items without a label were reported as 'dataset images are (24, 24)'; pixels in [0, 255]
    or NaN trained without a word."""
    with pytest.raises(error, match=match):
        make_trainer(tmp_path / "run", _Items(make), max_steps=1, batch_size=8)


def test_an_iterable_dataset_is_refused_with_the_reason(tmp_path):
    """The trainer reads images by index: an IterableDataset has no length to split."""

    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            return iter([(torch.rand(3, 24, 24) * 2 - 1, 0)] * 32)

    with pytest.raises(TypeError, match="a Stream has no length: patronus reads datasets by index"):
        make_trainer(tmp_path / "run", Stream(), max_steps=1, batch_size=8)


def test_images_in_zero_one_train_with_a_warning(tmp_path):
    with pytest.warns(UserWarning, match=r"expects \[-1, 1\] \(x \* 2 - 1 maps \[0, 1\] there\)"):
        make_trainer(tmp_path / "run", _Items(lambda i: (torch.rand(3, 24, 24), 0)), batch_size=8)


def test_a_loss_that_is_not_finite_is_logged_as_null_and_left_out_of_the_curve(tmp_path):
    """metrics.jsonl held NaN and Infinity tokens (an fp16 step skipped by the gradient scaler
    logs an infinite loss while the weights stay finite), which standard JSON parsers refuse."""
    from patronus.train.metrics import MetricsLog, plot_loss_curve

    log = MetricsLog(tmp_path)
    for step, loss in enumerate([0.5, float("inf"), float("nan"), 0.25], start=1):
        log.append({"step": step, "loss": loss, "lr": 1e-3})
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    strict = [json.loads(line, parse_constant=pytest.fail) for line in lines]
    assert [row["loss"] for row in strict] == [0.5, None, None, 0.25]
    assert log.rows() == strict
    assert plot_loss_curve(log.rows(), tmp_path / "curve.png").is_file()
    assert plot_loss_curve([{"step": 1, "loss": None}], tmp_path / "none.png") is None
    log.truncate_after(2)  # a resume rewrites the kept rows
    assert [row["loss"] for row in log.rows()] == [0.5, None]
