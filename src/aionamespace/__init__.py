"""aionamespace: multiprocessing's Namespace for the asyncio and trio era.

A notice board shared between processes: an anyio server holds attributes and serves msgpack
frames over a Unix socket or TCP; ``Namespace`` (blocking) and ``AsyncNamespace`` (awaitable)
proxies read and write them; ``Manager`` starts a private server with no configuration.
"""

from __future__ import annotations

from ._errors import AuthenticationError as AuthenticationError
from ._errors import ConnectionLost as ConnectionLost
from ._errors import DataFileError as DataFileError
from ._errors import HistoryExpired as HistoryExpired
from ._errors import LimitExceeded as LimitExceeded
from ._errors import LocalProtocolError as LocalProtocolError
from ._errors import LockLost as LockLost
from ._errors import NamespaceError as NamespaceError
from ._errors import NamespaceGone as NamespaceGone
from ._errors import ProtocolError as ProtocolError
from ._errors import RemoteError as RemoteError
from ._errors import RemoteProtocolError as RemoteProtocolError
from ._errors import ServerTimeout as ServerTimeout
from ._errors import StoreUnavailable as StoreUnavailable
from ._errors import WriteQueueFull as WriteQueueFull
from ._manager import Manager as Manager
from .client.asynchronous import AsyncNamespace as AsyncNamespace
from .client.proxy import Retry as Retry
from .client.sync import Namespace as Namespace
from .protocol.limits import Limits as Limits
from .server.server import Server as Server
from .server.server import ServerThread as ServerThread
from .server.stores import MemoryStore as MemoryStore
from .server.stores import RedisStore as RedisStore
from .server.stores import SQLiteStore as SQLiteStore
from .server.stores import Store as Store

__version__ = "0.1.0"

__all__ = [
    "AsyncNamespace",
    "AuthenticationError",
    "ConnectionLost",
    "DataFileError",
    "HistoryExpired",
    "LimitExceeded",
    "Limits",
    "LocalProtocolError",
    "LockLost",
    "Manager",
    "MemoryStore",
    "Namespace",
    "NamespaceError",
    "NamespaceGone",
    "ProtocolError",
    "RedisStore",
    "RemoteError",
    "RemoteProtocolError",
    "Retry",
    "SQLiteStore",
    "Server",
    "ServerThread",
    "ServerTimeout",
    "Store",
    "StoreUnavailable",
    "WriteQueueFull",
    "__version__",
]
