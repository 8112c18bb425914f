"""
The admin site's resource tree: one L{AdminResource} that authenticates,
dispatches by path and method, and answers the HTML pages, the JSON API
under C{/api/v1/}, C{/healthz}, C{/readyz} and C{/metrics}.

  - C{/healthz} and C{/readyz} answer without authentication (orchestrator
    probes cannot authenticate) and tell nothing but up and ready.
  - Everything else needs credentials when C{admin.auth} is configured:
    401 with a C{WWW-Authenticate} challenge otherwise.
  - An open site (no auth, loopback only) answers only requests whose
    C{Host} names this machine, so web pages cannot reach it by DNS
    rebinding.
  - Changes are POST (pages, C{/api/v1/reload}) or PATCH (API) and pass the
    CSRF check of L{golb.admin._auth.CSRF}; pages use forms and answer
    C{303 See Other} back to the page.
"""

import json
import os
from typing import Any, Callable, Dict, List, Optional, Tuple
from urllib.parse import quote, unquote

import yaml
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import RESPONSES
from twisted.web.resource import IResource
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from golb.admin import pages
from golb.admin._auth import CSRF, Authenticator, Identity, hostIsLoopback
from golb.admin._openapi import openapi
from golb.admin._records import AuditLog, ErrorLog, RateMeter
from golb.admin.control import AdminError, changeBackend, lookup, reload
from golb.admin.explain import ExplainError, explain
from golb.admin.views import (
    backendView,
    configView,
    overviewView,
    poolSummary,
    poolView,
    routesView,
)

__all__ = ["AdminResource", "MAX_BODY"]

# The largest request body the admin site reads (a PATCH is a few bytes).
MAX_BODY = 64 * 1024

_HTML = b"text/html; charset=utf-8"
_JSON = b"application/json"


class _Route:
    """
    One path pattern (C{{name}} segments are parameters) and its handlers
    by method.
    """

    def __init__(self, pattern: str, handlers: Dict[bytes, str], api: bool):
        self.segments = tuple(pattern.strip("/").split("/")) if pattern != "/" else ()
        self.handlers = handlers
        self.api = api

    def match(self, segments: Tuple[str, ...]) -> Optional[Dict[str, str]]:
        if len(segments) != len(self.segments):
            return None
        params = {}
        for want, got in zip(self.segments, segments):
            if want.startswith("{"):
                params[want[1:-1]] = got
            elif want != got:
                return None
        return params


_ROUTES = [
    _Route("/", {b"GET": "overviewPage"}, False),
    _Route("/pools/{pool}", {b"GET": "poolPage"}, False),
    _Route("/pools/{pool}/backends/{backend}", {b"POST": "backendForm"}, False),
    _Route("/routes", {b"GET": "routesPage"}, False),
    _Route("/config", {b"GET": "configPage"}, False),
    _Route("/errors", {b"GET": "errorsPage"}, False),
    _Route("/reload", {b"POST": "reloadForm"}, False),
    _Route("/metrics", {b"GET": "metrics"}, False),
    _Route("/api/v1", {b"GET": "apiIndex"}, True),
    _Route("/api/v1/overview", {b"GET": "apiOverview"}, True),
    _Route("/api/v1/pools", {b"GET": "apiPools"}, True),
    _Route("/api/v1/pools/{pool}", {b"GET": "apiPool"}, True),
    _Route("/api/v1/pools/{pool}/backends/{backend}",
           {b"GET": "apiBackend", b"PATCH": "apiPatchBackend"}, True),
    _Route("/api/v1/routes", {b"GET": "apiRoutes"}, True),
    _Route("/api/v1/config", {b"GET": "apiConfig"}, True),
    _Route("/api/v1/reload", {b"POST": "apiReload"}, True),
    _Route("/api/v1/explain", {b"GET": "apiExplain"}, True),
    _Route("/api/v1/audit", {b"GET": "apiAudit"}, True),
    _Route("/api/v1/errors", {b"GET": "apiErrors"}, True),
    _Route("/api/v1/workers", {b"GET": "apiWorkers"}, True),
    _Route("/api/v1/openapi.json", {b"GET": "apiOpenAPI"}, True),
]

_CHANGES = frozenset([b"POST", b"PATCH", b"PUT", b"DELETE"])


def _segments(path: bytes) -> Tuple[str, ...]:
    text = path.decode("latin-1")
    parts = text.split("/")[1:]
    if parts and parts[-1] == "" and len(parts) > 1:
        parts = parts[:-1]
    if parts == [""]:
        parts = []
    return tuple(unquote(part, encoding="utf-8", errors="replace") for part in parts)


@implementer(IResource)
class AdminResource:
    """
    The root (and only) resource of the admin site.

    @ivar golb: the L{golb.app.Golb} it shows and steers.
    @ivar auth: the L{Authenticator}.
    @ivar csrf: the L{CSRF} token maker and checker.
    @ivar audit: the L{AuditLog} of changes.
    @ivar errors: the L{ErrorLog} of recent golb-answered errors.
    @ivar rates: the L{RateMeter}.
    @ivar ready: a callable telling whether golb serves its listeners.
    @ivar sites: a callable returning the listeners' sites by name.
    """

    isLeaf = True
    log = Logger()

    def __init__(self, golb, auth: Authenticator, reactor, audit: Optional[AuditLog] = None,
                 errors: Optional[ErrorLog] = None, rates: Optional[RateMeter] = None,
                 ready: Optional[Callable[[], bool]] = None,
                 sites: Optional[Callable[[], Dict[str, object]]] = None,
                 csrf: Optional[CSRF] = None):
        self.golb = golb
        self.auth = auth
        self.reactor = reactor
        self.audit = audit if audit is not None else AuditLog(reactor)
        self.errors = errors if errors is not None else ErrorLog(reactor)
        self.rates = rates if rates is not None else RateMeter(golb, reactor)
        self.ready = ready if ready is not None else (lambda: True)
        self.sites = sites if sites is not None else dict
        self.csrf = csrf if csrf is not None else CSRF()
        self._metrics = None

    def getChildWithDefault(self, name, request):  # pragma: no cover (isLeaf)
        return self

    def putChild(self, path, child):  # pragma: no cover
        raise NotImplementedError("the admin resource has no children")

    # -- the request path --------------------------------------------------

    def render(self, request):
        request.responseHeaders.setRawHeaders(b"cache-control", [b"no-store"])
        request.responseHeaders.setRawHeaders(b"x-content-type-options", [b"nosniff"])
        segments = _segments(request.path)
        if segments in (("healthz",), ("readyz",)):
            return self._probe(request, segments[0])
        api = segments[:2] == ("api", "v1")
        if self.auth.open and not hostIsLoopback(request.getHeader(b"host")):
            self._error(request, api, 403, "forbidden-host",
                        "this admin site has no authentication and answers only requests"
                        " for localhost, 127.0.0.1 or [::1]")
            return NOT_DONE_YET
        identity = self.auth.identify(request, self._client(request))
        if isinstance(identity, Deferred):
            identity.addCallback(self._authenticated, request, segments, api)
            identity.addErrback(self._failed, request, api)
            return NOT_DONE_YET
        self._authenticated(identity, request, segments, api)
        return NOT_DONE_YET

    def _client(self, request) -> str:
        getter = getattr(request, "clientAddress", None)
        if getter is not None:
            return getter()
        return getattr(request.getClientAddress(), "host", "?")

    def _gone(self, request) -> bool:
        return getattr(request, "_disconnected", False) or request.finished

    def _authenticated(self, identity: Optional[Identity], request, segments, api) -> None:
        if self._gone(request):
            return
        if identity is None:
            for challenge in self.auth.challenges:
                request.responseHeaders.addRawHeader(b"www-authenticate", challenge)
            self._error(request, api, 401, "unauthorized",
                        "authentication required: "
                        + " or ".join(_describe(c) for c in self.auth.challenges))
            return
        for route in _ROUTES:
            params = route.match(segments)
            if params is None:
                continue
            method = request.method
            lookupMethod = b"GET" if method == b"HEAD" else method
            name = route.handlers.get(lookupMethod)
            if name is None:
                allowed = sorted(route.handlers)
                if b"GET" in route.handlers:
                    allowed.append(b"HEAD")
                request.responseHeaders.setRawHeaders(b"allow", [b", ".join(allowed)])
                self._error(request, route.api, 405, "method-not-allowed",
                            f"{method.decode('latin-1')} is not allowed here; use "
                            + ", ".join(m.decode("ascii") for m in allowed))
                return
            if method in _CHANGES:
                problem = self.csrf.check(request, identity)
                if problem is not None:
                    self.log.warn("admin: refused {method} {path} from {who}: {problem}",
                                  method=method.decode("latin-1"),
                                  path=request.path.decode("latin-1"), who=str(identity),
                                  problem=problem)
                    self._error(request, route.api, 403, "csrf", problem)
                    return
            try:
                getattr(self, name)(request, identity, **params)
            except AdminError as e:
                self._error(request, route.api, e.status, e.code, e.message)
            except Exception:
                self.log.failure("admin: {method} {path} failed",
                                 method=method.decode("latin-1"),
                                 path=request.path.decode("latin-1"))
                self._error(request, route.api, 500, "internal-error",
                            "the admin site failed to answer; see golb's log")
            return
        self._error(request, api, 404, "not-found",
                    f"nothing at {request.path.decode('latin-1')}"
                    + ("; see /api/v1/openapi.json" if api else ""))

    def _failed(self, reason: Failure, request, api) -> None:
        self.log.failure("admin: authentication failed unexpectedly", reason)
        if not self._gone(request):
            self._error(request, api, 500, "internal-error", "authentication failed; see log")

    # -- answers ----------------------------------------------------------

    def _write(self, request, status: int, contentType: bytes, body: bytes) -> None:
        request.setResponseCode(status, RESPONSES.get(status))
        request.responseHeaders.setRawHeaders(b"content-type", [contentType])
        request.responseHeaders.setRawHeaders(b"content-length", [b"%d" % (len(body),)])
        if request.method != b"HEAD":
            request.write(body)
        request.finish()

    def _json(self, request, data: Any, status: int = 200) -> None:
        body = json.dumps(data, indent=2, sort_keys=False).encode("utf-8") + b"\n"
        self._write(request, status, _JSON, body)

    def _error(self, request, api: bool, status: int, code: str, message: str) -> None:
        accept = request.getHeader(b"accept") or b""
        if api or b"text/html" not in accept:
            self._json(request, {"status": status, "error": code, "message": message}, status)
            return
        self._html(request, pages.errorPage(self._context(request, None), status, message),
                   status)

    def _context(self, request, identity: Optional[Identity]) -> pages.PageContext:
        token, new = self.csrf.tokenFor(request)
        if new:
            self.csrf.setCookie(request, token)
        nonce = os.urandom(12).hex()
        request.golbNonce = nonce
        return pages.PageContext(token.decode("ascii"), nonce,
                                 str(identity) if identity is not None else "")

    def _html(self, request, body: bytes, status: int = 200) -> None:
        nonce = getattr(request, "golbNonce", "")
        request.responseHeaders.setRawHeaders(b"content-security-policy", [(
            f"default-src 'none'; style-src 'nonce-{nonce}'; script-src 'nonce-{nonce}';"
            " connect-src 'self'; img-src 'self' data:; form-action 'self';"
            " frame-ancestors 'none'; base-uri 'none'").encode("ascii")])
        request.responseHeaders.setRawHeaders(b"x-frame-options", [b"DENY"])
        request.responseHeaders.setRawHeaders(b"referrer-policy", [b"same-origin"])
        self._write(request, status, _HTML, body)

    def _seeOther(self, request, location: str) -> None:
        request.responseHeaders.setRawHeaders(b"location", [location.encode("utf-8")])
        self._write(request, 303, b"text/plain; charset=utf-8", b"See " + location.encode()
                    + b"\n")

    def _probe(self, request, which: str):
        if request.method not in (b"GET", b"HEAD"):
            request.responseHeaders.setRawHeaders(b"allow", [b"GET, HEAD"])
            self._write(request, 405, b"text/plain; charset=utf-8", b"use GET\n")
            return NOT_DONE_YET
        if which == "healthz":
            self._write(request, 200, b"text/plain; charset=utf-8", b"ok\n")
        elif self.ready():
            self._write(request, 200, b"text/plain; charset=utf-8", b"ready\n")
        else:
            self._write(request, 503, b"text/plain; charset=utf-8",
                        b"not ready: golb's listeners are not serving\n")
        return NOT_DONE_YET

    # -- views -------------------------------------------------------------

    def overview(self) -> Dict[str, Any]:
        return overviewView(self.golb, self.rates, self.errors, self.audit, self.sites(),
                            ready=bool(self.ready()))

    def _body(self, request) -> Any:
        """
        The request's JSON body.

        @raise AdminError: 400 when it is not JSON (or too large).
        """
        content = request.content
        content.seek(0)
        data = content.read(MAX_BODY + 1)
        if len(data) > MAX_BODY:
            raise AdminError(413, "body-too-large", f"the body exceeds {MAX_BODY} bytes")
        contentType = (request.getHeader(b"content-type") or b"").split(b";")[0].strip()
        if contentType.lower() != _JSON:
            raise AdminError(400, "bad-request", "send the body as Content-Type: application/json")
        try:
            return json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise AdminError(400, "bad-json", f"the body is not valid JSON: {e}") from None

    # -- pages -------------------------------------------------------------

    def overviewPage(self, request, identity):
        self._html(request, pages.overviewPage(self._context(request, identity),
                                               self.overview()))

    def poolPage(self, request, identity, pool):
        found, _ = lookup(self.golb, pool)
        self._html(request, pages.poolPage(self._context(request, identity),
                                           poolView(self.golb, found, self.rates)))

    def routesPage(self, request, identity):
        self._html(request, pages.routesPage(self._context(request, identity),
                                             routesView(self.golb)))

    def configPage(self, request, identity):
        text = yaml.safe_dump(configView(self.golb.config), sort_keys=False,
                              default_flow_style=False, allow_unicode=True)
        self._html(request, pages.configPage(self._context(request, identity), text,
                                             self.golb.config.filename))

    def errorsPage(self, request, identity):
        self._html(request, pages.errorsPage(self._context(request, identity), {
            "errors": self.errors.recent(), "by_code": dict(self.errors.counts)}))

    def backendForm(self, request, identity, pool, backend):
        changes: Dict[str, Any] = {}
        for field in (b"state", b"weight"):
            values = request.args.get(field)
            if values:
                changes[field.decode("ascii")] = values[0].decode("utf-8", "replace")
        changeBackend(self.golb, self.audit, str(identity), pool, backend, changes, via="page")
        self._seeOther(request, "/pools/" + quote(pool, safe=""))

    def reloadForm(self, request, identity):
        reload(self.golb, self.audit, str(identity), via="page")
        self._seeOther(request, "/")

    def metrics(self, request, identity):
        if getattr(self.golb, "metrics", None) is None:
            raise AdminError(404, "no-metrics",
                             "metrics are off (monitoring.prometheus.enabled: false)")
        if self._metrics is None or self._metrics.metrics is not self.golb.metrics:
            from golb.observe.metrics import metricsResource

            self._metrics = metricsResource(self.golb)
        body = self._metrics.render(request)
        request.setResponseCode(200)
        if request.method != b"HEAD":
            request.write(body)
        request.finish()

    # -- API ---------------------------------------------------------------

    def apiIndex(self, request, identity):
        self._json(request, {
            "endpoints": sorted("/" + "/".join(route.segments) for route in _ROUTES
                                if route.api),
            "openapi": "/api/v1/openapi.json",
            "you": str(identity),
        })

    def apiOverview(self, request, identity):
        self._json(request, self.overview())

    def apiPools(self, request, identity):
        self._json(request, {"pools": [poolSummary(self.golb, pool, self.rates)
                                       for pool in self.golb.runtime.pools.values()]})

    def apiPool(self, request, identity, pool):
        found, _ = lookup(self.golb, pool)
        self._json(request, poolView(self.golb, found, self.rates))

    def apiBackend(self, request, identity, pool, backend):
        foundPool, found = lookup(self.golb, pool, backend)
        self._json(request, backendView(self.golb, foundPool, found, self.rates))

    def apiPatchBackend(self, request, identity, pool, backend):
        lookup(self.golb, pool, backend)
        changes = self._body(request)
        foundPool, found = changeBackend(self.golb, self.audit, str(identity), pool, backend,
                                         changes, via="api")
        self._json(request, backendView(self.golb, foundPool, found, self.rates))

    def apiRoutes(self, request, identity):
        self._json(request, routesView(self.golb))

    def apiConfig(self, request, identity):
        view = configView(self.golb.config)
        wanted = (request.args.get(b"format") or [b"json"])[0].lower()
        if wanted == b"yaml":
            text = yaml.safe_dump(view, sort_keys=False, allow_unicode=True)
            self._write(request, 200, b"application/yaml; charset=utf-8", text.encode("utf-8"))
        elif wanted == b"json":
            self._json(request, view)
        else:
            raise AdminError(400, "bad-format", "format must be json or yaml")

    def apiReload(self, request, identity):
        outcome = reload(self.golb, self.audit, str(identity), via="api")
        self._json(request, outcome, 200 if outcome["ok"] else 422)

    def apiExplain(self, request, identity):
        try:
            self._json(request, explain(self.golb, request.args))
        except ExplainError as e:
            raise AdminError(400, "bad-request", str(e)) from None

    def apiAudit(self, request, identity):
        self._json(request, {"audit": self.audit.recent()})

    def apiErrors(self, request, identity):
        self._json(request, {"errors": self.errors.recent(),
                             "by_code": dict(self.errors.counts)})

    def apiWorkers(self, request, identity):
        supervisor = getattr(self.golb, "workers", None)
        self._json(request, {
            "workers": supervisor.describe() if supervisor is not None else [],
            "restarts": supervisor.restarts if supervisor is not None else 0,
        })

    def apiOpenAPI(self, request, identity):
        self._json(request, openapi())


def _describe(challenge: bytes) -> str:
    if challenge.startswith(b"Basic"):
        return "HTTP Basic credentials of admin.auth.users_file"
    return "Authorization: Bearer <a token of admin.auth.token_file>"


def allRoutes() -> List[str]:
    """
    Every path pattern the admin site answers (for documentation tests).
    """
    return ["/" + "/".join(route.segments) for route in _ROUTES] + ["/healthz", "/readyz"]
