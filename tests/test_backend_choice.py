"""Backend selection (patronus._backend): the choice is made once per requested backend and
device, and made again when PATRONUS_BACKEND changes."""

import pytest
import torch

from patronus import _backend


def _counting_backends():
    calls = []

    def cpp(device):
        calls.append(("cpp", device))
        return "not built here"

    def torch_probe(device):
        calls.append(("torch", device))
        return None

    return _backend.OpBackends("toy_op", {"cpp": cpp, "torch": torch_probe}), calls


def test_the_choice_is_probed_once_per_device(monkeypatch):
    monkeypatch.delenv(_backend.ENV_VAR, raising=False)
    backends, calls = _counting_backends()
    cpu = torch.device("cpu")
    first = backends.select(cpu)
    assert first == _backend.BackendChoice("torch", "cpp: not built here")
    assert backends.select(cpu) is first
    assert calls == [("cpp", cpu), ("torch", cpu)]
    backends.select(torch.device("meta"))
    assert len(calls) == 4  # another device is probed afresh


def test_a_changed_request_is_honoured_and_a_refusal_is_never_kept(monkeypatch):
    backends, _ = _counting_backends()
    cpu = torch.device("cpu")
    monkeypatch.setenv(_backend.ENV_VAR, "auto")
    assert backends.select(cpu).reason == "cpp: not built here"
    monkeypatch.setenv(_backend.ENV_VAR, "torch")
    assert backends.select(cpu) == _backend.BackendChoice("torch", "forced by PATRONUS_BACKEND")
    monkeypatch.setenv(_backend.ENV_VAR, "cpp")
    for _ in range(2):
        with pytest.raises(_backend.BackendUnavailableError, match="not built here"):
            backends.select(cpu)
    monkeypatch.setenv(_backend.ENV_VAR, "auto")
    assert backends.select(cpu).name == "torch"
