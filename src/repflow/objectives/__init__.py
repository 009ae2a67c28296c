"""Training objectives: flow matching plus method-specific terms (REPA, REG, ...)."""

from .base import ModelWithObjective, Objective, Term, TrainBatch
from .reg import RegTerm
from .repa import RepaTerm

__all__ = ["ModelWithObjective", "Objective", "RegTerm", "RepaTerm", "Term", "TrainBatch"]
