from __future__ import annotations

from types import ModuleType

import pytest

import jobcast


def test_all_imports_are_exported() -> None:
    included_private_members = ["__version__"]
    # dir(), not vars(): the names are imported when first used.
    members = {member: getattr(jobcast, member) for member in dir(jobcast)}
    exported = [
        member
        for member, value in members.items()
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


def test_a_name_that_is_not_exported_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="has no attribute 'Runner'"):
        jobcast.Runner  # noqa: B018


def test_every_name_in_the_clients_all_is_exported() -> None:
    from jobcast import client

    exported = [
        name
        for name, value in vars(client).items()
        if not name.startswith("_")
        and not isinstance(value, ModuleType)
        and type(value).__module__ != "__future__"
    ]
    assert sorted(client.__all__) == sorted(exported)


def test_version_is_a_version_string() -> None:
    assert isinstance(jobcast.__version__, str)
    assert all(part.isdigit() for part in jobcast.__version__.split(".")[:2])
