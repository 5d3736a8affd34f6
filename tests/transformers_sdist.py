"""Import transformers' own test helpers (ModelTesterMixin, ConfigTester) from the sdist that the set-up step fetched.

The files live in ``.cache/transformers-tests/<installed version>/tests`` (``make install`` runs
tools/fetch_transformers_tests.py).  They import each other relatively (``from .generation.test_utils import ...``),
so the folder is imported as a package (``transformers_sdist_tests``) rather than put on ``sys.path``.

The sdist leaves out three modules that ``test_modeling_common.py`` / ``test_configuration_common.py`` import:
``generation/test_utils.py`` (GenerationTesterMixin: our own generation tests are tests/test_generation.py),
``exporters/test_export.py`` (ExportTesterMixin, a base class of ModelTesterMixin: torch.export tests, not run) and
``utils/test_configuration_utils.py`` (``config_common_kwargs``, read only for configs without sub-configs, which
MedVQA's is not).  They are registered below as empty modules holding those names, so the tests that *are* shipped
run unchanged.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from importlib.metadata import version
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "transformers_sdist_tests"
TESTS_FOLDER = REPO / ".cache" / "transformers-tests" / version("transformers") / "tests"

# module -> names it must hold, for the modules the sdist does not ship (see the module docstring)
_NOT_SHIPPED = {
    "exporters": {},
    "exporters.test_export": {"ExportTesterMixin": type("ExportTesterMixin", (), {})},
    "generation": {},
    "generation.test_utils": {"GenerationTesterMixin": type("GenerationTesterMixin", (), {})},
    "utils": {},
    "utils.test_configuration_utils": {"config_common_kwargs": {}},
}


def import_sdist_module(name: str) -> types.ModuleType:
    """``transformers_sdist_tests.<name>``, e.g. ``test_modeling_common``; fails (not skips) if never fetched."""
    if not (TESTS_FOLDER / f"{name}.py").is_file():
        pytest.fail(
            f"transformers' test sources are missing ({TESTS_FOLDER / (name + '.py')}): run `make install`, "
            "which fetches them from the transformers sdist (tools/fetch_transformers_tests.py)",
            pytrace=False,
        )
    if PACKAGE not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            PACKAGE, TESTS_FOLDER / "__init__.py", submodule_search_locations=[str(TESTS_FOLDER)]
        )
        package = importlib.util.module_from_spec(spec)
        sys.modules[PACKAGE] = package
        spec.loader.exec_module(package)
        for sub, names in _NOT_SHIPPED.items():
            shipped = TESTS_FOLDER / sub.replace(".", "/")
            if shipped.is_dir() or shipped.with_suffix(".py").is_file():
                continue  # a later sdist that ships it: use the real one
            module = types.ModuleType(f"{PACKAGE}.{sub}")
            module.__path__ = []  # importable as a package too
            module.__dict__.update(names)
            sys.modules[module.__name__] = module
    return importlib.import_module(f"{PACKAGE}.{name}")
