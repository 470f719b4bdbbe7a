"""``patronus.kernels`` in a source checkout: the Triton kernels live in the repository's
top-level ``kernels/`` folder, and this package reads its modules from there, so a checkout on
``sys.path`` works without installing or linking anything. Installs map ``kernels/`` to
``patronus.kernels`` directly (pyproject.toml) and never ship this file.
"""

from pathlib import Path

__path__ = [str(Path(__file__).resolve().parents[2] / "kernels")]
