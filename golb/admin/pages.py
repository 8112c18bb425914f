"""
The admin site's HTML pages, rendered with L{twisted.web.template} from the
same views as the JSON API (L{golb.admin.views}).

Pages are complete on their own (inline CSS, no external assets) and work
without JavaScript; with it, live values refresh every two seconds from the
JSON API without reloading the page (see L{golb.admin._assets}).  Actions
are plain HTML forms POSTed with the page's CSRF token.
"""

import json
import time
from typing import Any, Dict, Iterable, List, Optional
from urllib.parse import quote

from twisted.web.template import Tag, flattenString, tags

from golb.admin._assets import CSS, SCRIPT
from golb.admin._auth import CSRF_FIELD
from golb.pool import ADMIN_STATES

__all__ = ["PageContext", "configPage", "errorPage", "errorsPage", "formatValue",
           "overviewPage", "poolPage", "routesPage"]


class PageContext:
    """
    What every page needs besides its data.

    @ivar csrfToken: the token to put in forms (text).
    @ivar nonce: the CSP nonce of this response's inline style and script.
    @ivar who: who is looking (shown in the header).
    """

    def __init__(self, csrfToken: str, nonce: str, who: str):
        self.csrfToken = csrfToken
        self.nonce = nonce
        self.who = who


def formatValue(value: Any, format: Optional[str] = None) -> str:
    """
    A value as the pages show it; the same formats as the refreshing script.
    """
    if value is None:
        return "\u2013"
    if format == "bool":
        return "yes" if value else "no"
    if format == "ms":
        return f"{value * 1000:.1f} ms"
    if format == "rate":
        return f"{value:.1f}/s"
    if format == "time":
        return time.strftime("%H:%M:%S", time.gmtime(value)) if value else "\u2013"
    if format == "ago":
        return f"{max(0, round(time.time() - value))}s ago" if value else "\u2013"
    if format == "json":
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _path(*keys) -> str:
    return json.dumps(list(keys))


def live(value: Any, *path, format: Optional[str] = None, cls: Optional[str] = None,
         tagName: str = "span", **attributes) -> Tag:
    """
    An element showing C{value} now and refreshed from C{path} of the polled
    JSON.
    """
    attributes["data-path"] = _path(*path)
    if format:
        attributes["data-format"] = format
    if cls:
        attributes["data-class"] = cls
        suffix = json.dumps(value) if isinstance(value, bool) or value is None else value
        attributes["class"] = f"{cls} {cls}-{suffix}"
    return Tag(tagName)(**attributes)(formatValue(value, format))


def liveCell(value, *path, format=None, cls=None, num=False) -> Tag:
    attributes = {}
    if num and not cls:
        attributes["class"] = "num"
    return live(value, *path, format=format, cls=cls, tagName="td", **attributes)


def _rows(items: List[Dict[str, Any]], cols) -> List[Tag]:
    if not items:
        return [tags.tr(tags.td(colspan=str(len(cols)), class_="muted")("none"))]
    out = []
    for item in items:
        cells = []
        for keys, format in cols:
            value = item
            for key in keys:
                value = value.get(key) if isinstance(value, dict) else None
            cells.append(tags.td(formatValue(value, format)))
        out.append(tags.tr(*cells))
    return out


def liveTable(headings: Iterable[str], items, path, cols) -> Tag:
    """
    A table whose rows are rebuilt from the list at C{path}.

    @param cols: C{[(keys, format)]} for each column.
    """
    body = tags.tbody(**{
        "data-list": _path(*path),
        "data-cols": json.dumps([[list(keys), format] for keys, format in cols]),
    })(*_rows(items, cols))
    return tags.table(tags.thead(tags.tr(*[tags.th(h) for h in headings])), body)


def _probes(history, *path) -> Tag:
    squares = [
        tags.span(class_="probe " + ("probe-ok" if result["ok"] else "probe-fail"),
                  title=f"{formatValue(result['at'], 'time')} {result['detail']}"
                        f" ({formatValue(result['latency'], 'ms')})")
        for result in history
    ]
    return tags.span(**{"data-history": _path(*path)})(*squares)


def _csrf(context: PageContext) -> Tag:
    return tags.input(type="hidden", name=CSRF_FIELD.decode("ascii"), value=context.csrfToken)


_NAV = [("/", "Overview"), ("/routes", "Routes"), ("/config", "Config"), ("/errors", "Errors")]


def render(context: PageContext, title: str, here: str, content: List[Any],
           poll: Optional[str] = None) -> bytes:
    """
    A whole page: header, C{content}, inline style and script.

    @param here: the navigation entry to highlight (a path).
    @param poll: the JSON API path the script refreshes from.
    """
    nav = [tags.a(href=href, class_="here" if href == here else "")(label)
           for href, label in _NAV]
    header = tags.header(tags.span(class_="brand")("golb"), *nav,
                         tags.span(id="live")("as of page load" if poll else ""),
                         tags.span(class_="muted")(context.who))
    attributes = {"data-poll": poll} if poll else {}
    body = tags.body(**attributes)(header, Tag("main")(*content))
    head = tags.head(tags.meta(charset="utf-8"), tags.title(f"{title} \u00b7 golb admin"),
                     tags.meta(name="viewport", content="width=device-width"))
    out = []
    flattenString(None, tags.html(lang="en")(head, body)).addCallback(out.append)
    document = out[0]
    nonce = context.nonce.encode("ascii")
    style = b'<style nonce="' + nonce + b'">' + CSS.encode("utf-8") + b"</style>"
    script = b'<script nonce="' + nonce + b'">' + SCRIPT.encode("utf-8") + b"</script>"
    document = document.replace(b"</head>", style + b"</head>", 1)
    document = document.replace(b"</body>", script + b"</body>", 1)
    return b"<!DOCTYPE html>\n" + document


def poolHref(name: str) -> str:
    return "/pools/" + quote(name, safe="")


def _reloadForm(context: PageContext) -> Tag:
    return tags.form(method="post", action="/reload", class_="inline")(
        _csrf(context), tags.button(type="submit", name="reload", value="1")("reload config"))


def _workersSection(workers) -> list:
    """
    With C{workers: N}: a table of the worker processes.
    """
    if not workers:
        return []
    return [
        tags.h2("Workers (", str(len(workers)), ")"),
        tags.table(
            tags.thead(tags.tr(tags.th(class_="num")("worker"), tags.th(class_="num")("pid"),
                               tags.th("serving"), tags.th(class_="num")("uptime"))),
            tags.tbody(*[
                tags.tr(tags.td(class_="num")(str(worker["index"])),
                        tags.td(class_="num")(str(worker["pid"])),
                        tags.td(formatValue(worker["ready"], "bool")),
                        tags.td(class_="num")(f"{worker['uptime']:.0f}s"))
                for worker in workers
            ]),
        ),
    ]


def overviewPage(context: PageContext, view: Dict[str, Any]) -> bytes:
    """
    The overview: golb, totals, listeners, pools, recent errors and changes.
    """
    totals = view["totals"]
    last = view["last_reload"]
    lastText = "none yet"
    if last:
        lastText = (f"{formatValue(last['at'], 'time')} UTC: "
                    + ("ok" if last["ok"] else "failed: " + "; ".join(last["problems"])))
    facts = tags.dl(class_="facts")(
        tags.dt("version"), tags.dd(view["version"]),
        tags.dt("configuration"), tags.dd(view["config_file"], " ", _reloadForm(context)),
        tags.dt("ready"), tags.dd(live(view["ready"], "ready", format="bool")),
        tags.dt("reloads"), tags.dd(live(view["reloads"], "reloads"), " (failed: ",
                                    live(view["reload_failures"], "reload_failures"), ")"),
        tags.dt("last reload"), tags.dd(lastText),
        tags.dt("metrics"), tags.dd(tags.a(href="/metrics")("/metrics")
                                    if view["metrics"] else "off"),
    )
    totalsTable = tags.table(
        tags.thead(tags.tr(*[tags.th(class_="num")(h) for h in (
            "pools", "backends", "available", "in flight", "requests", "requests/s",
            "backend errors", "errors/s", "golb errors")])),
        tags.tbody(tags.tr(
            liveCell(totals["pools"], "totals", "pools", num=True),
            liveCell(totals["backends"], "totals", "backends", num=True),
            liveCell(totals["available"], "totals", "available", num=True),
            liveCell(totals["in_flight"], "totals", "in_flight", num=True),
            liveCell(totals["requests"], "totals", "requests", num=True),
            liveCell(totals["rate"], "totals", "rate", format="rate", num=True),
            liveCell(totals["errors"], "totals", "errors", num=True),
            liveCell(totals["error_rate"], "totals", "error_rate", format="rate", num=True),
            liveCell(totals["golb_errors"], "totals", "golb_errors", num=True),
        )),
    )
    listeners = tags.table(
        tags.thead(tags.tr(tags.th("listener"), tags.th("address"), tags.th("TLS"),
                           tags.th(class_="num")("connections"))),
        tags.tbody(*[
            tags.tr(tags.td(listener["name"]),
                    tags.td(listener["address"] or listener["endpoint"] or ""),
                    tags.td(formatValue(listener["tls"], "bool")),
                    liveCell(listener["connections"], "listeners", {"name": listener["name"]},
                             "connections", num=True))
            for listener in view["listeners"]
        ]),
    )
    pools = tags.table(
        tags.thead(tags.tr(tags.th("pool"), tags.th("algorithm"), *[
            tags.th(class_="num")(h) for h in (
                "backends", "available", "healthy", "in flight", "requests", "requests/s",
                "errors")])),
        tags.tbody(*[
            tags.tr(
                tags.td(tags.a(href=poolHref(pool["name"]))(pool["name"])),
                tags.td(pool["algorithm"]),
                *[liveCell(pool[key], "pools", {"name": pool["name"]}, key, format=format,
                           num=True)
                  for key, format in (("backends", None), ("available", None),
                                      ("healthy", None), ("in_flight", None),
                                      ("requests", None), ("rate", "rate"), ("errors", None))])
            for pool in view["pools"]
        ]),
    )
    errorCols = [(("at",), "time"), (("status",), None), (("error",), None),
                 (("method",), None), (("host",), None), (("target",), None),
                 (("client",), None), (("route",), None), (("backend",), None)]
    auditCols = [(("at",), "time"), (("who",), None), (("action",), None),
                 (("target",), None), (("detail",), None), (("ok",), "bool"),
                 (("via",), None)]
    content = [
        tags.h1("Overview"),
        facts,
        tags.h2("Traffic"), totalsTable,
        tags.h2("Listeners"), listeners,
        *_workersSection(view.get("workers")),
        tags.h2("Pools (", str(len(view["pools"])), ") and routes (", str(view["routes"]),
                ": ", tags.a(href="/routes")("route table"), ")"),
        pools,
        tags.h2("Recent errors golb answered (", tags.a(href="/errors")("all"), ")"),
        liveTable(["at (UTC)", "status", "error", "method", "host", "target", "client",
                   "route", "backend"], view["errors"]["recent"], ("errors", "recent"),
                  errorCols),
        tags.h2("Recent changes"),
        liveTable(["at (UTC)", "who", "action", "target", "change", "ok", "via"],
                  view["audit"], ("audit",), auditCols),
    ]
    return render(context, "Overview", "/", content, poll="/api/v1/overview")


def _backendActions(context: PageContext, pool: str, backend: Dict[str, Any]) -> Tag:
    action = poolHref(pool) + "/backends/" + quote(backend["id"], safe="")
    buttons = [
        tags.button(type="submit", name="state", value=state,
                    **{"data-action": state, "data-backend": backend["id"]})(state)
        for state in ADMIN_STATES
    ]
    weight = tags.form(method="post", action=action, class_="inline")(
        _csrf(context),
        tags.input(type="number", name="weight", min="0", max="256", class_="weight",
                   value=str(backend["weight"]), **{"aria-label": "weight"}),
        tags.button(type="submit", **{"data-action": "weight",
                                      "data-backend": backend["id"]})("set weight"),
    )
    return tags.td(tags.form(method="post", action=action, class_="inline")(
        _csrf(context), *buttons), " ", weight)


def poolPage(context: PageContext, view: Dict[str, Any]) -> bytes:
    """
    One pool: every backend with its state, health, probes, load and
    latency, and the forms to drain, maintain or ready it or change its
    weight.
    """
    name = view["name"]
    rows = []
    for backend in view["backends"]:
        key = {"id": backend["id"]}
        health = backend["health"]
        weight = [live(backend["weight"], "backends", key, "weight")]
        if backend["configured_weight"] not in (None, backend["weight"]):
            weight.append(tags.span(class_="muted")(
                f" (configured {backend['configured_weight']})"))
        rows.append(tags.tr(**{"data-backend": backend["id"]})(
            tags.td(tags.strong(backend["id"]), tags.br(),
                    tags.span(class_="muted")(backend["url"])),
            liveCell(backend["state"], "backends", key, "state", cls="state"),
            liveCell(backend["healthy"], "backends", key, "healthy", format="bool", cls="ok"),
            tags.td(live(health["status"], "backends", key, "health", "status"), " ",
                    live(health["since"], "backends", key, "health", "since", format="ago"),
                    tags.br(),
                    live(health["reason"], "backends", key, "health", "reason",
                         class_="muted")),
            tags.td(_probes(health["history"], "backends", key, "health", "history")),
            liveCell(backend["in_flight"], "backends", key, "in_flight", num=True),
            tags.td(class_="num")(*weight),
            liveCell(backend["requests"], "backends", key, "requests", num=True),
            liveCell(backend["rate"], "backends", key, "rate", format="rate", num=True),
            liveCell(backend["errors"], "backends", key, "errors", num=True),
            liveCell(backend["latency"], "backends", key, "latency", format="ms", num=True),
            _backendActions(context, name, backend),
        ))
    table = tags.table(
        tags.thead(tags.tr(*[tags.th(h) for h in (
            "backend", "state", "healthy", "health", "last 20 probes", "in flight", "weight",
            "requests", "requests/s", "errors", "latency", "actions")])),
        tags.tbody(*rows),
    )
    facts = tags.dl(class_="facts")(
        tags.dt("algorithm"), tags.dd(view["algorithm"]),
        tags.dt("available"), tags.dd(live(view["available"], "available"), " of ",
                                      str(len(view["backends"]))),
        tags.dt("in flight"), tags.dd(live(view["in_flight"], "in_flight")),
        tags.dt("requests/s"), tags.dd(live(view["rate"], "rate", format="rate")),
        tags.dt("panic mode"), tags.dd(live(view["panicking"], "panicking", format="bool")),
        tags.dt("sticky cookie"), tags.dd(view["sticky_cookie"] or "none"),
    )
    note = tags.p(class_="muted")(
        "drain: no new requests (sticky sessions still), in-flight ones finish; maint: no"
        " requests at all; ready: back in (with slow start). Weights set here last until"
        " the next reload.")
    content = [tags.h1("Pool ", name), facts, tags.h2("Backends"), table, note]
    return render(context, f"Pool {name}", "", content,
                  poll="/api/v1/pools/" + quote(name, safe=""))


def routesPage(context: PageContext, view: Dict[str, Any]) -> bytes:
    """
    The route table, in the order rules are tried, and a form to explain a
    request.
    """
    routes = list(view["routes"])
    if view["default"] is not None:
        routes.append(view["default"])
    rows = []
    for route in routes:
        if route["pool"]:
            target = tags.a(href=poolHref(route["pool"]))(route["pool"])
        else:
            target = tags.span(*[
                tags.span(tags.a(href=poolHref(split["pool"]))(split["pool"]),
                          f" \u00d7{split['weight']} ")
                for split in route["split"]])
        match = {key: value for key, value in route["match"].items()
                 if value not in (None, [], {})}
        rows.append(tags.tr(
            tags.td(str(route["order"])),
            tags.td(route["name"] or "", " (default)" if route["default"] else ""),
            tags.td(route["host"] or "*"),
            tags.td(tags.code(json.dumps(match)) if match else "anything"),
            tags.td(target),
            tags.td(f"{route['mirror']['pool']} {route['mirror']['percent']:.0%}"
                    if route["mirror"] else ""),
            tags.td(", ".join(policy["kind"] for policy in route["policies"]) or "none"),
        ))
    table = tags.table(
        tags.thead(tags.tr(*[tags.th(h) for h in (
            "order", "name", "host", "match", "target", "mirror", "policies")])),
        tags.tbody(*rows),
    )
    explainForm = tags.form(method="get", action="/api/v1/explain")(
        tags.input(name="method", value="GET", size="6", **{"aria-label": "method"}), " ",
        tags.input(name="host", placeholder="host", **{"aria-label": "host"}), " ",
        tags.input(name="path", value="/", **{"aria-label": "path"}), " ",
        tags.input(name="header", placeholder="Name:Value", **{"aria-label": "header"}), " ",
        tags.input(name="client", value="127.0.0.1", **{"aria-label": "client"}), " ",
        tags.button(type="submit")("explain"),
    )
    content = [tags.h1("Routes"), table, tags.h2("Explain a request"),
               tags.p(class_="muted")("Which route, policies and backend a request would get;"
                                      " nothing is sent."), explainForm]
    return render(context, "Routes", "/routes", content)


def configPage(context: PageContext, text: str, filename: str) -> bytes:
    """
    The running configuration as YAML, secrets redacted.
    """
    content = [
        tags.h1("Configuration"),
        tags.p("From ", tags.code(filename), " with every default filled in; secrets are"
               " redacted. ", _reloadForm(context), " ",
               tags.a(href="/api/v1/config")("JSON")),
        tags.pre(text),
    ]
    return render(context, "Configuration", "/config", content)


def errorsPage(context: PageContext, view: Dict[str, Any]) -> bytes:
    """
    The recent errors golb answered itself, newest first.
    """
    cols = [(("at",), "time"), (("status",), None), (("error",), None),
            (("listener",), None), (("method",), None), (("host",), None),
            (("target",), None), (("client",), None), (("route",), None),
            (("pool",), None), (("backend",), None)]
    counts = view["by_code"]
    content = [
        tags.h1("Recent errors"),
        tags.p("Since the admin site started: ",
               ", ".join(f"{code}: {count}" for code, count in sorted(counts.items()))
               or "none", "."),
        liveTable(["at (UTC)", "status", "error", "listener", "method", "host", "target",
                   "client", "route", "pool", "backend"], view["errors"], ("errors",), cols),
    ]
    return render(context, "Errors", "/errors", content, poll="/api/v1/errors")


def errorPage(context: PageContext, status: int, message: str) -> bytes:
    """
    A page saying what went wrong, with a way back.
    """
    content = [tags.h1(f"{status}"), tags.p(class_="error")(message),
               tags.p(tags.a(href="/")("back to the overview"))]
    return render(context, str(status), "", content)
