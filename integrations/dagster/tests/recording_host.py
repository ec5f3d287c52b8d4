"""A LocalHost that takes credentials and records what it is handed, for the tests of
where ``meadow_executor`` takes credentials from (LocalHost itself takes none)."""

import contextlib
import dataclasses

from meadow_core import LocalHost

#: Every credentials value handed to a RecordingLocalHost, in order.
SEEN: list[object] = []


@dataclasses.dataclass(eq=False)
class RecordingLocalHost(LocalHost):
    takes_credentials = True

    def credentials(self, credentials: object | None) -> contextlib.AbstractContextManager[None]:
        SEEN.append(credentials)
        return contextlib.nullcontext()
