"""The ``vlm-swap`` command line: each command parses, calls one library function, prints.

``app`` (its shared options, errors and the library import) is in ``app``; the commands are in
``reports`` (inspect, list, pairs), ``models`` (upgrade, build, generate, merge, export) and ``runs``
(train, eval, compare, demo). ``python -m vlm_swap.cli`` runs it as the console script does.
"""

from . import models, reports, runs
from .app import app, main

# --help lists the commands in this order, not module by module as they register
ORDER = "inspect upgrade build list pairs generate train eval compare merge export demo".split()
app.registered_commands.sort(key=lambda info: ORDER.index(info.name or info.callback.__name__))

__all__ = ["app", "main", "models", "reports", "runs"]
