"""Evaluation: generation quality (Fréchet distance and KID on extracted features), prototype
quality (linear probes, TAD, factor-prototype ROC-AUC) and shortcut diagnosis."""

from patronus.eval.diagnosis import Diagnosis, decorrelated_sample, diagnose
from patronus.eval.frechet import feature_statistics, frechet_distance, kernel_distance
from patronus.eval.intervention import confirm, intervene
from patronus.eval.probes import auroc_matrix, linear_probes, tad
from patronus.eval.roc import factor_auroc, roc_auc

__all__ = [
    "Diagnosis",
    "auroc_matrix",
    "confirm",
    "decorrelated_sample",
    "diagnose",
    "factor_auroc",
    "feature_statistics",
    "frechet_distance",
    "intervene",
    "kernel_distance",
    "linear_probes",
    "roc_auc",
    "tad",
]
