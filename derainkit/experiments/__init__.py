"""Experiments: the results store, the quoted paper values, and rendering tables and figures.

Notebooks in ``notebooks/`` declare a grid of runs, get each from a :class:`Lab` (which computes only
what its profile's store lacks) and render with :func:`render_table` / :func:`plot_table`.
"""
from __future__ import annotations

from derainkit.experiments import paper_values
from derainkit.experiments.lab import Lab, Profile
from derainkit.experiments.store import Store, spec_key
from derainkit.experiments.tables import Row, image_panel, plot_sweep, plot_table, render_table

__all__ = ["Lab", "Profile", "Row", "Store", "image_panel", "paper_values", "plot_sweep", "plot_table",
           "render_table", "spec_key"]
