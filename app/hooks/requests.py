"""requests internals the proxy relies on: prepared-request templates and adapters' pools.

- `PreparedTemplates`: `Session.prepare_request` parses, re-encodes and validates the URL and
  merges the session's settings on every call (about 90 us); that part depends only on the
  method, URL and query, so it is done once and each call copies the result and fills in its
  own headers and body (`PreparedRequest.copy`, `prepare_headers`, `prepare_body`,
  `prepare_cookies`, `prepare_auth`, `utils.get_auth_from_url`).
- `pool_managers`: the urllib3 pool managers behind a session's adapters
  (`Session.adapters`, `HTTPAdapter.poolmanager`).

tests/test_hooks_requests.py pins each of these against a real local HTTP server.
"""

from __future__ import annotations

from collections.abc import Mapping

import requests
from requests.adapters import HTTPAdapter
from urllib3 import PoolManager


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
