from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import pytest
from pydantic import Field

from jobcast import InvalidParams, JobcastError, JobContext, UnknownTask
from jobcast.executors import ThreadExecutor
from jobcast.tasks import Task, TaskRegistry


def resize(ctx: JobContext, folder: str, quality: Annotated[int, Field(ge=1, le=100)] = 80) -> int:
    """Resize every image of a folder.

    Writes the resized copies next to the originals.
    """
    return quality


def crunch(ctx: JobContext, rows: int) -> int:
    return rows


def register(func: Callable[..., Any], **options: Any) -> Task:
    return TaskRegistry().register(func, **options)


# Tasks registered in a loop at module level: the loop variable is a module global, so a params
# model built from annotation strings after the loop would see its last value for both tasks.
LOOP_TASKS = TaskRegistry()
for _name, _limit in (("small", 10), ("large", 1000)):

    def _count(ctx: JobContext, n: Annotated[int, Field(ge=1, le=_limit)] = 1) -> int:
        return n

    LOOP_TASKS.register(_count, name=_name)


# -- params model ----------------------------------------------------------------------------


def test_params_take_defaults_from_the_signature() -> None:
    task = register(resize)

    assert task.validate({"folder": "in"}) == {"folder": "in", "quality": 80}
    assert task.validate({"folder": "in", "quality": 5}) == {"folder": "in", "quality": 5}


def test_params_without_default_are_required() -> None:
    task = register(resize)

    with pytest.raises(InvalidParams) as caught:
        task.validate({"quality": 5})

    assert [(error["type"], error["loc"]) for error in caught.value.errors] == [
        ("missing", ["body", "folder"])
    ]


@pytest.mark.parametrize("quality", [0, 101, -5])
def test_params_bounds_from_annotated_field_are_enforced(quality: int) -> None:
    task = register(resize)

    with pytest.raises(InvalidParams, match="quality"):
        task.validate({"folder": "in", "quality": quality})


@pytest.mark.parametrize("quality", [1, 100])
def test_params_bounds_are_inclusive(quality: int) -> None:
    assert register(resize).validate({"folder": "in", "quality": quality})["quality"] == quality


def test_params_refuse_unknown_fields() -> None:
    task = register(resize)

    with pytest.raises(InvalidParams) as caught:
        task.validate({"folder": "in", "qualty": 5})

    assert [(error["type"], error["loc"]) for error in caught.value.errors] == [
        ("extra_forbidden", ["body", "qualty"])
    ]


def test_params_refuse_the_wrong_type() -> None:
    with pytest.raises(InvalidParams, match="rows"):
        register(crunch).validate({"rows": "many"})


def anything(ctx: JobContext, line: str, ratio: float, extra: Any = None) -> None:
    pass


@pytest.mark.parametrize(
    ("params", "kind", "loc"),
    [
        ({"line": "x\ud800y", "ratio": 1.0}, "string_unicode", ("line",)),
        ({"line": "ok", "ratio": float("nan")}, "finite_number", ("ratio",)),
        ({"line": "ok", "ratio": float("inf")}, "finite_number", ("ratio",)),
        ({"line": "ok", "ratio": 1, "extra": {"deep": [float("nan")]}}, "finite_number", None),
        ({"line": "ok", "ratio": 1, "extra": {"\udce9": 1}}, "string_unicode", None),
        ({"line": "ok", "ratio": 1, "extra": 10**5000}, "int_too_long", ("extra",)),
    ],
)
def test_params_json_cannot_carry_are_refused_naming_the_field_even_in_process(
    params: dict[str, Any], kind: str, loc: tuple[str, ...] | None
) -> None:
    with pytest.raises(InvalidParams) as caught:
        register(anything).validate(params)

    (error,) = caught.value.errors
    assert error["type"] == kind
    assert error["loc"][:2] == ["body", (loc or ("extra",))[0]]
    if loc is not None:
        assert error["loc"] == ["body", *loc]
    assert f"task 'anything': {error['loc'][1]}" in str(caught.value)  # names the field


def test_task_with_only_the_context_takes_no_params() -> None:
    def ping(ctx: JobContext) -> None:
        pass

    task = register(ping)

    assert task.validate({}) == {}
    with pytest.raises(InvalidParams):
        task.validate({"anything": 1})


def test_params_json_schema_has_the_fields() -> None:
    schema = register(resize).info()["params_schema"]

    assert schema["title"] == "ResizeParams"
    assert schema["required"] == ["folder"]
    assert schema["additionalProperties"] is False
    assert schema["properties"]["folder"]["type"] == "string"
    quality = schema["properties"]["quality"]
    assert (quality["type"], quality["default"]) == ("integer", 80)
    assert (quality["minimum"], quality["maximum"]) == (1, 100)
    assert "ctx" not in schema["properties"]


def test_params_model_title_from_a_dashed_name() -> None:
    task = register(crunch, name="crunch-numbers")

    assert task.params_model.model_json_schema()["title"] == "CrunchNumbersParams"


def test_tasks_registered_in_a_loop_get_their_own_params_models() -> None:
    small, large = LOOP_TASKS.get("small"), LOOP_TASKS.get("large")

    assert small.params_model is not large.params_model
    with pytest.raises(InvalidParams):
        small.validate({"n": 11})
    assert large.validate({"n": 11}) == {"n": 11}
    assert small.info()["params_schema"]["properties"]["n"]["maximum"] == 10
    assert large.info()["params_schema"]["properties"]["n"]["maximum"] == 1000


def test_tasks_made_by_a_loop_keep_their_own_defaults() -> None:
    registry = TaskRegistry()
    for name, default in (("a", 1), ("b", 2)):

        def job(ctx: JobContext, size: int = default) -> int:
            return size

        registry.register(job, name=name)

    assert registry.get("a").validate({}) == {"size": 1}
    assert registry.get("b").validate({}) == {"size": 2}


# -- description and info --------------------------------------------------------------------


def test_description_is_the_first_paragraph_of_the_docstring() -> None:
    def report(ctx: JobContext) -> None:
        """Build the monthly report
        for every region.

        Takes a while.
        """

    assert register(resize).description == "Resize every image of a folder."
    assert register(report).description == "Build the monthly report for every region."


def test_description_is_empty_without_a_docstring() -> None:
    assert register(crunch).description == ""


def test_explicit_description_wins_over_the_docstring() -> None:
    assert register(resize, description="Shrink photos").description == "Shrink photos"


def test_info_lists_what_get_api_tasks_shows() -> None:
    info = register(resize, max_concurrency=2, timeout=60).info()

    assert {key: value for key, value in info.items() if key != "params_schema"} == {
        "name": "resize",
        "description": "Resize every image of a folder.",
        "mode": "thread",
        "max_concurrency": 2,
        "timeout": 60,
        "duplicates": "allow",
        "retries": 0,
    }


def test_name_defaults_to_the_function_name() -> None:
    registry = TaskRegistry()
    registry.register(resize)
    registry.register(crunch, name="crunch-numbers")

    assert [task.name for task in registry] == ["resize", "crunch-numbers"]
    assert len(registry) == 2
    assert "crunch-numbers" in registry
    assert "crunch" not in registry


# -- registration errors ---------------------------------------------------------------------


def test_registering_a_name_twice_is_refused() -> None:
    registry = TaskRegistry()
    registry.register(resize)

    with pytest.raises(ValueError, match="'resize' is already registered"):
        registry.register(crunch, name="resize")

    assert registry.get("resize").executor == ThreadExecutor(resize)


@pytest.mark.parametrize("name", ["has space", "a/b", "9lives", "dot.ted", "../etc"])
def test_bad_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="name must be letters"):
        register(crunch, name=name)


def test_star_args_are_refused() -> None:
    def splat(ctx: JobContext, *files: str) -> None:
        pass

    def options(ctx: JobContext, **options: str) -> None:
        pass

    with pytest.raises(TypeError, match=r"'splat': \*args and \*\*kwargs"):
        register(splat)
    with pytest.raises(TypeError, match=r"'options': \*args and \*\*kwargs"):
        register(options)


def test_positional_only_params_are_refused() -> None:
    def positional(ctx: JobContext, folder: str, /) -> None:
        pass

    with pytest.raises(TypeError, match="'folder' cannot be positional-only"):
        register(positional)


def test_a_param_named_like_an_option_of_start_is_refused() -> None:
    # pydantic would take `_delay` for a private attribute: the param would never arrive.
    def shadowing(ctx: JobContext, _delay: float = 1.0) -> None:
        pass

    with pytest.raises(TypeError, match="'_delay' cannot start with '_'"):
        register(shadowing)


def test_a_function_without_the_context_parameter_is_refused() -> None:
    def bare() -> None:
        pass

    with pytest.raises(TypeError, match="must take the job context"):
        register(bare)


def test_a_coroutine_function_is_refused() -> None:
    async def fetch(ctx: JobContext) -> None:
        pass

    with pytest.raises(TypeError, match="'fetch' must be a plain function, not a coroutine"):
        register(fetch)


def test_an_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="mode must be one of .*'bogus'"):
        register(crunch, mode="bogus")


@pytest.mark.parametrize("max_concurrency", [0, -1])
def test_max_concurrency_below_1_is_refused(max_concurrency: int) -> None:
    with pytest.raises(ValueError, match="max_concurrency must be at least 1"):
        register(crunch, max_concurrency=max_concurrency)


@pytest.mark.parametrize("timeout", [0, -1.5])
def test_a_timeout_that_is_not_positive_is_refused(timeout: float) -> None:
    with pytest.raises(ValueError, match="timeout must be positive"):
        register(crunch, timeout=timeout)


def test_a_refused_registration_leaves_the_name_free() -> None:
    registry = TaskRegistry()

    with pytest.raises(ValueError):
        registry.register(crunch, timeout=0)

    assert "crunch" not in registry
    assert registry.register(crunch, timeout=1).timeout == 1


# -- lookup ----------------------------------------------------------------------------------


def test_get_of_an_unknown_name_lists_the_known_ones() -> None:
    registry = TaskRegistry()
    registry.register(resize)
    registry.register(crunch)

    with pytest.raises(UnknownTask, match="'resise'; choose one of: crunch, resize") as caught:
        registry.get("resise")

    assert isinstance(caught.value, JobcastError)
    assert caught.value.name == "resise"
    assert sorted(caught.value.known) == ["crunch", "resize"]


def test_get_from_an_empty_registry_says_none_are_registered() -> None:
    with pytest.raises(UnknownTask, match="none registered"):
        TaskRegistry().get("resize")
