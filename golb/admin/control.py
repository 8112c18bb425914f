"""
The changes the admin site can make, shared by its pages and its JSON API:
a backend's admin state and weight, and reloading the configuration.

Each change is validated here (problems raise L{AdminError} with the status
and message to answer), applied to the live objects, and written to the
L{golb.admin._records.AuditLog}.

Weights set here are runtime values: the next reload sets every backend's
weight back to its configured one (and the audit trail says so).  Admin
states survive reloads, since the configuration does not hold them.
"""

from typing import Any, Dict, Mapping

from golb.admin.views import findBackend
from golb.pool import ADMIN_STATES

__all__ = ["AdminError", "MAX_WEIGHT", "changeBackend", "reload"]

MAX_WEIGHT = 256


class AdminError(Exception):
    """
    A request the admin site refuses.

    @ivar status: the HTTP status to answer (400, 404, ...).
    @ivar code: a short machine-readable code.
    @ivar message: what is wrong and how to fix it, for people.
    """

    def __init__(self, status: int, code: str, message: str):
        Exception.__init__(self, status, code, message)
        self.status = status
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.message}"


def lookup(golb, poolName: str, backendId: str = None):
    """
    The live pool called C{poolName} and, when C{backendId} is given, its
    backend with that id.

    @raise AdminError: 404 when either does not exist.
    """
    pool = golb.runtime.pools.get(poolName)
    if pool is None:
        raise AdminError(404, "no-such-pool", f"no pool named {poolName!r}")
    if backendId is None:
        return pool, None
    backend = findBackend(pool, backendId)
    if backend is None:
        ids = ", ".join(backend.id for backend in pool.backends) or "none"
        raise AdminError(404, "no-such-backend",
                         f"pool {poolName!r} has no backend {backendId!r} (it has: {ids})")
    return pool, backend


def parseWeight(value: Any, fromForm: bool = False) -> int:
    """
    A weight from JSON (a number) or, with C{fromForm}, a form (text).

    @raise AdminError: 400 unless it is a whole number from 0 to 256.
    """
    if fromForm and isinstance(value, str):
        text = value.strip()
        if text.isdigit() and text.isascii():
            value = int(text)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_WEIGHT:
        raise AdminError(400, "bad-weight",
                         f"weight must be a whole number from 0 to {MAX_WEIGHT}, not {value!r}")
    return value


def validateChanges(changes: Any, fromForm: bool = False) -> Dict[str, Any]:
    """
    Check the body of C{PATCH /api/v1/pools/{pool}/backends/{id}}: an
    object with C{state} and/or C{weight}.

    @return: the validated changes.
    @raise AdminError: 400 for anything else.
    """
    if not isinstance(changes, Mapping):
        raise AdminError(400, "bad-request",
                         'expected a JSON object like {"state": "drain"} or {"weight": 5}')
    unknown = sorted(set(changes) - {"state", "weight"})
    if unknown:
        raise AdminError(400, "unknown-field",
                         f"unknown field(s) {', '.join(map(repr, unknown))}: only"
                         " 'state' and 'weight' can be changed")
    if not changes:
        raise AdminError(400, "bad-request",
                         'nothing to change: send {"state": "drain"} and/or {"weight": 5}')
    valid: Dict[str, Any] = {}
    if "state" in changes:
        state = changes["state"]
        if state not in ADMIN_STATES:
            raise AdminError(400, "bad-state",
                             f"state must be one of {', '.join(ADMIN_STATES)}, not {state!r}")
        valid["state"] = state
    if "weight" in changes:
        valid["weight"] = parseWeight(changes["weight"], fromForm)
    return valid


def changeBackend(golb, audit, who: str, poolName: str, backendId: str,
                  changes: Any, via: str = "api"):
    """
    Apply validated C{changes} to a live backend: C{state} (C{ready} after
    C{drain} or C{maint} starts its C{slow_start} ramp) and C{weight}
    (until the next reload).

    @return: the C{(pool, backend)} changed.
    @raise AdminError: 400 for bad changes, 404 for unknown names.
    """
    pool, backend = lookup(golb, poolName, backendId)
    valid = validateChanges(changes, fromForm=via == "page")
    target = f"{pool.name}/{backend.id}"
    if "state" in valid and valid["state"] != backend.state:
        old, backend.state = backend.state, valid["state"]
        if backend.state == "ready":
            backend.markReady()
        audit.record(who, "set-state", target, f"{old} -> {backend.state}", via=via)
    if "weight" in valid and valid["weight"] != backend.weight:
        old, backend.weight = backend.weight, valid["weight"]
        audit.record(who, "set-weight", target,
                     f"{old} -> {backend.weight} (until the next reload)", via=via)
    return pool, backend


def reload(golb, audit, who: str, via: str = "api") -> Dict[str, Any]:
    """
    Reload the configuration file (as SIGHUP does).

    @return: C{{"ok", "file", "problems"}}; a failed reload changes nothing.
    """
    ok = golb.reloadFile()
    last = golb.lastReload or {}
    problems = list(last.get("problems", [])) if not ok else []
    filename = golb.config.filename
    detail = "reloaded" if ok else f"failed: {len(problems)} problem(s); nothing changed"
    audit.record(who, "reload", filename, detail, ok=ok, via=via)
    return {"ok": ok, "file": filename, "problems": problems}
