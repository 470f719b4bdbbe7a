"""Checkpoints: safetensors tensors + a JSON config, written atomically, loaded with clear errors.

A checkpoint is a folder::

    config.json            {"format": "patronus", "model": {...PatronusConfig...}, "step": ..., ...}
    model.safetensors      the model's state dict
    ema.safetensors        (optional) EMA weights
    train_state.safetensors + train_state.json   (optional) optimizer and scaler, for --resume

A run folder keeps them under ``checkpoints/step_XXXXXXX`` with a ``checkpoints/latest`` file
naming the newest. Folders are written under a temporary name (``.step_X.tmp-PID``) and renamed,
so a crash never leaves a half-written checkpoint behind; a folder being replaced is first moved
aside (``.step_X.old-PID``) and deleted only once its successor is in place. What a killed process
leaves behind is tidied by :func:`recover_interrupted_writes` (a moved-aside folder whose successor
never arrived is moved back).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from patronus.errors import CheckpointError
from patronus.models import Patronus, PatronusConfig

__all__ = ["CheckpointError", "load_model", "resolve_checkpoint", "save_model"]

FORMAT = "patronus"
CONFIG_FILE = "config.json"
MODEL_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
LATEST_FILE = "latest"
TRAIN_STATE_TENSORS = "train_state.safetensors"
TRAIN_STATE_JSON = "train_state.json"


def _fsync(path: Path) -> None:
    with path.open("rb") as handle:
        os.fsync(handle.fileno())


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)$")
_STEP = re.compile(r"^step_(\d+)$")


def write_atomically(path: Path, writer: Callable[[Path], object]) -> Path:
    """Call ``writer`` on a temporary sibling of ``path`` (file or folder), then rename it in.

    A file is replaced atomically. A folder that exists is moved aside first and removed after
    the new one is in place: a kill in between leaves it recoverable
    (:func:`recover_interrupted_writes`), never lost."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.parent / f".{path.name}.tmp-{os.getpid()}"
    _remove(temporary)
    try:
        writer(temporary)
    except BaseException:
        _remove(temporary)
        raise
    for file in [temporary] if temporary.is_file() else sorted(temporary.iterdir()):
        _fsync(file)
    if path.is_dir():
        aside = path.parent / f".{path.name}.old-{os.getpid()}"
        _remove(aside)
        os.replace(path, aside)
        os.replace(temporary, path)
        shutil.rmtree(aside)
    else:
        os.replace(temporary, path)
    return path


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover_interrupted_writes(folder: Path) -> None:
    """Tidy what killed writers left in ``folder``: remove their temporaries, and move a folder
    that was moved aside back into place when its successor never arrived."""
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        match = _LEFTOVER.match(path.name)
        if match is None or _alive(int(match["pid"])):
            continue
        target = folder / match["name"]
        if match["kind"] == "old" and not target.exists():
            os.replace(path, target)
        else:
            _remove(path)


def checkpoint_step(name: str) -> int | None:
    """The step of a ``step_XXXXXXX`` checkpoint folder name, else None."""
    match = _STEP.match(name)
    return int(match.group(1)) if match else None


def save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path))


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"missing {path}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{path} is corrupt or not a safetensors file: {error}") from error


def read_config(folder: Path) -> dict[str, Any]:
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{folder} is not a patronus checkpoint: no {CONFIG_FILE}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path} is corrupt: {error}") from error
    if not isinstance(data, dict) or data.get("format") != FORMAT or "model" not in data:
        raise CheckpointError(f"{path} is not a patronus checkpoint config")
    return data


CHECKPOINT_FILES = frozenset(
    {CONFIG_FILE, MODEL_FILE, EMA_FILE, TRAIN_STATE_TENSORS, TRAIN_STATE_JSON}
)


def _check_replaceable(folder: Path, extra_names: set[str]) -> None:
    """Raise unless ``folder`` is absent, empty, or a checkpoint folder and nothing more."""
    if not folder.exists():
        return
    if not folder.is_dir():
        raise CheckpointError(f"{folder} is a file, not a checkpoint folder: not replacing it")
    entries = sorted(folder.iterdir())
    if not entries:
        return
    allowed = CHECKPOINT_FILES | extra_names
    foreign = [entry.name for entry in entries if not entry.is_file() or entry.name not in allowed]
    if not (folder / CONFIG_FILE).is_file():
        foreign.insert(0, f"no {CONFIG_FILE}")
    if foreign:
        listed = ", ".join(foreign[:4]) + (
            f" and {len(foreign) - 4} more" if len(foreign) > 4 else ""
        )
        raise CheckpointError(
            f"{folder} exists and is not only a checkpoint ({listed}); saving there would delete "
            "it: save to a new folder, or remove it first"
        )


def save_model(
    model: Patronus,
    folder: str | Path,
    metadata: dict[str, Any] | None = None,
    ema_state: dict[str, torch.Tensor] | None = None,
    extra_files: dict[str, Callable[[Path], object]] | None = None,
) -> Path:
    """Write ``model`` (and optional EMA weights and extra files) as a checkpoint folder.

    An existing ``folder`` is replaced whole, but only when it is empty or a checkpoint folder
    holding nothing else (the files above, and those of ``extra_files``); any other folder or a
    file there raises :class:`CheckpointError` and is left as it is."""
    _check_replaceable(Path(folder), set(extra_files or ()))
    config = {"format": FORMAT, "model": model.config.to_dict(), **(metadata or {})}

    def write(temporary: Path) -> None:
        temporary.mkdir()
        save_tensors(model.state_dict(), temporary / MODEL_FILE)
        if ema_state is not None:
            save_tensors(ema_state, temporary / EMA_FILE)
        for name, writer in (extra_files or {}).items():
            writer(temporary / name)
        (temporary / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")

    return write_atomically(Path(folder), write)


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder from itself, or from a run folder (its latest checkpoint)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist")
    if (path / CONFIG_FILE).is_file():
        return path
    latest = path / "checkpoints" / LATEST_FILE
    if latest.is_file():
        name = latest.read_text(encoding="utf-8", errors="replace").strip()
        if checkpoint_step(name) is None:
            raise CheckpointError(
                f"{latest} names {name!r}, not a checkpoint folder of this run (step_XXXXXXX)"
            )
        folder = path / "checkpoints" / name
        if not folder.is_dir():
            recover_interrupted_writes(folder.parent)
        if not (folder / CONFIG_FILE).is_file():
            raise CheckpointError(f"{latest} names {name}, which is missing or incomplete")
        return folder
    if (path / "model_index.json").is_file():
        raise CheckpointError(
            f"{path} is a diffusers pipeline folder: `patronus import-diffusers {path} OUT` "
            "writes it as a checkpoint (or load it with PatronusPipeline.from_pretrained)"
        )
    raise CheckpointError(
        f"{path} is neither a checkpoint folder (with {CONFIG_FILE}) nor a run folder "
        f"(with checkpoints/{LATEST_FILE})"
    )


def load_model(
    path: str | Path, ema: bool = True, map_location: str | torch.device = "cpu"
) -> Patronus:
    """Load a Patronus from a checkpoint or run folder; EMA weights when present and ``ema``.

    The model comes in eval mode, as diffusers' ``from_pretrained`` gives it (dropout off); call
    ``.train()`` to train it (``Trainer.fit`` does)."""
    folder = resolve_checkpoint(path)
    data = read_config(folder)
    try:
        config = PatronusConfig.from_dict(data["model"])
    except (TypeError, ValueError) as error:
        raise CheckpointError(
            f"{folder / CONFIG_FILE} has an invalid model config: {error}"
        ) from error
    weights = folder / (EMA_FILE if ema and (folder / EMA_FILE).is_file() else MODEL_FILE)
    _check_shapes(weights, config)
    model = Patronus(config)
    state = load_tensors(weights)
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise CheckpointError(f"{weights} does not fit its config: {error}") from error
    return model.to(map_location).eval()


def _check_shapes(weights: Path, config: PatronusConfig) -> None:
    """Compare the weights file's header with the model the config describes, before allocating
    anything (a config asking for 10**9 prototypes fails here, not in the allocator)."""
    if not weights.is_file():
        raise CheckpointError(f"missing {weights}")
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in Patronus(config).state_dict().items()}
    try:
        with safe_open(str(weights), framework="pt") as handle:
            names = handle.keys()  # safe_open handles are not iterable
            found = {k: tuple(handle.get_slice(k).get_shape()) for k in names}
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{weights} is corrupt or not a safetensors file: {error}") from error
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = [k for k in sorted(set(expected) & set(found)) if expected[k] != found[k]]
    if missing or unexpected or wrong:
        details = [f"{k}: {found[k]} in the file, {expected[k]} by the config" for k in wrong[:3]]
        raise CheckpointError(
            f"{weights} does not fit its config: missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}{'; ' if details else ''}{'; '.join(details)}"
        )
