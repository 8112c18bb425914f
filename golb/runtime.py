"""
The L{Runtime}: everything compiled from one L{golb.config.Config} that the
request path reads (router, pools, forwarding headers).  It is replaced whole
on reload; requests already in flight keep the one they started with.
"""

import random
from typing import Dict, Optional

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from golb.errors import GolbError
from golb.health import OutlierDetector
from golb.policies import Chain, Context, Environment, States, buildPolicy
from golb.pool import BackendRegistry, Pool
from golb.proxy import Exchange, ProxyHeaders, mirror, originForm
from golb.routing import Route, Router, checksFor

__all__ = ["Runtime", "defaultPoolName"]


def defaultPoolName(config):
    """
    The pool for requests that match no rule: the pool named C{default}, else
    the only pool, else L{None} (404).
    """
    names = [pool.name for pool in config.backend_pools]
    if "default" in names:
        return "default"
    if len(names) == 1:
        return names[0]
    return None


class Runtime:
    """
    The compiled, immutable view of one configuration.

    @ivar config: the L{golb.config.Config} it was built from.
    @ivar pools: L{golb.pool.Pool} by name.
    @ivar router: the L{golb.routing.Router}.
    """

    log = Logger()

    def __init__(self, config, pools: Dict[str, Pool], router: Router, headers: ProxyHeaders,
                 reactor=None):
        self.reactor = reactor
        self.observatory = None
        self.config = config
        self.pools = pools
        self.router = router
        self.headers = headers

    @classmethod
    def build(cls, config, registry: BackendRegistry, reactor=None,
              members=None, states: Optional[States] = None) -> "Runtime":
        """
        Compile C{config}, reusing the live backends in C{registry}.

        @param members: the current L{golb.pool.Members} of discovered pools,
            by pool name.
        @param states: the policy state kept across reloads.
        """
        if states is None:
            states = States()
        states.begin()
        try:
            runtime = cls._build(config, registry, reactor, members or {}, states)
        except BaseException:
            states.abandon()
            raise
        return runtime

    @classmethod
    def _build(cls, config, registry, reactor, members, states) -> "Runtime":
        if reactor is None:
            from twisted.internet import reactor
        globalEnv = Environment(reactor, states, "global")
        globalPolicies = [buildPolicy(policy, globalEnv) for policy in config.policies]

        def chainFor(scope, policies):
            env = Environment(reactor, states, scope)
            built = globalPolicies + [buildPolicy(policy, env) for policy in policies]
            return Chain(built) if built else None
        pools = {}
        for poolConfig in config.backend_pools:
            found = members.get(poolConfig.name) if poolConfig.discovery is not None else None
            pool = registry.buildPool(poolConfig, found)
            if poolConfig.passive_health is not None:
                pool.outliers = OutlierDetector(
                    poolConfig.passive_health, reactor,
                    probed=poolConfig.health_check is not None,
                )
            pools[poolConfig.name] = pool
        routes = []
        for order, rule in enumerate(config.sortedRules()):
            split = ()
            if rule.split:
                cumulative = 0
                entries = []
                for target in rule.split:
                    if target.weight <= 0:
                        continue
                    cumulative += target.weight
                    entries.append((cumulative, pools[target.pool]))
                split = tuple(entries)
            mirror = None
            if rule.mirror is not None:
                mirror = (pools[rule.mirror.pool], rule.mirror.percent)
            match = rule.match
            routes.append(
                Route(
                    name=rule.name,
                    order=order,
                    config=rule,
                    pool=pools[rule.target_pool] if rule.target_pool else None,
                    split=split,
                    mirror=mirror,
                    policies=tuple(rule.policies),
                    host=(match.host.lower().rstrip(".") if match and match.host else None),
                    checks=checksFor(match),
                    chain=chainFor(f"route:{rule.name or order}", rule.policies),
                )
            )
        default = None
        name = defaultPoolName(config)
        if name is not None:
            default = Route(name="default", order=len(routes), pool=pools[name],
                            chain=chainFor("default", ()))
        return cls(
            config, pools, Router(routes, default), ProxyHeaders(config.trusted_proxies), reactor
        )

    def forward(self, request, route: Route, listenerName: str = "default") -> None:
        """
        Forward C{request} along C{route}: through its policies' request
        phase, then to a backend.
        """
        chain = route.chain
        if chain is None:
            self._forward(request, route, listenerName, None)
            return
        context = Context(route.name or "", originForm(request.uri))
        request.originalHost = request.requestHeaders.getRawHeaders(b"host")
        try:
            result = chain.runRequest(request, context)
        except Exception:
            self.log.failure("a policy of route {route} failed", route=route.name)
            result = GolbError("internal-error")
        if result is None:
            self._forward(request, route, listenerName, context)
        elif isinstance(result, Deferred):
            result.addCallbacks(self._policiesDone, self._policiesFailed,
                                (request, route, listenerName, context),
                                errbackArgs=(request, route, context))
            result.addErrback(lambda f: self.log.failure("forwarding after policies", f))
        else:
            chain.answer(request, context, result)

    def _policiesDone(self, result, request, route, listenerName, context) -> None:
        if getattr(request, "_disconnected", False):
            return
        if result is None:
            self._forward(request, route, listenerName, context)
        else:
            route.chain.answer(request, context, result)

    def _policiesFailed(self, reason, request, route, context) -> None:
        self.log.failure("a policy of route {route} failed", reason, route=route.name)
        if not getattr(request, "_disconnected", False):
            route.chain.answer(request, context, GolbError("internal-error"))

    def _forward(self, request, route: Route, listenerName: str, context) -> None:
        pool = route.choosePool()
        if route.mirror is not None:
            shadow, share = route.mirror
            if share >= 1.0 or random.random() < share:
                mirror(request, shadow, self.headers,
                       context.target if context is not None else None)
        Exchange(request, pool, self.headers, listenerName, self.reactor,
                 context=context, chain=route.chain, observatory=self.observatory).start()

