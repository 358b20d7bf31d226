"""shoal: shared Python objects for many processes.

``multiprocessing.Manager`` done right: nested containers are shared (``d['k'][i] = v`` lands),
read-modify-write is atomic in one round trip (``d.incr``, ``d.cas``), and it is fast.

Example::

    import shoal
    with shoal.Manager() as m:
        d = m.dict()
        d['test'] = {}
        d['test'][1] = 1
        print(d)          # {'test': {1: 1}}
"""

from ._errors import (AuthenticationError, ConnectionLost, ProtocolError, RemoteError,
                      ServerNotRunning, ShoalError)
from ._managers import BaseManager, Manager, SyncManager, connect
from ._patch import patch_multiprocessing
from ._proxies import (ArrayProxy, BaseProxy, DictProxy, ListProxy, NamespaceProxy, Token,
                       ValueProxy, pipeline, unwrap)

__all__ = [
    "Manager", "connect", "BaseManager", "SyncManager", "patch_multiprocessing", "unwrap",
    "pipeline",
    "BaseProxy", "DictProxy", "ListProxy", "NamespaceProxy", "ValueProxy", "ArrayProxy", "Token",
    "ShoalError", "ConnectionLost", "ServerNotRunning", "AuthenticationError", "RemoteError",
    "ProtocolError",
]
__version__ = "0.1.0"
