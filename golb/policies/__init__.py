"""
Policies: what golb does to a request before it is forwarded and to the
response on its way back.

Each policy kind (C{rate_limit}, C{acl}, ...) is one class in its own module
of this package, registered in L{POLICIES}, built from its frozen config
class (L{golb.config}) and an L{Environment}, and providing L{IPolicy}.

A route's L{Chain} is the global C{policies} followed by the route's own, in
file order.  The request phase runs them in that order; the first one that
answers (401, 403, 429, a redirect, a CORS preflight...) stops the chain.
The response phase then runs, in reverse order, for the policies whose
request phase passed the request on, whether the answer comes from a backend
or from golb itself, like layers of an onion: a CORS policy listed first
adds its headers to a 429 from a rate limit listed after it.
"""

from typing import Callable, Dict, Hashable, List, Optional, Sequence, Tuple

import attr
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.reflect import namedAny
from zope.interface import Attribute, Interface, implementer

from golb.errors import GolbError, renderError

__all__ = [
    "POLICIES",
    "Answer",
    "Chain",
    "Context",
    "Environment",
    "IBodyFilter",
    "IPolicy",
    "Policy",
    "addVary",
    "buildPolicy",
]

log = Logger()


class IPolicy(Interface):
    """
    One policy instance, built from one config entry.
    """

    config = Attribute("The frozen policy configuration it was built from.")

    def onRequest(request, context):
        """
        The request phase.  May edit the request (its headers, or
        C{context.target}, the path and query that will be forwarded).

        @param request: the client's L{golb.listener.GolbRequest}.
        @param context: the request's L{Context}.
        @return: L{None} to pass the request on; an L{Answer} or a
            L{GolbError} to answer it now; or a L{Deferred} firing with one
            of those.
        """

    def onResponse(request, context, response):
        """
        The response phase, before the response head is written: may edit
        C{request.responseHeaders} (already holding the backend's headers,
        or golb's own answer's).

        @param response: the L{golb.upstream.UpstreamResponse} being
            forwarded, or L{None} when golb answers itself.
        @return: L{None}, or an L{IBodyFilter} that the response body is
            passed through.
        """


class IBodyFilter(Interface):
    """
    A transformation of a response body, applied as it streams.
    """

    def write(data):
        """
        @param data: the next piece of the body (bytes).
        @return: the bytes to send now (possibly C{b""}).
        """

    def finish():
        """
        The body is complete.

        @return: the last bytes to send.
        """


@attr.s(frozen=True, slots=True)
class Answer:
    """
    A response a policy gives instead of forwarding the request (a redirect,
    a CORS preflight).

    @ivar status: the status code.
    @ivar headers: C{[(name, value)]} as bytes.
    @ivar body: the body.
    """

    status: int = attr.ib()
    headers: Sequence[Tuple[bytes, bytes]] = attr.ib(default=())
    body: bytes = attr.ib(default=b"")

    def render(self, request) -> None:
        """
        Write this answer to C{request} and finish it.
        """
        request.setResponseCode(self.status)
        responseHeaders = request.responseHeaders
        for name, value in self.headers:
            responseHeaders.addRawHeader(name, value)
        if self.body or not (self.status < 200 or self.status in (204, 304)):
            # RFC 9110 8.6: no Content-Length on 1xx and 204 answers
            responseHeaders.setRawHeaders(b"content-length", [b"%d" % (len(self.body),)])
        if self.body and request.method != b"HEAD":
            request.write(self.body)
        request.finish()


class Environment:
    """
    What policies may use besides their configuration.

    @ivar reactor: the reactor (timers, the clock, connections).
    @ivar scope: C{"global"} or the route's name, for state and messages.
    """

    def __init__(self, reactor, states: "States", scope: str):
        self.reactor = reactor
        self.scope = scope
        self._states = states

    def keep(self, key: Hashable, factory: Callable[[], object]) -> object:
        """
        State that survives reloads: the object built by C{factory} the first
        time C{(scope, key)} is asked for, the same object after a reload that
        asks for it again.  State no reload asks for any more is closed (its
        C{close()} called, when it has one).

        @param key: anything hashable that identifies the state, usually the
            policy config itself (so that a changed config starts afresh).
        """
        return self._states.keep((self.scope, key), factory)


class States:
    """
    The policy state kept across reloads (see L{Environment.keep}).
    """

    def __init__(self):
        self._states: Dict[Hashable, object] = {}
        self._used: Optional[set] = None

    def begin(self) -> None:
        """
        A runtime is about to be built: track which states it asks for.
        """
        self._used = set()

    def keep(self, key: Hashable, factory: Callable[[], object]) -> object:
        if self._used is not None:
            self._used.add(key)
        state = self._states.get(key)
        if state is None:
            state = self._states[key] = factory()
        return state

    def commit(self) -> None:
        """
        The new runtime is in place: close the states it did not ask for.
        """
        used, self._used = self._used, None
        if used is None:
            return
        for key in list(self._states):
            if key not in used:
                _close(self._states.pop(key))

    def abandon(self) -> None:
        """
        Building the runtime failed: forget what it asked for.
        """
        self._used = None

    def close(self) -> Deferred:
        """
        Close every state (golb is stopping).

        @return: a L{Deferred} firing when they are closed.
        """
        from twisted.internet.defer import DeferredList

        states, self._states = self._states, {}
        return DeferredList([_close(state) for state in states.values()], consumeErrors=True)


def _close(state) -> Deferred:
    from twisted.internet.defer import maybeDeferred, succeed

    close = getattr(state, "close", None)
    if close is None:
        return succeed(None)
    d = maybeDeferred(close)
    d.addErrback(lambda f: log.failure("closing policy state {state!r}", f, state=state))
    return d


@attr.s(slots=True)
class Context:
    """
    One request's passage through its route's L{Chain}.

    @ivar route: the route's name.
    @ivar target: the request target to forward (path and query, bytes);
        rewrite policies change it.
    @ivar passed: how many policies passed the request on (whose response
        phase runs).
    @ivar filters: body filters returned by the response phase.
    """

    route: str = attr.ib()
    target: bytes = attr.ib()
    passed: int = attr.ib(default=0)
    filters: List[object] = attr.ib(factory=list)


@implementer(IPolicy)
class Policy:
    """
    A convenient base: passes requests on, leaves responses alone.
    """

    def __init__(self, config, env: Environment):
        self.config = config
        self.env = env

    def onRequest(self, request, context):
        return None

    def onResponse(self, request, context, response):
        return None


class Chain:
    """
    The policies of one route, in order.
    """

    def __init__(self, policies: Sequence[IPolicy]):
        self.policies = tuple(policies)
        self.responsePhase = tuple(
            policy for policy in self.policies
            if type(policy).onResponse is not Policy.onResponse
        )

    def __len__(self) -> int:
        return len(self.policies)

    def runRequest(self, request, context: Context):
        """
        Run the request phase.

        @return: L{None} (forward the request), an L{Answer} or L{GolbError}
            (answer it), or a L{Deferred} firing with one of those when a
            policy needs to wait (a shared rate-limit store).
        """
        policies = self.policies
        index = context.passed
        while index < len(policies):
            result = policies[index].onRequest(request, context)
            if result is None:
                index += 1
                context.passed = index
                continue
            if isinstance(result, Deferred):
                return result.addCallback(self._resumed, request, context)
            return result
        return None

    def _resumed(self, result, request, context: Context):
        if result is not None:
            return result
        context.passed += 1
        return self.runRequest(request, context)

    def runResponse(self, request, context: Context, response) -> List[object]:
        """
        Run the response phase of the policies that passed the request on,
        last first.

        @param response: the backend's response, or L{None} for golb's own
            answer.
        @return: the body filters to apply, in order.
        """
        passed = self.policies[:context.passed]
        filters = context.filters
        for policy in reversed(passed):
            try:
                bodyFilter = policy.onResponse(request, context, response)
            except Exception:
                log.failure("response phase of {policy!r} failed", policy=policy)
                continue
            if bodyFilter is not None and response is not None:
                filters.append(bodyFilter)
        return filters

    def answer(self, request, context: Context, result) -> None:
        """
        Answer C{request} with a policy's L{Answer} or L{GolbError}, after the
        response phase of the policies before it.
        """
        if getattr(request, "_disconnected", False) or request.finished:
            return
        if isinstance(result, GolbError):
            self.runResponse(request, context, None)
            renderError(request, result)
        else:
            self.runResponse(request, context, None)
            result.render(request)


def addVary(headers, token: bytes) -> None:
    """
    Add C{token} to the response's C{Vary} unless it is already there (or
    C{Vary: *} is), keeping the values already present.
    """
    values = headers.getRawHeaders(b"vary")
    if not values:
        headers.setRawHeaders(b"vary", [token])
        return
    lower = token.lower()
    for value in values:
        for item in value.split(b","):
            item = item.strip().lower()
            if item == lower or item == b"*":
                return
    values = list(values)
    values[-1] = values[-1] + b", " + token if values[-1].strip() else token
    headers.setRawHeaders(b"vary", values)


# kind -> fully qualified name of its class (imported on first use)
POLICIES: Dict[str, str] = {
    "rate_limit": "golb.policies.ratelimit.RateLimit",
    "acl": "golb.policies.acl.Acl",
    "basic_auth": "golb.policies.auth.BasicAuth",
    "headers": "golb.policies.headers.Headers",
    "rewrite": "golb.policies.rewrite.Rewrite",
    "redirect": "golb.policies.rewrite.Redirect",
    "cors": "golb.policies.cors.Cors",
    "compress": "golb.policies.compress.Compress",
    "max_body": "golb.policies.bodylimit.MaxBody",
}


def buildPolicy(config, env: Environment) -> IPolicy:
    """
    The L{IPolicy} for one policy config entry.
    """
    cls = namedAny(POLICIES[config.kind])
    return cls(config, env)
