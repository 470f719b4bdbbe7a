"""Checkpoint files: round trip, atomic writes, and clear errors for broken ones."""

import json

import pytest
import torch

from patronus import Patronus, load_model, save_model
from patronus.checkpoint import CheckpointError, resolve_checkpoint, write_atomically


def test_round_trip(tmp_path, tiny_config):
    model = Patronus(tiny_config)
    save_model(model, tmp_path / "ckpt", metadata={"note": "hello"})
    loaded = load_model(tmp_path / "ckpt")
    assert loaded.config == tiny_config
    for name, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[name])
    assert json.loads((tmp_path / "ckpt" / "config.json").read_text())["note"] == "hello"


def test_overwriting_replaces_the_folder_whole(tmp_path, tiny_config):
    save_model(Patronus(tiny_config), tmp_path / "ckpt", ema_state={"x": torch.zeros(1)})
    save_model(Patronus(tiny_config), tmp_path / "ckpt")
    assert not (tmp_path / "ckpt" / "ema.safetensors").exists()
    assert not list(tmp_path.glob(".*tmp*"))


def test_a_trainer_checkpoint_is_replaced_with_its_training_state(tmp_path, tiny_config):
    state = {"train_state.json": lambda path: path.write_text("{}")}
    save_model(Patronus(tiny_config), tmp_path / "ckpt", extra_files=state)
    save_model(Patronus(tiny_config), tmp_path / "ckpt", extra_files=state)
    assert (tmp_path / "ckpt" / "train_state.json").is_file()
    save_model(Patronus(tiny_config), tmp_path / "empty")
    (tmp_path / "ckpt2").mkdir()  # empty, as the command line creates its --out
    save_model(Patronus(tiny_config), tmp_path / "ckpt2")
    assert (tmp_path / "ckpt2" / "config.json").is_file()


def shipped_layout(folder, tiny_config):
    """A checkpoint with what ships beside it (as in assets/fmnist-patronus)."""
    save_model(Patronus(tiny_config), folder, ema_state={"x": torch.zeros(1)})
    (folder / "TRAINING.md").write_text("how it was trained")
    (folder / "evaluation").mkdir()
    (folder / "evaluation" / "fid.json").write_text("{}")
    return folder


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda folder, config: shipped_layout(folder, config), r"TRAINING\.md, evaluation\)"),
        (lambda folder, config: folder.write_text("notes"), "is a file"),
        (
            lambda folder, config: [
                folder.mkdir(),
                *[(folder / f"photo{i}.png").write_bytes(b"x") for i in range(6)],
            ],
            r"\(no config\.json, photo0\.png, photo1\.png, photo2\.png and 3 more\)",
        ),
        (
            lambda folder, config: [
                folder.mkdir(),
                (folder / "checkpoints").mkdir(),
                (folder / "metrics.csv").write_text("step"),
            ],
            r"no config\.json, checkpoints, metrics\.csv",
        ),  # a run folder
    ],
    ids=["checkpoint-with-more", "file", "other-files", "run-folder"],
)
def test_saving_over_anything_but_a_checkpoint_is_refused(tmp_path, tiny_config, make, match):
    folder = tmp_path / "target"
    make(folder, tiny_config)
    before = sorted((p.relative_to(tmp_path), p.read_bytes() if p.is_file() else None)
                    for p in [folder, *folder.rglob("*")])  # fmt: skip
    with pytest.raises(CheckpointError, match=match):
        save_model(Patronus(tiny_config), folder)
    after = sorted((p.relative_to(tmp_path), p.read_bytes() if p.is_file() else None)
                   for p in [folder, *folder.rglob("*")])  # fmt: skip
    assert after == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["target"]


def test_a_failed_write_leaves_the_old_checkpoint(tmp_path):
    target = tmp_path / "ckpt"
    target.mkdir()
    (target / "config.json").write_text("old")

    def failing_writer(path):
        path.mkdir()
        (path / "config.json").write_text("new")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomically(target, failing_writer)
    assert (target / "config.json").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_corrupt_and_missing_checkpoints(tmp_path, tiny_config):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "nothing")
    with pytest.raises(CheckpointError, match="neither a checkpoint folder"):
        resolve_checkpoint(tmp_path)
    folder = save_model(Patronus(tiny_config), tmp_path / "ckpt")
    weights = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    with pytest.raises(CheckpointError, match="corrupt or not a safetensors file"):
        load_model(folder)
    (folder / "config.json").write_text("{ not json")
    with pytest.raises(CheckpointError, match=r"config\.json is corrupt"):
        load_model(folder)
    (folder / "config.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(CheckpointError, match="not a patronus checkpoint config"):
        load_model(folder)


def test_weights_that_do_not_fit_the_config(tmp_path, tiny_config):
    folder = save_model(Patronus(tiny_config), tmp_path / "ckpt")
    config = json.loads((folder / "config.json").read_text())
    config["model"]["num_prototypes"] = 9
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="does not fit its config"):
        load_model(folder)
    config["model"]["num_prototypes"] = "many"
    config["model"]["colour"] = 1
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="invalid model config"):
        load_model(folder)


def test_run_folder_resolves_to_latest(tiny_run):
    assert resolve_checkpoint(tiny_run).name == "step_0000030"


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("num_prototypes", 8.0, r"num_prototypes must be int, got 8\.0"),
        ("image_size", "24", r"image_size must be int, got '24'"),
        ("num_prototypes", 10**9, r"prototype_layer\.prototypes: \(8, 16\) in the file"),
        ("image_size", 0, "image_size and num_prototypes must be >= 1"),
        (
            "encoder",
            {"channels": [8, 8.5]},
            r"EncoderConfig\.channels must be tuple\[int, \.\.\.\]",
        ),
        ("unet", {"attention": [0, 1]}, r"attention must be tuple\[bool, \.\.\.\]"),
    ],
)
def test_config_json_with_wrong_types_names_the_field(tmp_path, tiny_config, field, value, message):
    folder = save_model(Patronus(tiny_config), tmp_path / "ckpt")
    config = json.loads((folder / "config.json").read_text())
    if isinstance(value, dict):
        config["model"][field].update(value)
    else:
        config["model"][field] = value
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=message):
        load_model(folder)


def test_config_json_that_is_not_utf8_is_named(tmp_path, tiny_config):
    folder = save_model(Patronus(tiny_config), tmp_path / "ckpt")
    (folder / "config.json").write_bytes(b'{"format": "patronus\xff"}')
    with pytest.raises(CheckpointError, match=r"config\.json is corrupt"):
        load_model(folder)
