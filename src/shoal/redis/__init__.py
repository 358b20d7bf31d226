"""shoal on Redis or Valkey: the same proxies, with the data in a Redis server.

``connect("redis://host:6379/0")`` gives a manager with ``dict``, ``list``, ``Namespace``,
``Value``, ``Lock``, ``RLock``, ``Semaphore``, ``BoundedSemaphore``, ``Condition``, ``Event``,
``Barrier``, ``Queue``, ``JoinableQueue`` and ``root``; each call on a proxy is one atomic run
of a Lua script. Needs redis-py (``pip install shoal[redis]``). See docs/redis.md.

Example::

    import shoal.redis
    with shoal.redis.connect("redis://localhost:6379/0?namespace=myapp") as m:
        m.root["config"] = {"workers": 4}
        m.root["config"]["workers"] += 1
"""

from ._backend import LeaseExpired, close_all
from ._manager import RedisManager, connect
from ._proxies import RedisDictProxy, RedisListProxy, RedisNamespaceProxy, RedisValueProxy
from ._sync import (RedisBarrierProxy, RedisConditionProxy, RedisEventProxy, RedisLockProxy,
                    RedisQueueProxy, RedisRLockProxy, RedisSemaphoreProxy)

__all__ = [
    "connect", "RedisManager", "LeaseExpired", "close_all",
    "RedisDictProxy", "RedisListProxy", "RedisNamespaceProxy", "RedisValueProxy",
    "RedisLockProxy", "RedisRLockProxy", "RedisSemaphoreProxy", "RedisConditionProxy",
    "RedisEventProxy", "RedisBarrierProxy", "RedisQueueProxy",
]
