"""Pickling functions and values for a remote run, keeping where their code came from.

cloudpickle 3.1.3 writes every code object it pickles by value with the file name
``<dynamic-code>`` (so payloads do not depend on where a function was defined). A
remote traceback then says ``File "<dynamic-code>"`` with no source line, which is
exactly what a user reading a failed Airflow, Prefect or Dagster step needs. Meadow
puts the real file name back: the file name is as deterministic as the rest of the
payload, and where the file exists on the machine running the task (LocalHost, a
mirrored snapshot) the traceback shows the line's source too.
"""

from __future__ import annotations

import io
import pickle
import types
from collections import ChainMap
from typing import Any

import cloudpickle

#: The name cloudpickle (3.1.3 and later) gives code it pickles by value.
_DYNAMIC_FILE_NAME = "<dynamic-code>"
_cloudpickle_code_reduce = cloudpickle.Pickler.dispatch_table[types.CodeType]


def _code_reduce(code: types.CodeType) -> Any:
    """cloudpickle's reduction of ``code`` with the code's own file name in it."""
    reduced = _cloudpickle_code_reduce(code)
    constructor, args = reduced[0], reduced[1]
    if code.co_filename != _DYNAMIC_FILE_NAME and _DYNAMIC_FILE_NAME in args:
        # The first string argument of CodeType equal to it is co_filename (the ones
        # before it are counts, flags, bytecode and tuples).
        position = args.index(_DYNAMIC_FILE_NAME)
        args = (*args[:position], code.co_filename, *args[position + 1 :])
    return (constructor, args, *reduced[2:])


class _Pickler(cloudpickle.Pickler):  # type: ignore[misc]
    dispatch_table = ChainMap({types.CodeType: _code_reduce}, cloudpickle.Pickler.dispatch_table)


def dumps(value: object) -> bytes:
    """``cloudpickle.dumps`` at the highest protocol, keeping code's file names."""
    with io.BytesIO() as file:
        _Pickler(file, protocol=pickle.HIGHEST_PROTOCOL).dump(value)
        return file.getvalue()
