"""
The OpenAPI 3 description of the admin JSON API, served at
C{/api/v1/openapi.json}.
"""

from typing import Any, Dict

from golb import __version__

__all__ = ["openapi"]


def _ref(name: str) -> Dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema, description: str) -> Dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERRORS = {
    "400": {"$ref": "#/components/responses/BadRequest"},
    "401": {"$ref": "#/components/responses/Unauthorized"},
}
_NOT_FOUND = {"404": {"$ref": "#/components/responses/NotFound"}}
_CSRF = {"403": {"$ref": "#/components/responses/Forbidden"}}


def _get(summary: str, schema, description: str, extra=None, parameters=()):
    operation = {
        "summary": summary,
        "responses": {"200": _json(schema, description),
                      "401": {"$ref": "#/components/responses/Unauthorized"}},
    }
    if extra:
        operation["responses"].update(extra)
    if parameters:
        operation["parameters"] = list(parameters)
    return operation


_POOL_PARAM = {"name": "pool", "in": "path", "required": True, "schema": {"type": "string"}}
_BACKEND_PARAM = {"name": "backend", "in": "path", "required": True,
                  "description": "the backend's id: its configured name, else host:port",
                  "schema": {"type": "string"}}


def _query(name: str, description: str, repeat: bool = False) -> Dict[str, Any]:
    schema: Dict[str, Any] = {"type": "string"}
    if repeat:
        schema = {"type": "array", "items": {"type": "string"}}
    return {"name": name, "in": "query", "required": False, "description": description,
            "schema": schema, "explode": True}


_SCHEMAS: Dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["status", "error", "message"],
        "properties": {
            "status": {"type": "integer"},
            "error": {"type": "string", "description": "a short code"},
            "message": {"type": "string"},
        },
    },
    "Health": {
        "type": "object",
        "properties": {
            "status": {"type": "string", "enum": ["up", "down"]},
            "since": {"type": "number"},
            "reason": {"type": "string"},
            "ejected": {"type": "boolean"},
            "ejected_until": {"type": "number", "nullable": True},
            "ejections": {"type": "integer"},
            "consecutive_failures": {"type": "integer"},
            "last_probe": {"allOf": [_ref("Probe")], "nullable": True},
            "history": {"type": "array", "items": _ref("Probe")},
        },
    },
    "Probe": {
        "type": "object",
        "properties": {
            "ok": {"type": "boolean"},
            "detail": {"type": "string"},
            "latency": {"type": "number"},
            "at": {"type": "number"},
            "code": {"type": "integer", "nullable": True},
        },
    },
    "Backend": {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "pool": {"type": "string"},
            "url": {"type": "string"},
            "state": {"type": "string", "enum": ["ready", "drain", "maint"]},
            "healthy": {"type": "boolean"},
            "available": {"type": "boolean"},
            "backup": {"type": "boolean"},
            "weight": {"type": "integer"},
            "configured_weight": {"type": "integer", "nullable": True},
            "effective_weight": {"type": "integer"},
            "max_connections": {"type": "integer"},
            "in_flight": {"type": "integer"},
            "requests": {"type": "integer"},
            "errors": {"type": "integer"},
            "rate": {"type": "number", "nullable": True, "description": "requests/s"},
            "latency": {"type": "number", "description": "peak-EWMA seconds to response head"},
            "health": _ref("Health"),
        },
    },
    "PoolSummary": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "algorithm": {"type": "string"},
            "backends": {"type": "integer"},
            "ready": {"type": "integer"},
            "healthy": {"type": "integer"},
            "available": {"type": "integer"},
            "in_flight": {"type": "integer"},
            "requests": {"type": "integer"},
            "errors": {"type": "integer"},
            "rate": {"type": "number", "nullable": True},
            "error_rate": {"type": "number", "nullable": True},
        },
    },
    "Pool": {
        "allOf": [_ref("PoolSummary"), {
            "type": "object",
            "properties": {"backends": {"type": "array", "items": _ref("Backend")}},
        }],
    },
    "BackendChange": {
        "type": "object",
        "additionalProperties": False,
        "minProperties": 1,
        "properties": {
            "state": {"type": "string", "enum": ["ready", "drain", "maint"]},
            "weight": {"type": "integer", "minimum": 0, "maximum": 256},
        },
    },
    "Reload": {
        "type": "object",
        "properties": {
            "ok": {"type": "boolean"},
            "file": {"type": "string"},
            "problems": {"type": "array", "items": {"type": "string"}},
        },
    },
    "AuditEntry": {
        "type": "object",
        "properties": {
            "at": {"type": "number"},
            "who": {"type": "string"},
            "action": {"type": "string"},
            "target": {"type": "string"},
            "detail": {"type": "string"},
            "ok": {"type": "boolean"},
            "via": {"type": "string", "enum": ["api", "page"]},
        },
    },
}


def openapi() -> Dict[str, Any]:
    """
    The OpenAPI 3.0 document of C{/api/v1/}.
    """
    obj = {"type": "object"}
    paths = {
        "/api/v1/overview": {"get": _get(
            "Listeners, pools, totals, rates, recent errors and changes", obj, "the overview")},
        "/api/v1/pools": {"get": _get(
            "Every pool", {"type": "object", "properties": {
                "pools": {"type": "array", "items": _ref("PoolSummary")}}}, "the pools")},
        "/api/v1/pools/{pool}": {"get": _get(
            "One pool and its backends", _ref("Pool"), "the pool", _NOT_FOUND,
            [_POOL_PARAM])},
        "/api/v1/pools/{pool}/backends/{backend}": {
            "get": _get("One backend", _ref("Backend"), "the backend", _NOT_FOUND,
                        [_POOL_PARAM, _BACKEND_PARAM]),
            "patch": {
                "summary": "Drain, maintain or ready a backend, or change its weight"
                           " (until the next reload)",
                "parameters": [_POOL_PARAM, _BACKEND_PARAM],
                "requestBody": {"required": True, "content": {
                    "application/json": {"schema": _ref("BackendChange")}}},
                "responses": dict({"200": _json(_ref("Backend"), "the backend, changed")},
                                  **_ERRORS, **_NOT_FOUND, **_CSRF),
            },
        },
        "/api/v1/routes": {"get": _get("The route table, in the order rules are tried",
                                       obj, "the routes")},
        "/api/v1/config": {"get": _get(
            "The running configuration, secrets redacted", obj, "the configuration",
            parameters=[_query("format", "json (default) or yaml")])},
        "/api/v1/reload": {"post": {
            "summary": "Reload the configuration file (like SIGHUP)",
            "responses": dict({
                "200": _json(_ref("Reload"), "reloaded"),
                "422": _json(_ref("Reload"), "the file has problems; nothing changed"),
            }, **_ERRORS, **_CSRF),
        }},
        "/api/v1/explain": {"get": _get(
            "Which route, policies, candidates and backend a request would get;"
            " nothing is sent", obj, "the explanation", _ERRORS,
            [_query("method", "GET by default"), _query("host", "the Host header"),
             _query("path", "path and query, / by default"),
             _query("header", "Name:Value, repeatable", repeat=True),
             _query("client", "client IP, 127.0.0.1 by default"),
             _query("url", "instead of host and path: http://host/path?query")])},
        "/api/v1/audit": {"get": _get(
            "Recent changes made through the admin site, newest first",
            {"type": "object", "properties": {
                "audit": {"type": "array", "items": _ref("AuditEntry")}}}, "the audit trail")},
        "/api/v1/errors": {"get": _get(
            "Recent errors golb answered itself, newest first", obj, "the errors")},
        "/api/v1/workers": {"get": _get(
            "The worker processes of workers: N (an empty list with one process)", obj,
            "the workers")},
        "/api/v1/openapi.json": {"get": _get("This document", obj, "OpenAPI 3")},
    }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "golb admin API",
            "version": __version__,
            "description": "Inspect and steer a running golb. See docs/admin-api.md.",
        },
        "paths": paths,
        "security": [{"basic": []}, {"bearer": []}, {}],
        "components": {
            "securitySchemes": {
                "basic": {"type": "http", "scheme": "basic",
                          "description": "users of admin.auth.users_file (htpasswd)"},
                "bearer": {"type": "http", "scheme": "bearer",
                           "description": "a token of admin.auth.token_file"},
            },
            "responses": {
                "BadRequest": _json(_ref("Error"), "bad input; the message says what"),
                "Unauthorized": _json(_ref("Error"), "credentials missing or wrong"),
                "Forbidden": _json(_ref("Error"), "CSRF or origin check failed"),
                "NotFound": _json(_ref("Error"), "no such pool, backend or path"),
            },
            "schemas": _SCHEMAS,
        },
    }
