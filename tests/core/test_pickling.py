"""Functions pickled by value keep their file name, so remote tracebacks show where."""

from __future__ import annotations

import importlib.util
import pickle
import sys
import traceback
from pathlib import Path

import cloudpickle

from meadow_core import pickling


def test_a_function_pickled_by_value_keeps_its_file_and_source_lines(tmp_path: Path) -> None:
    source = tmp_path / "user_dag.py"
    source.write_text(
        "def inner_step(n):\n"
        "    raise ValueError(f'boom with n={n}')\n"
        "\n"
        "def step():\n"
        "    return inner_step(5)\n"
    )
    spec = importlib.util.spec_from_file_location("user_dag_for_pickling", source)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    cloudpickle.register_pickle_by_value(module)
    try:
        payload = pickling.dumps(module.step)
    finally:
        cloudpickle.unregister_pickle_by_value(module)
        del sys.modules[spec.name]

    restored = pickle.loads(payload)  # as a worker does, without the module
    assert restored.__code__.co_filename == str(source)
    try:
        restored()
    except ValueError as exc:
        text = "".join(traceback.format_exception(exc))
    assert f'File "{source}", line 2, in inner_step' in text
    assert "raise ValueError(f'boom with n={n}')" in text
    # Deterministic: the same function pickles to the same bytes (content-addressed).
    sys.modules[spec.name] = module
    cloudpickle.register_pickle_by_value(module)
    try:
        assert pickling.dumps(module.step) == payload
    finally:
        cloudpickle.unregister_pickle_by_value(module)
        del sys.modules[spec.name]
