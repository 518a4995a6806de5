"""The task objects, by the name in meta.json (`task`). A new task is one module here and one
entry below."""

from __future__ import annotations

from pipeline.errors import DataError
from pipeline.tasks.base import Task
from pipeline.tasks.classification import Classification
from pipeline.tasks.forecast import Forecast
from pipeline.tasks.frames import Frames

TASKS: dict[str, Task] = {t.name: t for t in (Classification(), Forecast(), Frames())}


def task_of(meta) -> Task:
    """The task object of a DataMeta (or anything with a `task` name)."""
    if meta.task not in TASKS:
        raise DataError(f"unknown task {meta.task!r}; known: {', '.join(TASKS)}")
    return TASKS[meta.task]


def higher_is_better(metric: str) -> bool:
    return any(t.directions.get(metric, False) for t in TASKS.values())


def known_metric(metric: str) -> bool:
    """A metric some task reports."""
    return any(metric in t.directions for t in TASKS.values())
