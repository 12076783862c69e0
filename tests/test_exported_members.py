from __future__ import annotations

from types import ModuleType

import jobcast


def test_all_imports_are_exported() -> None:
    included_private_members = ["__version__"]
    exported = [
        member
        for member, value in vars(jobcast).items()
        if (not member.startswith("_") or member in included_private_members)
        # submodules become attributes of the package once imported; the future import is not API
        and not isinstance(value, ModuleType)
        and type(value).__module__ != "__future__"
    ]

    assert sorted(jobcast.__all__) == sorted(exported)


def test_every_name_in_all_exists_once() -> None:
    assert len(set(jobcast.__all__)) == len(jobcast.__all__)
    for name in jobcast.__all__:
        assert hasattr(jobcast, name), name


def test_version_is_a_version_string() -> None:
    assert isinstance(jobcast.__version__, str)
    assert all(part.isdigit() for part in jobcast.__version__.split(".")[:2])
