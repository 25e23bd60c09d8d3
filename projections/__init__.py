"""Projections: the folds of the event log into read models, pure and shared by every backend.

A projection here is only its fold (`evolve` and `JobsFold` for the jobs projection): what a
row holds after each event. How the rows are stored is each backend's business
(`ledger.backends.sqlite.jobs_table`, ...); the live commands, replay and verify all run the same
fold, which is what makes the projection equal the fold of the log (law 3).
"""

from .base import Projection
from .jobs import JobsFold, JobsProjection, evolve

__all__ = ["JobsFold", "JobsProjection", "Projection", "evolve"]
