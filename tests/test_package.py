"""Importing the package, info(), and what it must not do at import time."""

import os
import subprocess
import sys

import patronus


def run_python(code: str, **env: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_import_never_initialises_cuda_nor_imports_triton():
    out = run_python(
        "import sys, torch, patronus, patronus.ops, patronus.kernels, patronus.train\n"
        "m = patronus.Patronus(patronus.PatronusConfig())\n"
        "print(torch.cuda.is_initialized(), 'triton' in sys.modules)"
    )
    assert out.split() == ["False", "False"]


def test_import_works_without_triton():
    blocker = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'triton' or name.startswith('triton.'):\n"
        "            raise ImportError('blocked')\n"
        "sys.meta_path.insert(0, Block())\n"
    )
    out = run_python(blocker + "import patronus\nprint(patronus.info())")
    assert "triton:" in out


def test_info_reports_versions_devices_and_backends():
    text = patronus.info()
    for needle in (
        "torch ",
        "python ",
        "extension patronus._C",
        "device cpu",
        "prototype_min_distance",
        "prototype_distance_map",
        "q_sample",
    ):
        assert needle in text


def test_python_dash_m_info():
    result = subprocess.run(
        [sys.executable, "-m", "patronus", "info"], capture_output=True, text=True, check=True
    )
    assert "prototype_min_distance" in result.stdout


def test_a_plain_checkout_imports_the_triton_kernels(tmp_path):
    """No install, no link: patronus/ and kernels/ side by side on sys.path are enough."""
    import shutil
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    for folder in ("patronus", "kernels"):
        shutil.copytree(root / folder, tmp_path / folder, ignore=shutil.ignore_patterns("*.so"))
    code = "import patronus.kernels.prototype_distance as k; print(k.__file__)"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env={**os.environ, "PATRONUS_BUILD_EXT": "0"},
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()) == tmp_path / "kernels" / "prototype_distance.py"
