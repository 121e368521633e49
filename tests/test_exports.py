"""The public API: every name in ``__all__`` exists, the list is sorted, the version is set.

After httpx's ``tests/test_exported_members.py``.
"""

from __future__ import annotations

import importlib.metadata
from types import ModuleType

import pytest

import dispatcher
import dispatcher.testing


@pytest.mark.parametrize("module", [dispatcher, dispatcher.testing], ids=lambda m: m.__name__)
def test_every_exported_name_exists(module: ModuleType) -> None:
    exported: list[str] = module.__all__

    missing = [name for name in exported if not hasattr(module, name)]

    assert missing == []


@pytest.mark.parametrize("module", [dispatcher, dispatcher.testing], ids=lambda m: m.__name__)
def test_all_is_sorted_without_duplicates(module: ModuleType) -> None:
    exported: list[str] = module.__all__

    assert exported == sorted(set(exported))


def test_exported_members_belong_to_the_package() -> None:
    foreign = [
        name
        for name in dispatcher.__all__
        if not name.startswith("__")
        and not getattr(dispatcher, name).__module__.startswith("dispatcher.")
    ]

    assert foreign == []


def test_version_is_the_distribution_version() -> None:
    assert isinstance(dispatcher.__version__, str)
    assert dispatcher.__version__ == importlib.metadata.version("dispatcher")
