"""Set-up step: fetch the test sources of the installed transformers release (its source distribution on PyPI).

tests/test_transformers_common.py runs transformers' own ``ModelTesterMixin`` against MedVQA.  Those test files are
not part of the transformers wheel, so ``make install`` downloads the sdist of exactly the installed version with pip
(``pip download --no-binary :all: --no-deps transformers==X``) and unpacks its ``tests/`` folder into
``.cache/transformers-tests/X/tests`` (git-ignored; never committed).  Run again, it does nothing.

    python tools/fetch_transformers_tests.py [--cache .cache]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tarfile
import tempfile
from importlib.metadata import version
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def tests_folder(cache: Path = REPO / ".cache", transformers_version: str | None = None) -> Path:
    """Where the unpacked ``tests/`` of the given (default: installed) transformers version lives."""
    return cache / "transformers-tests" / (transformers_version or version("transformers")) / "tests"


def fetch(cache: Path = REPO / ".cache") -> Path:
    """Download and unpack the installed transformers version's ``tests/``; returns the folder."""
    pinned = version("transformers")
    target = tests_folder(cache, pinned)
    if (target / "test_modeling_common.py").is_file():
        return target
    downloads = cache / "sdist"
    downloads.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-binary",
         ":all:", "--no-deps", "--no-build-isolation", f"transformers=={pinned}", "-d", str(downloads)],
        check=True,
    )  # fmt: skip
    archive = downloads / f"transformers-{pinned}.tar.gz"
    prefix = f"transformers-{pinned}/tests/"
    with tempfile.TemporaryDirectory(dir=cache) as tmp, tarfile.open(archive) as sdist:
        members = [m for m in sdist.getmembers() if m.name.startswith(prefix) and m.isfile()]
        if not any(m.name == prefix + "test_modeling_common.py" for m in members):
            raise SystemExit(f"{archive} has no tests/test_modeling_common.py")
        sdist.extractall(tmp, members=members, filter="data")
        unpacked = Path(tmp) / f"transformers-{pinned}" / "tests"
        # The sdist leaves out tests/__init__.py; transformers' ConfigTester imports its own folder as a package.
        (unpacked / "__init__.py").touch()
        target.parent.mkdir(parents=True, exist_ok=True)
        unpacked.rename(target)  # complete or absent: a half-unpacked folder never looks fetched
    return target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=REPO / ".cache")
    print(f"transformers tests: {fetch(parser.parse_args().cache)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
