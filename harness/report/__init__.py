"""`harness report`: rows (runs grouped per experiment), stats (is a difference real?),
budget (which recipe for a time budget), charts, and build (the HTML page)."""

from .build import build_report
from .rows import distance_to_interval

__all__ = ["build_report", "distance_to_interval"]
