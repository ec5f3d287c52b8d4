"""``MACHINE_CACHE_FOLDER``: a folder on each machine that tasks may write to and find
again in later jobs on that machine (Meadowrun's constant of this name).

Decision: it is ``machine_cache`` in the user's Meadow cache folder
(``$MEADOW_CACHE_DIR``, else ``~/.cache/meadow``), or ``$MEADOW_MACHINE_CACHE`` when
set. Meadowrun used ``/var/meadowrun/machine_cache``, which its machine images
created; Meadow runs on shared machines as an ordinary user (ARCHITECTURE.md, "Local
trust boundary"), where a fixed folder in ``/var`` either does not exist or could be
created first, and filled, by another user. A folder of the user's own cache is
private (0700) and survives between jobs and agent restarts; it is the same for every
LocalHost home of that user on the machine.

The value is computed where ``meadow_core.MACHINE_CACHE_FOLDER`` is first read: read
it inside the task (``os.path.join(meadow_core.MACHINE_CACHE_FOLDER, "x")`` in the
function), and it names the machine's folder on any host. A value read on the caller
and carried into the task names the caller's folder, which is the same one on
LocalHost only.
"""

from __future__ import annotations

import contextlib
import os

import platformdirs

#: Set to choose the folder (on the machines that run tasks: the agent passes its own
#: environment to them).
MACHINE_CACHE_VARIABLE = "MEADOW_MACHINE_CACHE"


def machine_cache_folder() -> str:
    """This machine's cache folder for tasks, created (0700) if it is missing."""
    folder = os.environ.get(MACHINE_CACHE_VARIABLE) or os.path.join(
        os.environ.get("MEADOW_CACHE_DIR") or platformdirs.user_cache_dir("meadow"),
        "machine_cache",
    )
    folder = os.path.abspath(os.path.expanduser(folder))
    # A read-only home: the task that writes there gets the error, not every import.
    with contextlib.suppress(OSError):
        os.makedirs(folder, mode=0o700, exist_ok=True)
    return folder


MACHINE_CACHE_FOLDER = machine_cache_folder()
