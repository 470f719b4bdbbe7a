"""Importing the package, info(), and what it must not do at import time."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

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
    """Triton absent as Python sees an uninstalled module: importing it fails and
    importlib.util.find_spec gives None (CUDA builds of torch ask find_spec at import; a finder
    that raised instead broke torch's own import)."""
    absent = "import sys\nsys.modules['triton'] = None\n"
    out = run_python(absent + "import patronus\nprint(patronus.info())")
    assert "triton: Triton is not installed" in out, out


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


IGNORED = shutil.ignore_patterns("*.so", "__pycache__")


def copy_sources(root: Path, to: Path) -> Path:
    """What a build reads, copied (setuptools' build/ folder in the checkout keeps older files)."""
    for folder in ("patronus", "kernels", "csrc"):
        shutil.copytree(root / folder, to / folder, ignore=IGNORED)
    for name in ("pyproject.toml", "setup.py", "README.md", "MANIFEST.in"):
        shutil.copy(root / name, to / name)
    return to


def source_modules(root) -> list[str]:
    """Every importable module of the source tree, as installs name them (kernels/ is
    patronus.kernels), ``__main__`` modules left out (importing one runs the command line)."""
    names = []
    for folder, package in (("patronus", "patronus"), ("kernels", "patronus.kernels")):
        for path in sorted((root / folder).rglob("*.py")):
            parts = path.relative_to(root / folder).with_suffix("").parts
            if (folder == "patronus" and parts[0] == "kernels") or parts[-1] == "__main__":
                continue  # the checkout's shim for kernels/ (never installed); entry points
            names.append(".".join((package, *parts)).removesuffix(".__init__"))
    return names


def test_a_wheel_holds_every_module(tmp_path):
    """A plain (non-editable) install gets the whole package: ``pip wheel`` without the
    extension, unpacked, and imported with no site hooks (the editable install's finder would
    fill the gaps from the checkout), every module of the source tree."""
    import site
    import zipfile

    root = Path(__file__).resolve().parents[1]
    source = copy_sources(root, tmp_path / "source")
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(tmp_path / "dist"), str(source)],
        env={**os.environ, "PATRONUS_BUILD_EXT": "0"}, capture_output=True, text=True,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("patronus-*.whl")
    zipfile.ZipFile(wheel).extractall(tmp_path / "site")
    assert "__path__" not in (tmp_path / "site/patronus/kernels/__init__.py").read_text()
    assert (tmp_path / "site/patronus/py.typed").is_file()  # PEP 561 marker: typed package
    (entry_points,) = (tmp_path / "site").glob("patronus-*.dist-info/entry_points.txt")
    assert "patronus = patronus.cli:main" in entry_points.read_text()
    modules = source_modules(root)
    code = f"import importlib\nfor name in {modules!r}:\n    importlib.import_module(name)\n"
    code += "import patronus.cli\nprint(patronus.cli.__file__)"
    path = os.pathsep.join([str(tmp_path / "site"), *site.getsitepackages()])
    result = subprocess.run(
        [sys.executable, "-S", "-c", code], cwd=tmp_path, env={**os.environ, "PYTHONPATH": path},
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()).is_relative_to(tmp_path / "site")
    assert len(modules) > 90


def test_the_source_distribution_holds_what_the_extension_build_reads(tmp_path):
    """Every C++/CUDA file of csrc/ (its tests aside) is in the sdist, and every file one of them
    includes with quotes is there too: setuptools puts only the compiled sources in by itself."""
    import re
    import tarfile

    root = Path(__file__).resolve().parents[1]
    source = copy_sources(root, tmp_path / "source")
    built = subprocess.run(
        [sys.executable, "setup.py", "-q", "sdist", "--dist-dir", str(tmp_path / "dist")],
        cwd=source, env={**os.environ, "PATRONUS_BUILD_EXT": "0"}, capture_output=True, text=True,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    (archive,) = (tmp_path / "dist").glob("patronus-*.tar.gz")
    with tarfile.open(archive) as sdist:
        sdist.extractall(tmp_path / "unpacked", filter="data")
    (unpacked,) = (tmp_path / "unpacked").iterdir()
    shipped = {p.relative_to(unpacked) for p in (unpacked / "csrc").rglob("*") if p.is_file()}
    expected = {
        p.relative_to(root)
        for p in (root / "csrc").rglob("*")
        if p.suffix in (".cpp", ".cu", ".cuh", ".h") and "tests" not in p.parts
    }
    assert shipped == expected
    for path in shipped:
        for name in re.findall(r'#include "([^"]+)"', (unpacked / path).read_text()):
            assert (unpacked / path.parent / name).resolve().is_file(), (path, name)


def test_dir_lists_every_public_name():
    assert set(patronus.__all__) <= set(dir(patronus))
    for name in patronus.__all__:
        assert getattr(patronus, name) is not None


def test_a_type_checker_sees_the_public_api(tmp_path):
    """mypy, on a user's script: the lazily imported functions have their signatures (not Any)
    and a wrong argument is caught."""
    root = Path(__file__).resolve().parents[1]
    script = tmp_path / "user.py"
    script.write_text(
        "import patronus\n"
        "model = patronus.load_model('run')\n"
        "reveal_type(model)\n"
        "reveal_type(patronus.save_model)\n"
        "reveal_type(patronus.load_reference_checkpoint('ckpt.tar'))\n"
        "model.encode(3)\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--follow-imports=silent", "--cache-dir",
         str(tmp_path / "cache"), str(script)],
        cwd=tmp_path, env={**os.environ, "MYPYPATH": str(root)}, capture_output=True, text=True,
    )  # fmt: skip
    lines = result.stdout.splitlines()
    assert 'user.py:3: note: Revealed type is "patronus.models.patronus.Patronus"' in lines
    assert any(line.startswith('user.py:4: note: Revealed type is "def (model:') for line in lines)
    assert 'user.py:5: note: Revealed type is "patronus.models.patronus.Patronus"' in lines
    assert any('user.py:6: error: Argument 1 to "encode"' in line for line in lines), lines
