"""Projections: tables folded from the event log, each owning its schema and apply code."""

from .base import Projection, ProjectionWriter
from .jobs import JobsProjection, JobsWriter, evolve

__all__ = ["JobsProjection", "JobsWriter", "Projection", "ProjectionWriter", "evolve"]
