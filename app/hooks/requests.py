"""requests internals the proxy relies on: prepared-request templates and adapters' pools.

- `PreparedTemplates`: `Session.prepare_request` parses, re-encodes and validates the URL and
  merges the session's settings on every call (about 90 us); that part depends only on the
  method, URL and query, so it is done once and each call copies the result and fills in its
  own headers and body (`PreparedRequest.copy`, `prepare_headers`, `prepare_body`,
  `prepare_cookies`, `prepare_auth`, `utils.get_auth_from_url`).
- `pool_managers`: the urllib3 pool managers behind a session's adapters
  (`Session.adapters`, `HTTPAdapter.poolmanager`).
- `DirectAdapter`: `HTTPAdapter.send` works out, on every call, the proxy for the URL (two URL
  parses), the pool's key attributes (another) and the pool key (a dozen dict operations): about
  28 us that, with no proxies and `verify` a bool, depend only on the URL. The adapter keeps
  each URL's pool key and finds the pool under it (`PoolManager.pools`, keyed by pool key); a
  pool evicted or closed meanwhile is looked up as requests does. The request target is the
  URL's path, as `request_url` makes it with no proxies.

tests/test_hooks_requests.py pins each of these against a real local HTTP server.
"""

from __future__ import annotations

from collections.abc import Mapping

import requests
from requests.adapters import HTTPAdapter
from urllib3 import PoolManager

# URLs whose pool key an adapter keeps (model ids may come from clients, in URL paths).
MAX_POOL_KEYS = 1024


class PreparedTemplates:
    """Prepared requests kept per method, URL and query, at most `max_size` of them."""

    def __init__(self, max_size: int) -> None:
        self.max_size = max(1, max_size)
        self._templates: dict[tuple, tuple[requests.PreparedRequest, bool]] = {}

    def __len__(self) -> int:
        return len(self._templates)

    def prepare(
        self,
        session: requests.Session,
        method: str,
        url: str,
        params: Mapping[str, str] | None,
        headers: Mapping[str, str],
        body: bytes | None,
    ) -> requests.PreparedRequest:
        """The request to send: a copy of the template for its method, URL and query, with
        this call's headers and body.

        Upstream cookies are never replayed: a cookie one client's request brought back must
        not go out with another client's.
        """
        key = (method, url, tuple(sorted(params.items())) if params else ())
        cached = self._templates.get(key)
        if cached is None:
            template = session.prepare_request(requests.Request(method, url, params=params))
            template.prepare_cookies({})
            cached = (template, any(requests.utils.get_auth_from_url(template.url)))
            if len(self._templates) >= self.max_size:
                # Model ids may come from clients (wildcard names in URL paths): stay bounded.
                self._templates.clear()
            self._templates[key] = cached
        template, url_auth = cached
        request = template.copy()
        request.prepare_headers(headers)
        request.prepare_body(body, None)
        if url_auth:
            # `https://user:pass@host` means Basic auth, as Session.request makes it.
            request.prepare_auth(None)
        return request


def pool_managers(session: requests.Session) -> list[PoolManager]:
    """The pool managers of a session's adapters, each once (one adapter may serve several
    URL prefixes)."""
    adapters = {id(adapter): adapter for adapter in session.adapters.values()}
    return [
        adapter.poolmanager for adapter in adapters.values() if isinstance(adapter, HTTPAdapter)
    ]


class DirectAdapter(HTTPAdapter):
    """An HTTPAdapter that finds a URL's pool by the pool key it kept for the URL (see the
    module docstring); with proxies, a client certificate or a CA path it is HTTPAdapter."""

    def init_poolmanager(self, *args, **kwargs) -> None:
        super().init_poolmanager(*args, **kwargs)
        # (url, verify) -> the pool key of the pool requests found for them
        self._pool_keys: dict[tuple[str, bool], object] = {}

    def get_connection_with_tls_context(self, request, verify, proxies=None, cert=None):
        if proxies or cert is not None or type(verify) is not bool:
            return super().get_connection_with_tls_context(request, verify, proxies, cert)
        key = (request.url, verify)
        pool_key = self._pool_keys.get(key)
        if pool_key is not None:
            pool = self.poolmanager.pools.get(pool_key)
            if pool is not None and pool.pool is not None:  # (a closed pool's queue is None)
                return pool
        pool = super().get_connection_with_tls_context(request, verify, proxies, cert)
        pool_key = self._key_of(pool)
        if pool_key is not None:
            if len(self._pool_keys) >= MAX_POOL_KEYS:
                self._pool_keys.clear()
            self._pool_keys[key] = pool_key
        return pool

    def _key_of(self, pool) -> object | None:
        """The key the pool manager holds `pool` under (None if it is not held)."""
        pools = self.poolmanager.pools
        for pool_key in pools.keys():
            if pools.get(pool_key) is pool:
                return pool_key
        return None

    def request_url(self, request, proxies) -> str:
        if proxies:
            return super().request_url(request, proxies)
        return request.path_url
