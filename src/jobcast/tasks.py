"""Tasks: what jobs run (a function, or a declared command), and their params models."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import UnionType
from typing import Annotated, Any, Literal, TypedDict, Union, Unpack

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError, create_model
from pydantic_core import PydanticCustomError

from ._limits import check_params
from ._wire import safe_text
from .commands import check_template
from .exceptions import InvalidParams, TaskError, UnknownSchedule, UnknownTask
from .executors import CommandExecutor, Executor, ProcessExecutor, ThreadExecutor
from .schedules import Schedule

__all__ = [
    "CommandOptions",
    "Duplicates",
    "FunctionOptions",
    "Mode",
    "ScheduleOptions",
    "Task",
    "TaskOptions",
    "TaskRegistry",
    "params_model",
]

Mode = Literal["thread", "process"]
MODES: tuple[str, ...] = typing.get_args(Mode)  # what a function task may ask for

#: The most retries a task may declare, and the longest wait before one (a day).
MAX_RETRIES = 1000
MAX_RETRY_WAIT = 86_400.0

#: What starting a job does when one of the same task with equal params is queued or running.
Duplicates = Literal["allow", "reject", "join"]
DUPLICATES: tuple[str, ...] = typing.get_args(Duplicates)


class TaskOptions(TypedDict, total=False):
    """What every task declares, function or command; each has the default of :class:`Task`."""

    description: str
    max_concurrency: int | None
    timeout: float | None
    duplicates: Duplicates
    retry_on_restart: bool
    retries: int
    retry_delay: float
    backoff: float
    retry_on: type[BaseException] | tuple[type[BaseException], ...]


class ScheduleOptions(TypedDict, total=False):
    """A task may start on a schedule of its own: a cron expression (five fields, or six
    with seconds first; in UTC) or every so many seconds, with these params."""

    schedule: str
    every: float
    schedule_params: Mapping[str, Any]


class FunctionOptions(TaskOptions, ScheduleOptions, total=False):
    """The options of ``@jobs.task(...)``: the shared ones, and how the function runs."""

    name: str
    mode: Mode
    nice: int


class CommandOptions(TaskOptions, ScheduleOptions, total=False):
    """The options of ``jobs.command(...)``: the shared ones, and the program's params and
    surroundings."""

    params: Mapping[str, Any]
    cwd: str | None
    env: Mapping[str, str] | None
    success_codes: Collection[int]


@dataclass(frozen=True, slots=True)
class Task:
    """A registered task: what runs it (its executor), and which params it accepts."""

    name: str
    executor: Executor
    params_model: type[BaseModel]
    description: str = ""
    max_concurrency: int | None = None
    timeout: float | None = None
    duplicates: Duplicates = "allow"
    retry_on_restart: bool = False  # run again, rather than end interrupted, after a restart
    #: A failed attempt runs again, ``retries`` times at most, after ``retry_delay`` seconds
    #: times ``backoff`` to the power of the retries made before it; only for the exceptions
    #: in ``retry_on`` (a timeout is a ``TimeoutError``; a program's failure counts as any).
    retries: int = 0
    retry_delay: float = 1.0
    backoff: float = 2.0
    retry_on: type[BaseException] | tuple[type[BaseException], ...] = (Exception,)

    def __post_init__(self) -> None:
        if isinstance(self.retry_on, type):  # one class, as a tuple of it
            object.__setattr__(self, "retry_on", (self.retry_on,))

    def retry_wait(self, attempt: int) -> float:
        """Seconds between the failure of ``attempt`` (1-based) and the next attempt."""
        try:
            return min(self.retry_delay * self.backoff ** (attempt - 1), MAX_RETRY_WAIT)
        except OverflowError:
            return MAX_RETRY_WAIT

    def retries_on(self, cause: BaseException) -> bool:
        """Whether a failure with ``cause`` is one to try again."""
        if isinstance(cause, TaskError):
            # Raised in a worker process, or a program that failed: known by its name only.
            kinds = self.retry_on if isinstance(self.retry_on, tuple) else (self.retry_on,)
            return any(
                kind in (Exception, BaseException) or kind.__name__ == cause.type_name
                for kind in kinds
            )
        return isinstance(cause, self.retry_on)

    @property
    def mode(self) -> str:
        """How its jobs run: ``thread``, ``process`` or ``command``."""
        return self.executor.mode

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
            "retries": self.retries,
        }

    def validate(self, params: object) -> dict[str, Any]:
        """Validate raw params; return them as JSON-ready data. Raises
        :class:`~jobcast.InvalidParams`, also for what JSON cannot carry (text with a lone
        surrogate, NaN in an ``Any``): the one check of params, whoever starts the job."""
        try:
            # Checked before pydantic, which would write NaN in an ``Any`` as null, and fail
            # on a key with a lone surrogate when it dumps the model.
            self._refuse_what_cannot_travel(params)
            values = self.params_model.model_validate(params).model_dump(mode="json")
            self._refuse_what_cannot_travel(values)
        except ValidationError as exc:
            raise InvalidParams.located(self.name, exc, "body") from exc
        return values

    def _refuse_what_cannot_travel(self, params: object) -> None:
        problem = check_params(params)
        if problem is not None:
            error = PydanticCustomError(problem.kind, problem.message)
            loc = tuple(safe_text(part) if isinstance(part, str) else part for part in problem.loc)
            raise ValidationError.from_exception_data(
                self.params_model.__name__, [{"type": error, "loc": loc, "input": None}]
            )


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
    return _model(name, fields)


def _refuse_bool_and_str(value: object) -> object:
    if isinstance(value, bool | str):
        raise ValueError(f"must be a number, not {type(value).__name__} {value!r}")
    return value


def _numbers_stay_numbers(annotation: Any) -> Any:
    """``int``/``float`` params (or optional ones) refuse booleans and strings.

    pydantic's lax mode would read ``false`` as 0 and ``"5"`` as 5, which the JSON Schema of
    the params forbids; strict mode would also refuse ``52.0`` for an integer, which it
    allows. So only those two coercions are refused, before pydantic's own validation.
    """
    base = (
        typing.get_args(annotation)[0] if typing.get_origin(annotation) is Annotated else annotation
    )
    members = (
        set(typing.get_args(base)) if typing.get_origin(base) in (Union, UnionType) else {base}
    )
    members.discard(type(None))
    if members and members <= {int, float}:
        return Annotated[annotation, BeforeValidator(_refuse_bool_and_str)]
    return annotation


def _model(name: str, fields: dict[str, Any]) -> type[BaseModel]:
    for key in fields:
        if key.startswith("_"):
            # pydantic would take it for a private attribute, never a field; and those names
            # are the options of JobCast.start (_delay, _run_at, _priority).
            raise TypeError(f"task {name!r}: param {key!r} cannot start with '_'; rename it")
    fields = {
        key: (_numbers_stay_numbers(annotation), default)
        for key, (annotation, default) in fields.items()
    }
    title = "".join(part.capitalize() for part in name.replace("-", "_").split("_")) + "Params"
    # NaN and infinities are refused: JSON cannot carry them, so no job could hold them.
    config = ConfigDict(extra="forbid", allow_inf_nan=False)
    model: type[BaseModel] = create_model(title, __config__=config, **fields)
    return model


def _describe(func: Callable[..., Any]) -> str:
    doc = inspect.getdoc(func) or ""
    return doc.split("\n\n", 1)[0].replace("\n", " ").strip()


class TaskRegistry:
    """The tasks of one :class:`~jobcast.JobCast`, by name."""

    def __init__(self) -> None:
        self._tasks: dict[str, Task] = {}
        #: The schedules that start jobs of these tasks, by name.
        self.schedules: dict[str, Schedule] = {}

    def add_schedule(self, schedule: Schedule) -> Schedule:
        """Register ``schedule``; its task must be registered and accept its params."""
        if schedule.name in self.schedules:
            raise ValueError(f"a schedule named {schedule.name!r} is already registered")
        if schedule.task not in self._tasks:
            raise ValueError(
                f"schedule {schedule.name!r}: no task named {schedule.task!r}; register the "
                "task first"
            )
        task = self._tasks[schedule.task]
        try:
            task.validate(dict(schedule.params))
        except InvalidParams as exc:
            raise ValueError(
                f"schedule {schedule.name!r}: its params are not valid for task "
                f"{task.name!r}: {exc.problems}"
            ) from None
        self.schedules[schedule.name] = schedule
        return schedule

    def schedule(self, name: str) -> Schedule:
        try:
            return self.schedules[name]
        except KeyError:
            raise UnknownSchedule(name, list(self.schedules)) from None

    def register(
        self,
        func: Callable[..., Any],
        *,
        name: str | None = None,
        mode: Mode = "thread",
        nice: int = 10,
        schedule: str | None = None,
        every: float | None = None,
        schedule_params: Mapping[str, Any] | None = None,
        **options: Unpack[TaskOptions],
    ) -> Task:
        """Register a function as a task run in a thread, or a worker process; its
        description is the first paragraph of its docstring unless given."""
        name = name or func.__name__
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if not 0 <= nice <= 19:
            raise ValueError(f"nice must be between 0 and 19, got {nice!r}")
        if mode == "process" and "<locals>" in getattr(func, "__qualname__", "<locals>"):
            raise ValueError(
                f"task {name!r}: mode='process' needs a module-level function, since the "
                "worker process imports it by name"
            )
        if inspect.iscoroutinefunction(func):
            raise TypeError(f"task {name!r} must be a plain function, not a coroutine function")
        self._check_name(name)
        executor: Executor = (
            ProcessExecutor(func, nice) if mode == "process" else ThreadExecutor(func)
        )
        if "description" not in options:
            options["description"] = _describe(func)
        model = params_model(func, name)
        task = Task(name=name, executor=executor, params_model=model, **options)
        return self._add(task, Schedule.of(name, schedule, every, schedule_params))

    def register_command(
        self,
        name: str,
        argv: Sequence[str],
        *,
        params: Mapping[str, Any] | None = None,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        success_codes: Collection[int] = (0,),
        schedule: str | None = None,
        every: float | None = None,
        schedule_params: Mapping[str, Any] | None = None,
        **options: Unpack[TaskOptions],
    ) -> Task:
        """Register a command task: ``argv`` with ``{param}`` placeholders, never a shell.

        ``params`` maps each param to a type (required) or a ``(type, default)`` pair; types
        may be ``Annotated`` with pydantic ``Field`` bounds or patterns.
        """
        params = params or {}
        self._check_name(name)
        check_template(argv, list(params))
        fields = {
            key: spec if isinstance(spec, tuple) else (spec, ...) for key, spec in params.items()
        }
        executor = CommandExecutor(
            tuple(argv), cwd, dict(env or {}), frozenset(success_codes) or frozenset({0})
        )
        model = _model(name, fields)
        task = Task(name=name, executor=executor, params_model=model, **options)
        return self._add(task, Schedule.of(name, schedule, every, schedule_params))

    def _check_name(self, name: str) -> None:
        if not name.replace("-", "_").isidentifier():
            raise ValueError(f"name must be letters, digits, '_' or '-', got {name!r}")
        if name in self._tasks:
            raise ValueError(f"name {name!r} is already registered")

    def _add(self, task: Task, schedule: Schedule | None = None) -> Task:
        if task.max_concurrency is not None and task.max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, got {task.max_concurrency!r}")
        if task.timeout is not None and not task.timeout > 0:
            raise ValueError(f"timeout must be positive seconds, got {task.timeout!r}")
        if task.duplicates not in DUPLICATES:
            raise ValueError(f"duplicates must be one of {DUPLICATES}, got {task.duplicates!r}")
        retries = task.retries
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be a whole number from 0, got {retries!r}")
        if retries > MAX_RETRIES:
            raise ValueError(f"retries must be from 0 to {MAX_RETRIES}, got {task.retries!r}")
        if not 0 <= task.retry_delay <= MAX_RETRY_WAIT:
            raise ValueError(f"retry_delay must be from 0 to {MAX_RETRY_WAIT:g} seconds")
        if not 1 <= task.backoff <= 100:
            raise ValueError(f"backoff must be a factor from 1 to 100, got {task.backoff!r}")
        kinds = task.retry_on if isinstance(task.retry_on, tuple) else ()
        if not kinds or not all(
            isinstance(kind, type) and issubclass(kind, BaseException) for kind in kinds
        ):
            raise ValueError(
                f"retry_on must be a tuple of exception classes, got {task.retry_on!r}"
            )
        self._tasks[task.name] = task
        if schedule is not None:
            try:
                self.add_schedule(schedule)
            except ValueError:
                del self._tasks[task.name]
                raise
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
