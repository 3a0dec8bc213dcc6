"""Plots (matplotlib, Agg): the region map of a slide."""

from ._region_map import region_map

__all__ = ["region_map"]
