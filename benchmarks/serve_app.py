"""Serve the real app the way `halobestie serve` does, minus its migrate step (the
benchmark migrates once, up front). Usage: python -m benchmarks.serve_app PORT
(settings from the environment, as always)."""

from __future__ import annotations

import sys

from halobestie.cli import _serve
from halobestie.config import load_settings

if __name__ == "__main__":
    _serve(load_settings(), "127.0.0.1", int(sys.argv[1]))
