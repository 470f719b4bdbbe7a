"""Evaluation: ROC-AUC and factor-prototype association (probes, TAD, FID come with the
evaluation issue)."""

from patronus.eval.roc import factor_auroc, roc_auc

__all__ = ["factor_auroc", "roc_auc"]
