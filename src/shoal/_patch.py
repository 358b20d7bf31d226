"""``patch_multiprocessing()``: make unchanged Manager code run on shoal."""

from __future__ import annotations

import multiprocessing
import multiprocessing.context
import multiprocessing.managers as managers
from typing import Any

from . import _managers, _proxies
from ._errors import RemoteError

__all__ = ["patch_multiprocessing"]


def patch_multiprocessing(nested: str = "copy") -> None:
    """Replace multiprocessing's managers with shoal's, for code that cannot be changed.

    After it, ``multiprocessing.Manager()``, ``ctx.Manager()``, ``managers.BaseManager``,
    ``managers.SyncManager`` (and subclasses defined afterwards), ``BaseProxy``, ``AutoProxy``,
    ``RemoteError`` and the proxy classes are shoal's. ``nested="copy"`` (the default) keeps
    Manager's copy-on-read semantics, which existing code and CPython's own tests assert; pass
    ``"share"`` to share nested containers. Call it before the code that subclasses the managers
    is imported.
    """
    if nested not in ("share", "copy"):
        raise ValueError(f"nested must be 'share' or 'copy', not {nested!r}")
    base = type("BaseManager", (_managers.BaseManager,),
                {"_nested_default": nested, "__module__": "multiprocessing.managers"})
    sync = type("SyncManager", (_managers.SyncManager, base),
                {"_nested_default": nested, "__module__": "multiprocessing.managers"})

    def Manager(self: Any = None) -> Any:
        ctx = self if isinstance(self, multiprocessing.context.BaseContext) else None
        m = sync(ctx=ctx or multiprocessing.get_context())
        m.start()
        return m

    for name, value in {
        "BaseManager": base, "SyncManager": sync, "BaseProxy": _proxies.BaseProxy,
        "AutoProxy": _proxies.AutoProxy, "MakeProxyType": _proxies.make_proxy_type,
        "DictProxy": _proxies.DictProxy, "ListProxy": _proxies.ListProxy,
        "ArrayProxy": _proxies.ArrayProxy, "NamespaceProxy": _proxies.NamespaceProxy,
        "ValueProxy": _proxies.ValueProxy, "Token": _proxies.Token, "RemoteError": RemoteError,
    }.items():
        setattr(managers, name, value)
    multiprocessing.context.BaseContext.Manager = Manager  # type: ignore[method-assign]
    multiprocessing.Manager = Manager.__get__(multiprocessing.context._default_context)
