"""The ``local`` extra (``pip install 'dmd[local]'``): moto, flask, waitress and montydb serve only the
local stack (the AWS emulator, the provider simulators, the embedded campaign store), so a
production install does without them. What needs one says so in one line instead of an
ImportError deep in a stack trace."""

from __future__ import annotations

import importlib.util


class MissingExtra(RuntimeError):
    """A local-stack feature was asked for where the ``local`` extra is not installed."""


def require(feature: str, *modules: str) -> None:
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        raise MissingExtra(f"{feature} needs {', '.join(missing)}, from the local extra: pip install 'dmd[local]'")
