"""``python -m meadow_devcloud.ec2.moto_serialized``: moto's server with DynamoDB
requests applied one at a time.

moto checks a DynamoDB condition expression and applies the write as two steps with
no lock, so two concurrent conditional writes can both succeed; real DynamoDB applies
each conditional write atomically. Meadow's registry relies on that (callers must never
double-book an instance), so the dev cloud serializes DynamoDB requests. Other
services (SQS long polls in particular) stay concurrent.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

from moto.moto_server import werkzeug_app
from moto.server import main

_lock = threading.Lock()
_dispatch = werkzeug_app.DomainDispatcherApplication.__call__


def _serialized(self: Any, environ: dict[str, Any], start_response: Any) -> Any:
    if str(environ.get("HTTP_X_AMZ_TARGET", "")).startswith("DynamoDB_"):
        with _lock:
            return _dispatch(self, environ, start_response)
    return _dispatch(self, environ, start_response)


werkzeug_app.DomainDispatcherApplication.__call__ = _serialized  # type: ignore[method-assign]

if __name__ == "__main__":
    main(sys.argv[1:])
