"""The command line as a careless or unlucky user meets it: results never overwritten unasked,
run folders that survive reuse, kills and races, and bad input refused in one line."""

import io
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from patronus.checkpoint import CheckpointError, resolve_checkpoint
from patronus.cli import main
from patronus.train.run_folder import RunLock

TRAIN = ["train", "--preset", "synthetic-tiny", "--dataset", "synthetic", "--limit", "48",
         "--batch-size", "16", "--no-progress", "--log-every", "1", "--amp", "off"]  # fmt: skip


def _sample(run, out, *extra):
    return main(["sample", str(run), "--num", "2", "--steps", "2", "--no-progress",
                 "--out", str(out), *extra])  # fmt: skip


# ------------------------------------------------------------------------------------ outputs
def test_results_are_never_overwritten_unasked_and_every_path_is_printed(
    tiny_run, tmp_path, capsys
):
    out = tmp_path / "s"
    assert _sample(tiny_run, out) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out / 'samples.png'}" in printed
    assert f"wrote {out / 'samples.safetensors'}" in printed
    first = (out / "samples.png").stat().st_mtime_ns
    assert _sample(tiny_run, out) == 2
    assert "already holds files: pass --overwrite" in capsys.readouterr().err
    assert (out / "samples.png").stat().st_mtime_ns == first
    assert _sample(tiny_run, out, "--overwrite") == 0


def test_the_default_output_is_a_new_folder_under_runs(tiny_run, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        assert main(["sample", str(tiny_run), "--num", "1", "--steps", "1", "--no-progress"]) == 0
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["sample", "sample-2"]
    assert "wrote runs/sample-2/samples.png" in capsys.readouterr().out


def test_a_refused_command_leaves_no_folder_behind(tiny_run, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    missing = ["--activations", str(tmp_path / "missing.npy")]
    nested = tmp_path / "new" / "deeper" / "s"
    assert _sample(tiny_run, nested, *missing) == 2
    assert "no activation file" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()
    assert main(["sample", str(tiny_run), "--no-progress", *missing]) == 2
    assert not (tmp_path / "runs").exists()  # so the next default folder is runs/sample again
    (tmp_path / "mine").mkdir()  # an empty folder the user made is theirs: kept
    assert _sample(tiny_run, tmp_path / "mine", *missing) == 2
    assert (tmp_path / "mine").is_dir()
    assert _sample(tiny_run, tmp_path / "kept") == 0  # a command that succeeds keeps its folder
    assert (tmp_path / "kept" / "samples.png").is_file()


def test_out_naming_a_file_is_refused_before_any_work(tiny_run, tmp_path, capsys):
    target = tmp_path / "file.txt"
    target.write_text("keep me")
    started = time.perf_counter()
    assert _sample(tiny_run, target) == 2
    assert "is a file" in capsys.readouterr().err
    assert target.read_text() == "keep me" and time.perf_counter() - started < 5


# ------------------------------------------------------------------------------ numeric flags
@pytest.mark.parametrize(
    "args",
    [
        [*TRAIN, "--out", "X", "--batch-size", "0"],
        [*TRAIN, "--out", "X", "--lr", "0"],
        [*TRAIN, "--out", "X", "--steps", "0"],
        [*TRAIN, "--out", "X", "--limit", "0"],
        [*TRAIN, "--out", "X", "--warmup", "-5"],
        [*TRAIN, "--out", "X", "--ema", "1.5"],
        ["sample", "RUN", "--variations", "0"],
        ["sample", "RUN", "--variations", "-2"],
        ["sample", "RUN", "--offset", "-3"],
        ["sample", "RUN", "--num", "0"],
        ["sample", "RUN", "--eta", "nan"],
        ["report", "RUN", "--quantile", "1.5"],
        ["evaluate", "probes", "RUN", "--folds", "1"],
        ["trace", "RUN", "--pool-size", "10"],  # trace searches no pool
        ["trace", "RUN", "--edit-region"],  # trace decodes unconfined edits
        ["visualize", "RUN", "--prototype-guidance", "0"],
    ],
)
def test_invalid_flags_are_refused_by_the_parser(args, tiny_run, tmp_path, capsys):
    args = [str(tiny_run) if a == "RUN" else str(tmp_path / "x") if a == "X" else a for a in args]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    assert not (tmp_path / "x").exists()
    err = capsys.readouterr().err
    assert "expected" in err or "unrecognized" in err


def test_an_optional_value_before_the_checkpoint_is_explained(tiny_run, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["report", "--prototype-guidance", str(tiny_run), "--out", str(tmp_path / "x")])
    assert "the flag's value is optional: write it after the checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="checks the message on a machine without CUDA"
)
def test_a_missing_gpu_is_named(tiny_run, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["sample", str(tiny_run), "--device", "cuda", "--out", str(tmp_path / "x")])
    assert "CUDA is not available here" in capsys.readouterr().err


# --------------------------------------------------------------------------------- run folders
def test_a_new_run_never_mixes_with_an_old_one(tmp_path, capsys):
    run = tmp_path / "run"
    assert main([*TRAIN, "--out", str(run), "--steps", "6", "--checkpoint-every", "2"]) == 0
    assert main([*TRAIN, "--out", str(run), "--steps", "3"]) == 2
    assert "already holds a run: --resume continues it" in capsys.readouterr().err
    assert main([*TRAIN, "--out", str(run), "--steps", "3", "--overwrite"]) == 0
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*")) == ["step_0000003"]
    assert resolve_checkpoint(run).name == "step_0000003"
    steps = [json.loads(r)["step"] for r in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]


def test_a_run_folder_trains_once_at_a_time(tmp_path, capsys):
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom patronus.train.run_folder import RunLock\n"
         f"with RunLock({str(run)!r}):\n    print('locked', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert main([*TRAIN, "--out", str(run), "--steps", "2"]) == 2
        assert f"being trained by another process (pid {holder.pid})" in capsys.readouterr().err
        assert not (run / "checkpoints").exists()
    finally:
        holder.kill()
        holder.wait()
    assert main([*TRAIN, "--out", str(run), "--steps", "2"]) == 0  # the lock died with it


def test_a_failed_start_leaves_no_new_folder_and_keeps_an_old_one(tmp_path, capsys):
    contradiction = ["--freeze-prototypes", "--activation-decorrelation", "1", "--steps", "2"]
    new = tmp_path / "new"
    assert main([*TRAIN, "--out", str(new), *contradiction]) == 2
    assert "use one or the other" in capsys.readouterr().err
    assert not new.exists()
    old = tmp_path / "old"
    old.mkdir()
    assert main([*TRAIN, "--out", str(old), *contradiction]) == 2
    assert old.is_dir()
    # a folder the lock created stays once something was written into it
    written = tmp_path / "written"
    with pytest.raises(KeyError), RunLock(written):
        (written / "metrics.jsonl").write_text("")
        raise KeyError("failed after writing")
    assert (written / "metrics.jsonl").is_file()


@pytest.mark.parametrize("signal_number", [signal.SIGTERM, signal.SIGINT])
def test_signals_save_a_checkpoint_and_exit_without_a_traceback(tmp_path, signal_number):
    run = tmp_path / "run"
    command = [sys.executable, "-m", "patronus", *TRAIN, "--out", str(run), "--steps", "100000",
               "--checkpoint-every", "100000", "--limit", "64"]  # fmt: skip
    # a shell that starts jobs in the background ignores SIGINT in them, and Python keeps an
    # inherited SIG_IGN: give the child the default disposition, as a terminal would
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    out, err = _interrupt_after_rows(process, run, 3, lambda: process.send_signal(signal_number))
    assert process.returncode == 128 + signal_number
    assert "checkpoint saved" in out and "interrupted" in err and "Traceback" not in err
    _assert_checkpoint_is_the_last_logged_step(run)


def _interrupt_after_rows(process, run, rows: int, interrupt) -> tuple[str, str]:
    """Wait until the training ``process`` has logged ``rows`` metric rows in ``run``, then
    ``interrupt()`` it; its (stdout, stderr). The process never outlives a failure."""
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 120
    try:
        while not (metrics.is_file() and metrics.read_text().count("\n") >= rows):
            assert time.time() < deadline and process.poll() is None
            time.sleep(0.1)
        interrupt()
        return process.communicate(timeout=120)
    finally:
        process.kill()  # never leave a 100000-step run behind a failure


def _assert_checkpoint_is_the_last_logged_step(run) -> None:
    step = int(json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["step"])
    assert resolve_checkpoint(run).name == f"step_{step:07d}"


SLOW_DATA = """
import time
from torch.utils.data import Dataset

class Slow(Dataset):  # training waits for its workers, as on real data read from disk
    def __init__(self, inner):
        self.inner = inner

    def __len__(self):
        return len(self.inner)

    def __getitem__(self, index):
        time.sleep(0.05)
        return self.inner[index]
"""

TRAIN_WITH_WORKERS = """
import multiprocessing
import sys

if __name__ == "__main__":
    multiprocessing.set_start_method(sys.argv[1], force=True)
    from slow_data import Slow

    from patronus import Patronus
    from patronus.data import SyntheticShapes
    from patronus.models.presets import get_preset
    from patronus.train import TrainConfig, Trainer
    from patronus.train.trainer import TrainingInterrupted

    config = TrainConfig(max_steps=100000, batch_size=16, progress=False, log_every=1, amp="off",
                         num_workers=2, checkpoint_every=100000)
    data = Slow(SyntheticShapes(64, 24, 3, seed=1))
    trainer = Trainer(Patronus(get_preset("synthetic-tiny").model), data, config, sys.argv[2])
    try:
        trainer.fit()
    except TrainingInterrupted:
        sys.exit(130)
"""


@pytest.mark.parametrize("start_method", ["spawn", "fork"])
def test_ctrl_c_to_the_process_group_stops_data_loader_workers_after_the_step(
    tmp_path, start_method
):
    """Ctrl-C reaches the DataLoader workers too. Workers started by spawn or forkserver (the
    default on macOS, and on Linux from Python 3.14) died of it while the training process
    finished its step, which then failed waiting for their batch: "DataLoader worker exited
    unexpectedly", and no checkpoint. They now leave the signal to the trainer."""
    (tmp_path / "slow_data.py").write_text(SLOW_DATA)
    (tmp_path / "train_with_workers.py").write_text(TRAIN_WITH_WORKERS)
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    process = subprocess.Popen(
        [sys.executable, str(tmp_path / "train_with_workers.py"), start_method, str(run)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        start_new_session=True,  # its own process group, as a terminal's foreground job
    )  # fmt: skip
    # the whole group, as Ctrl-C does
    out, err = _interrupt_after_rows(process, run, 4, lambda: os.killpg(process.pid, signal.SIGINT))
    assert process.returncode == 130, err[-2000:]
    assert "checkpoint saved" in out and "exited unexpectedly" not in err, err[-3000:]
    _assert_checkpoint_is_the_last_logged_step(run)


STARTING_DATA = """
import pathlib
import time

from slow_data import Slow

class SlowToStart(Slow):  # a worker unpickles it while starting: a signal arrives meanwhile
    def __init__(self, inner, marker):
        super().__init__(inner)
        self.marker = marker

    def __setstate__(self, state):
        self.__dict__.update(state)
        pathlib.Path(self.marker).touch()
        time.sleep(3)
"""


def test_ctrl_c_while_data_loader_workers_start_stops_after_the_first_step(tmp_path):
    """Ctrl-C while spawned workers are still starting (before their init can ignore it) killed
    them, and the first step failed with "DataLoader worker exited unexpectedly". Workers now
    start with the stop signals blocked and unblock them only once they ignore them."""
    (tmp_path / "slow_data.py").write_text(SLOW_DATA)
    (tmp_path / "starting_data.py").write_text(STARTING_DATA)
    script = TRAIN_WITH_WORKERS.replace(
        "from slow_data import Slow", "from starting_data import SlowToStart"
    )
    script = script.replace(
        "data = Slow(SyntheticShapes(64, 24, 3, seed=1))",
        "data = SlowToStart(SyntheticShapes(64, 24, 3, seed=1), sys.argv[3])",
    )
    (tmp_path / "train_while_starting.py").write_text(script)
    run, marker = tmp_path / "run", tmp_path / "a-worker-is-starting"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    process = subprocess.Popen(
        [sys.executable, str(tmp_path / "train_while_starting.py"), "spawn", str(run), str(marker)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.time() + 120
        while not marker.exists():
            assert time.time() < deadline and process.poll() is None
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGINT)
        out, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 130, err[-2000:]
    assert "checkpoint saved" in out and "exited unexpectedly" not in err, err[-3000:]
    assert resolve_checkpoint(run).name == "step_0000001"


def test_what_a_killed_writer_leaves_is_tidied(tiny_run_copy, capsys):
    checkpoints = tiny_run_copy / "checkpoints"
    dead = 2**22 + 12345  # above the default pid_max: no such process
    (checkpoints / f".step_0000040.tmp-{dead}").mkdir()
    latest = resolve_checkpoint(tiny_run_copy)
    # a kill between moving the old folder aside and renaming the new one in
    os.replace(latest, checkpoints / f".{latest.name}.old-{dead}")
    assert resolve_checkpoint(tiny_run_copy) == latest  # moved back
    resume = ["train", "--out", str(tiny_run_copy), "--resume", "--steps", "31", "--no-progress"]
    assert main(resume) == 0  # with the run's own settings (TRAIN's would contradict them)
    leftovers = [p.name for p in checkpoints.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_resaving_a_step_never_leaves_latest_dangling(tiny_run_copy, monkeypatch):
    from patronus import checkpoint

    latest = resolve_checkpoint(tiny_run_copy)
    real_replace, calls = os.replace, []

    def killed_after_moving_aside(source, target):
        calls.append(target)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the process dies between the two renames
        real_replace(source, target)

    monkeypatch.setattr(checkpoint.os, "replace", killed_after_moving_aside)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.write_atomically(latest, lambda path: path.mkdir())
    monkeypatch.undo()
    monkeypatch.setattr(checkpoint, "_alive", lambda pid: False)  # as seen after the kill
    assert resolve_checkpoint(tiny_run_copy) == latest
    assert (latest / "config.json").is_file()


def test_latest_cannot_point_outside_the_run(tiny_run_copy):
    (tiny_run_copy / "checkpoints" / "latest").write_text("../../x")
    with pytest.raises(CheckpointError, match="not a checkpoint folder of this run"):
        resolve_checkpoint(tiny_run_copy)


# -------------------------------------------------------------------------------- bad inputs
def _bad_images(folder):
    folder.mkdir()
    (folder / "empty.png").write_bytes(b"")
    (folder / "text.png").write_text("not an image")
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(buffer, "JPEG")
    (folder / "truncated.jpg").write_bytes(buffer.getvalue()[:300])
    return sorted(folder.iterdir())


def test_unreadable_images_are_named(tiny_run, tmp_path, capsys):
    for path in _bad_images(tmp_path / "bad"):
        assert _sample(tiny_run, tmp_path / path.stem, "--images", str(path)) == 2
        err = capsys.readouterr().err
        assert f"{path}: not a readable image" in err and "Traceback" not in err


def test_decompression_bombs_are_refused(tiny_run, tmp_path, monkeypatch, capsys):
    Image.fromarray(np.zeros((200, 200), np.uint8)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # 40 000 pixels: over twice the limit
    assert _sample(tiny_run, tmp_path / "o", "--images", str(tmp_path / "big.png")) == 2
    assert "not a readable image" in capsys.readouterr().err
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 30_000)  # over the limit, under twice: a warning
    assert _sample(tiny_run, tmp_path / "p", "--images", str(tmp_path / "big.png")) == 2


def test_activation_files_that_are_not_tensors_are_named(tiny_run, tmp_path, capsys):
    path = tmp_path / "s.pt"
    torch.save({"activations": torch.zeros(2, 8), "extra": slice(1, 2)}, path)
    assert _sample(tiny_run, tmp_path / "o", "--activations", str(path)) == 2
    assert f"{path} is not a readable activation file" in capsys.readouterr().err
    # not a torch file at all: torch.load raised struct.error, shown as a traceback
    for index, content in enumerate((b"junk", b"", bytes(range(256)))):
        garbage = tmp_path / f"garbage{index}.pt"
        garbage.write_bytes(content)
        assert _sample(tiny_run, tmp_path / f"g{index}", "--activations", str(garbage)) == 2
        error = capsys.readouterr().err
        assert f"{garbage} is not a readable activation file" in error and "Traceback" not in error


def test_non_finite_samples_are_never_written(tiny_run, tmp_path, capsys):
    path = tmp_path / "s.npy"
    np.save(path, np.full((2, 8), -1e30, dtype=np.float32))
    out = tmp_path / "o"
    assert _sample(tiny_run, out, "--activations", str(path)) == 2
    assert "hold NaN or Inf, and nothing was written" in capsys.readouterr().err
    assert not out.exists()  # nothing written, and the folder the command made is removed


def test_diagnose_checks_the_attributes_before_encoding(tiny_run_copy, tmp_path, capsys):
    config_path = resolve_checkpoint(tiny_run_copy) / "config.json"
    config = json.loads(config_path.read_text())
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        Image.fromarray(np.full((24, 24, 3), 40 * i, np.uint8)).save(images / f"{i}.png")
    config["data"] = {"name": "folder", "data_dir": str(images), "seed": 0}
    config_path.write_text(json.dumps(config))
    started = time.perf_counter()
    assert main(["diagnose", str(tiny_run_copy), "--target", "Smiling", "--out",
                 str(tmp_path / "d"), "--no-progress"]) == 2  # fmt: skip
    assert "has no binary attributes" in capsys.readouterr().err
    assert time.perf_counter() - started < 10


def test_guidance_flags_a_model_cannot_use_are_one_line_errors(tiny_run, tmp_path, capsys):
    from patronus.cli import main

    code = main(["sample", str(tiny_run), "--num", "2", "--steps", "2", "--guidance-scale", "3",
                 "--out", str(tmp_path / "out"), "--no-progress"])  # fmt: skip
    assert code == 2
    assert "condition_dropout > 0" in capsys.readouterr().err
    assert not (tmp_path / "out" / "samples.png").exists()


def test_a_dataset_of_another_image_shape_is_a_user_error(tiny_run, tmp_path, capsys):
    """CIFAR-10 keeps its 32 px RGB whatever the model takes: `--dataset cifar10` on a 24 px
    model was a ValueError traceback from the model's input check."""
    from test_data import write_cifar

    write_cifar(tmp_path / "cifar")
    extra = ["--dataset", "cifar10", "--data-dir", str(tmp_path / "cifar")]
    assert _sample(tiny_run, tmp_path / "o", *extra) == 2
    error = capsys.readouterr().err
    assert "cifar10 images are (3, 32, 32) but the model takes (3, 24, 24)" in error
    assert "Traceback" not in error


def test_an_out_folder_that_cannot_be_created_is_a_user_error(tiny_run, tmp_path, capsys):
    """--out below a file was a NotADirectoryError traceback (from sample and from train)."""
    (tmp_path / "a-file").write_text("not a folder")
    blocked = tmp_path / "a-file" / "out"
    assert _sample(tiny_run, blocked) == 2
    assert f"cannot create --out {blocked}: Not a directory" in capsys.readouterr().err
    train = ["train", "--preset", "synthetic-tiny", "--dataset", "synthetic", "--limit", "8",
             "--batch-size", "4", "--steps", "1", "--no-progress"]  # fmt: skip
    assert main([*train, "--out", str(blocked)]) == 2
    assert f"cannot create the run folder {blocked}: Not a directory" in capsys.readouterr().err
