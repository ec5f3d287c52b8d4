"""``@task.meadow``: TaskFlow functions that run on a Meadow host.

Registered through the provider entry point (``provider_info.get_provider_info``), so
``from airflow.sdk import task`` users write ``@task.meadow(resources=..., host=...)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from airflow.sdk.bases.decorator import DecoratedOperator, TaskDecorator, task_decorator_factory

from meadow_airflow.operators import MeadowOperator, meadow_kwargs


class _MeadowDecoratedOperator(DecoratedOperator, MeadowOperator):  # type: ignore[misc]
    """A ``MeadowOperator`` built from a decorated function (TaskFlow)."""

    template_fields: Sequence[str] = ("op_args", "op_kwargs", "environment_variables")
    custom_operator_name: str = "@task.meadow"

    def __init__(
        self,
        *,
        python_callable: Callable[..., Any],
        op_args: Any,
        op_kwargs: Any,
        **kwargs: Any,
    ) -> None:
        kwargs_to_upstream = {
            "python_callable": python_callable,
            "op_args": op_args,
            "op_kwargs": op_kwargs,
        }
        super().__init__(
            kwargs_to_upstream=kwargs_to_upstream,
            python_callable=python_callable,
            op_args=op_args,
            op_kwargs=op_kwargs,
            **kwargs,
        )


def meadow_task(
    python_callable: Callable[..., Any] | None = None,
    multiple_outputs: bool | None = None,
    **kwargs: Any,
) -> TaskDecorator:
    """``@task.meadow(host=..., resources=..., deployment=..., deferrable=...)``."""
    return task_decorator_factory(
        python_callable=python_callable,
        multiple_outputs=multiple_outputs,
        decorated_operator_class=_MeadowDecoratedOperator,
        **meadow_kwargs(kwargs),
    )
