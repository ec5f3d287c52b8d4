"""Which of the user's source files a warm worker has imported, and whether they changed.

A worker that runs the caller's code in place (LocalHost without a code snapshot) keeps
the modules earlier jobs imported. A job must never run code older than what is on disk,
and reloading a module in place is not what a new process would see (other modules keep
references to the old one), so a worker whose imported code changed is retired instead
of reused. The worker reports each file it imported with the file's stat; before the
worker takes another job the agent stats those files again. Only the user's code is
watched: the standard library, site-packages and Meadow itself come with the
environment, which has its own key.

A module imported while a job ran may have been edited after the import but before the
worker's report: the report cannot tell the two versions apart by stat, so a file
changed since the window of imports began (less ``CLOCK_SLACK_NS`` for coarse file
timestamps) is reported as unknown, and the worker is retired before its next job.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any

#: A file's identity and version: (mtime_ns, ctime_ns, size, inode). ctime catches
#: writes that keep the mtime (``cp -p``, ``rsync -t``); the inode, atomic saves.
Fingerprint = tuple[int, int, int, int]

#: How far a file's timestamp may trail the real time of its change: the kernel stamps
#: files with a coarse clock, and some filesystems keep whole seconds.
CLOCK_SLACK_NS = 1_000_000_000


def fingerprint(path: str) -> Fingerprint | None:
    """The file's fingerprint, or None if it is gone."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino)


def any_changed(files: Mapping[str, Sequence[int]]) -> bool:
    """True if a file differs from its recorded fingerprint (or is gone): one stat each."""
    for path, recorded in files.items():
        now = fingerprint(path)
        if now is None or now != tuple(recorded):
            return True
    return False


def _environment_folders() -> tuple[str, ...]:
    """Folders whose modules come with the environment, not from the user's code: the
    standard library and Meadow (site-packages are recognized by name). Not the whole
    interpreter prefix: in an image with Python in /usr/local, the user's code may well
    be under /usr/local too."""
    import meadow_core

    folders = {os.path.dirname(os.__file__), os.path.dirname(meadow_core.__file__)}
    return tuple(os.path.realpath(folder).rstrip(os.sep) + os.sep for folder in folders)


class _ImportSeen:
    """First on ``sys.meta_path``: notes that something is being imported, finds nothing
    (cheaper than comparing ``sys.modules`` with the last report after every task)."""

    def __init__(self, watch: ImportedCode) -> None:
        self.watch = watch

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> None:
        self.watch.imported = True
        return None


class ImportedCode:
    """The worker's side: after each task, the user's source files newly imported.

    ``since_ns`` is when the process was started (the agent's clock, which is the
    machine's): anything imported so far was imported after it.
    """

    def __init__(self, since_ns: int) -> None:
        self.window_start = since_ns
        self.seen: set[str] = set()
        self.count = -1
        self.imported = True
        self.environment = _environment_folders()
        self.in_scope: dict[str, bool] = {}
        self.finders: list[str] = []
        self.finder_count = -1
        sys.meta_path.insert(0, _ImportSeen(self))

    def _user_folder(self, folder: str) -> bool:
        known = self.in_scope.get(folder)
        if known is None:
            real = os.path.realpath(folder) + os.sep
            parts = real.split(os.sep)
            known = not real.startswith(self.environment) and not (
                "site-packages" in parts or "dist-packages" in parts
            )
            self.in_scope[folder] = known
        return known

    def report(self) -> dict[str, list[int] | None] | None:
        """``{path: fingerprint or None}`` for the user's files imported since the last
        report; None means "may have changed after it was imported". None if nothing new
        (the common case costs a length check)."""
        started = time.time_ns()
        threshold = self.window_start - CLOCK_SLACK_NS
        self.window_start = started
        if not self.imported and len(sys.modules) == self.count:
            return None
        self.imported = False
        while True:
            with contextlib.suppress(RuntimeError):  # a thread imported meanwhile
                names = list(sys.modules)
                break
        self.count = len(names)
        found: dict[str, list[int] | None] = {}
        for name in names:
            if name in self.seen:
                continue
            self.seen.add(name)
            path = _module_file(sys.modules.get(name))
            if path is None or not self._user_folder(os.path.dirname(path)):
                continue
            stat = fingerprint(path)
            if stat is None or max(stat[0], stat[1]) >= threshold:
                found[path] = None
            else:
                found[path] = list(stat)
        return found or None

    def forget_listings(self) -> None:
        """Make the import system list the user's folders again before the next import
        (a module created since the last job is found, as a new process would find
        it; Python otherwise trusts a folder's listing while its mtime is unchanged)."""
        cache = sys.path_importer_cache
        if len(cache) != self.finder_count:
            self.finder_count = len(cache)
            self.finders = [
                path
                for path in list(cache)
                if isinstance(path, str) and os.path.isabs(path) and self._user_folder(path)
            ]
        for path in self.finders:
            finder = cache.get(path)
            if finder is None:
                cache.pop(path, None)  # a folder that did not exist may exist now
                self.finder_count = -1
                continue
            invalidate = getattr(finder, "invalidate_caches", None)
            if invalidate is not None:
                with contextlib.suppress(Exception):
                    invalidate()


def _module_file(module: ModuleType | None) -> str | None:
    """A module's file without touching the module itself (a lazily loaded module
    would load on attribute access)."""
    if module is None:
        return None
    try:
        path = object.__getattribute__(module, "__dict__").get("__file__")
    except Exception:
        return None
    if not isinstance(path, str) or not path:
        return None
    return path if os.path.isabs(path) else os.path.abspath(path)
