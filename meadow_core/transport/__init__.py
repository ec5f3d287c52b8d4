"""Transports: where a place keeps payloads (object store) and work (job queue).

``base`` defines the interfaces the caller and the agent use; ``local`` implements them
with a directory and SQLite for ``LocalHost``; a cloud's ``ObjectStore`` lives under
``clouds/<cloud>/``. ``open_store(url)`` (``urls``) opens a store by its URL's scheme.
"""

from meadow_core.transport.urls import open_store

__all__ = ["open_store"]
