"""OpBackends remembers its choice per device and environment; asks again when either changes."""

import pytest
import torch

from patronus._backend import BackendUnavailableError, OpBackends


def test_a_choice_is_probed_once_per_device_and_environment(monkeypatch):
    asked = []

    def probe(name, answer):
        def ask(device):
            asked.append((name, device.type))
            return answer

        return ask

    backends = OpBackends("toy", {"cpp": probe("cpp", "not here"), "torch": probe("torch", None)})
    monkeypatch.delenv("PATRONUS_BACKEND", raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    cpu = torch.device("cpu")
    first = backends.select(cpu)
    assert first.name == "torch" and first.reason == "cpp: not here"
    assert backends.select(cpu) is first and asked == [("cpp", "cpu"), ("torch", "cpu")]
    backends.select(torch.device("meta"))  # another device: asked anew
    assert asked[2:] == [("cpp", "meta"), ("torch", "meta")]
    monkeypatch.setenv("PATRONUS_BACKEND", "torch")  # the environment changed: asked anew
    assert backends.select(cpu).reason == "forced by PATRONUS_BACKEND"
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    backends.select(cpu)
    assert asked[4:] == [("torch", "cpu"), ("torch", "cpu")]
    monkeypatch.setenv("PATRONUS_BACKEND", "cpp")
    for _ in range(2):  # a refusal is not remembered: raised on every call
        with pytest.raises(BackendUnavailableError, match=r"cpp.*not here"):
            backends.select(cpu)
    assert asked[6:] == [("cpp", "cpu"), ("cpp", "cpu")]
