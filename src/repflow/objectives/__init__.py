"""Training objectives: flow matching plus method-specific terms."""

from .base import ModelWithObjective, Objective, Term, TrainBatch

__all__ = ["ModelWithObjective", "Objective", "Term", "TrainBatch"]
