"""What reads finished runs: analyses, tables, figures and reports.

Every module of this package is imported here, so an analysis registers itself
(``g2d.results.analysis.ANALYSES``) in its own file and needs no line elsewhere.
"""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
