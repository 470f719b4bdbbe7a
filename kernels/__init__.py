"""Triton kernels, imported as ``patronus.kernels`` (installs map this folder to it; a checkout
reads it through ``patronus/kernels/__init__.py``).

Importing this package imports no Triton: each kernel module imports Triton itself, and the ops in
``patronus.ops`` import those modules only when a CUDA tensor (or the test interpreter) needs them.
"""
