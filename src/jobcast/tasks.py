"""Tasks: the functions jobs run, and the params model taken from each one's signature."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, create_model

from .exceptions import UnknownTask

__all__ = ["Duplicates", "Mode", "Task", "TaskRegistry", "params_model"]

Mode = Literal["thread", "process"]
MODES: tuple[str, ...] = typing.get_args(Mode)

#: What starting a job does when one of the same task with equal params is queued or running.
Duplicates = Literal["allow", "reject", "join"]
DUPLICATES: tuple[str, ...] = typing.get_args(Duplicates)


@dataclass(frozen=True, slots=True)
class Task:
    """A registered task: what to run, how, and which params it accepts."""

    name: str
    func: Callable[..., Any]
    params_model: type[BaseModel]
    description: str = ""
    mode: Mode = "thread"
    max_concurrency: int | None = None
    timeout: float | None = None
    nice: int = 10  # added to a process-mode worker's CPU niceness
    duplicates: Duplicates = "allow"
    retry_on_restart: bool = False  # run again, rather than end interrupted, after a restart

    def info(self) -> dict[str, Any]:
        """The task as ``GET /api/tasks`` lists it."""
        return {
            "name": self.name,
            "description": self.description,
            "params_schema": self.params_model.model_json_schema(),
            "mode": self.mode,
            "max_concurrency": self.max_concurrency,
            "timeout": self.timeout,
            "duplicates": self.duplicates,
        }

    def validate(self, params: object) -> dict[str, Any]:
        """Validate raw params; return them as JSON-ready data. Raises pydantic's error."""
        return self.params_model.model_validate(params).model_dump(mode="json")


def params_model(func: Callable[..., Any], name: str) -> type[BaseModel]:
    """Build the pydantic model of a task's params from its signature.

    The first parameter is the job context and is skipped; every other one becomes a field,
    with its annotation (``Annotated[int, Field(le=10)]`` sets bounds) and default. Unknown
    fields are refused, so a typo is a 422 instead of a silently ignored param.
    """
    signature = inspect.signature(func)
    hints = typing.get_type_hints(func, include_extras=True)
    parameters = list(signature.parameters.values())
    if not parameters:
        raise TypeError(f"task {name!r} must take the job context as its first parameter")
    fields: dict[str, Any] = {}
    for parameter in parameters[1:]:
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            raise TypeError(f"task {name!r}: *args and **kwargs cannot be params; name each one")
        if parameter.kind is parameter.POSITIONAL_ONLY:
            raise TypeError(f"task {name!r}: param {parameter.name!r} cannot be positional-only")
        annotation = hints.get(parameter.name, Any)
        default = ... if parameter.default is parameter.empty else parameter.default
        fields[parameter.name] = (annotation, default)
    title = "".join(part.capitalize() for part in name.replace("-", "_").split("_")) + "Params"
    model: type[BaseModel] = create_model(title, __config__=ConfigDict(extra="forbid"), **fields)
    return model


def _describe(func: Callable[..., Any]) -> str:
    doc = inspect.getdoc(func) or ""
    return doc.split("\n\n", 1)[0].replace("\n", " ").strip()


class TaskRegistry:
    """The tasks of one :class:`~jobcast.JobCast`, by name."""

    def __init__(self) -> None:
        self._tasks: dict[str, Task] = {}

    def register(
        self,
        func: Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
        mode: Mode = "thread",
        max_concurrency: int | None = None,
        timeout: float | None = None,
        nice: int = 10,
        duplicates: Duplicates = "allow",
        retry_on_restart: bool = False,
    ) -> Task:
        name = name or func.__name__
        if not name.replace("-", "_").isidentifier():
            raise ValueError(f"name must be letters, digits, '_' or '-', got {name!r}")
        if name in self._tasks:
            raise ValueError(f"name {name!r} is already registered")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if max_concurrency is not None and max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, got {max_concurrency!r}")
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout must be positive seconds, got {timeout!r}")
        if duplicates not in DUPLICATES:
            raise ValueError(f"duplicates must be one of {DUPLICATES}, got {duplicates!r}")
        if not 0 <= nice <= 19:
            raise ValueError(f"nice must be between 0 and 19, got {nice!r}")
        if mode == "process" and "<locals>" in getattr(func, "__qualname__", "<locals>"):
            raise ValueError(
                f"task {name!r}: mode='process' needs a module-level function, since the "
                "worker process imports it by name"
            )
        if inspect.iscoroutinefunction(func):
            raise TypeError(f"task {name!r} must be a plain function, not a coroutine function")
        task = Task(
            name=name,
            func=func,
            params_model=params_model(func, name),
            description=_describe(func) if description is None else description,
            mode=mode,
            max_concurrency=max_concurrency,
            timeout=timeout,
            nice=nice,
            duplicates=duplicates,
            retry_on_restart=retry_on_restart,
        )
        self._tasks[name] = task
        return task

    def get(self, name: str) -> Task:
        try:
            return self._tasks[name]
        except KeyError:
            raise UnknownTask(name, list(self._tasks)) from None

    def __iter__(self) -> Iterator[Task]:
        return iter(self._tasks.values())

    def __len__(self) -> int:
        return len(self._tasks)

    def __contains__(self, name: object) -> bool:
        return name in self._tasks
