"""The dashboard and ``/metrics`` of ``ledger serve`` (the optional extra ``jobledger[web]``).

Imported only by ``ledger serve`` and by code that asks for it: the ledger itself runs on msgspec
and APSW alone. `create_app` builds the Starlette application over a `Ledger`; `serve` runs it.
"""

from __future__ import annotations

from .app import create_app, serve

__all__ = ["create_app", "serve"]
