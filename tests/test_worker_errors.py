"""Errors raised in DataLoader workers keep their type and message: torch re-raises a worker's
error from its formatted traceback (torch.utils.data's own ExceptionWrapper), and the command
line reports a PatronusError in one line, so a corrupt image must not turn into a traceback
when training loads data in worker processes."""

import importlib
import pkgutil

import numpy as np
import pytest
import torch
from PIL import Image
from torch._utils import ExceptionWrapper

import patronus
from patronus.cli import main
from patronus.data import ImageFolder
from patronus.data.errors import DataLayoutError
from patronus.errors import PatronusError


def _every_error_class(base: type = PatronusError) -> list[type]:
    """base and its subclasses, after importing every module of the package (so none is missed)."""
    if base is PatronusError:
        for module in pkgutil.walk_packages(patronus.__path__, "patronus."):
            if module.name.endswith("__main__"):  # that one runs the command line
                continue
            try:
                importlib.import_module(module.name)
            except ModuleNotFoundError as error:  # an optional dependency (diffusers, ...)
                if (error.name or "").startswith("patronus"):
                    raise
    found = [base]
    for sub in base.__subclasses__():
        if sub.__module__.startswith("patronus"):
            found += _every_error_class(sub)
    return found


def _instance(cls: type) -> PatronusError:
    if cls is DataLayoutError:
        return cls("CIFAR-10", "missing data_batch_1: it: has colons", "DATA_DIR/data_batch_1")
    return cls("the problem: named\nand how to fix it")


def test_the_list_holds_the_error_classes_of_every_module():
    names = {cls.__name__ for cls in _every_error_class()}
    assert names >= {
        "PatronusError", "CheckpointError", "MissingFileError", "InvalidFileError",
        "RunInUseError", "TrainingDiverged", "CommandError", "DataLayoutError", "ImageFileError",
        "BackendUnavailableError",
    }  # fmt: skip


@pytest.mark.parametrize("cls", _every_error_class(), ids=lambda cls: cls.__name__)
def test_torch_rebuilds_a_workers_error_with_its_type_and_message(cls):
    original = _instance(cls)
    try:
        raise original
    except PatronusError:
        wrapper = ExceptionWrapper(where="in DataLoader worker process 0")
    with pytest.raises(cls) as rebuilt:
        wrapper.reraise()
    assert str(rebuilt.value) == str(original) == original.message
    assert type(rebuilt.value) is cls


def test_data_layout_error_needs_its_parts():
    with pytest.raises(TypeError, match="dataset, the problem and the layout"):
        DataLayoutError("CIFAR-10")
    assert DataLayoutError(message="no traceback in this text").message == (
        "no traceback in this text"
    )


@pytest.fixture
def folder_with_a_corrupt_image(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(6):
        pixels = (rng.random((24, 24, 3)) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(tmp_path / f"{i:03d}.png")
    (tmp_path / "003.png").write_bytes(b"not a png")
    return tmp_path


def test_a_corrupt_image_read_in_a_worker_raises_the_same_error(folder_with_a_corrupt_image):
    dataset = ImageFolder(folder_with_a_corrupt_image, image_size=24)
    with pytest.raises(DataLayoutError) as in_process:
        dataset[3]
    loader = torch.utils.data.DataLoader(dataset, batch_size=6, num_workers=1)
    with pytest.raises(DataLayoutError) as in_worker:
        next(iter(loader))
    assert str(in_worker.value) == str(in_process.value)
    assert "003.png" in str(in_worker.value) and "Traceback" not in str(in_worker.value)
    assert in_worker.value.dataset == "image folder"


def test_training_with_workers_reports_a_corrupt_image_in_one_error(
    folder_with_a_corrupt_image, tmp_path, capsys
):
    flags = "--preset synthetic-tiny --dataset folder --batch-size 6 --steps 2 --no-progress"
    code = main(
        ["train", *flags.split(), "--amp", "off", "--num-workers", "1",
         "--data-dir", str(folder_with_a_corrupt_image), "--out", str(tmp_path / "run")]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code != 0
    assert "patronus train: error: image folder: cannot read" in err and "003.png" in err
    assert "Traceback" not in err
