"""Triton kernels, installed as ``patronus.kernels``.

Importing this package imports no Triton: each kernel module imports Triton itself, and the ops in
``patronus.ops`` import those modules only when a CUDA tensor (or the test interpreter) needs them.
"""
