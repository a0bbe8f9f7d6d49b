"""Bundled grids as pandapower nets, each with its source cited, plus user-imported grids.

    >>> import grids
    >>> grids.names()[:3]
    ['ieee9', 'ieee14', 'ieee30']
    >>> net = grids.load("urban_district")    # a fresh pandapower net on every call
    >>> grids.info("ieee14").buses
    14

Importing this package is cheap: pandapower is imported on the first load.
"""

from __future__ import annotations

from grids.importers import EXPORT_FORMATS, element_tables, export_net, import_file, load_file
from grids.registry import COUNT_TABLES, GridInfo, info, load, names, user_grid_dir

__all__ = [
    "COUNT_TABLES",
    "EXPORT_FORMATS",
    "GridInfo",
    "element_tables",
    "export_net",
    "import_file",
    "info",
    "load",
    "load_file",
    "names",
    "user_grid_dir",
]
