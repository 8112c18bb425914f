"""
The responses golb itself produces.

Every error golb answers on behalf of a backend or a policy carries an
C{X-Golb-Error} header with a short machine-readable code and a short body:
plain text, or JSON when the client's C{Accept} prefers C{application/json}.
"""

import json
from typing import Optional, Sequence, Tuple

from twisted.web.http import RESPONSES as _TWISTED_RESPONSES

# Twisted's table lacks the newer reason phrases (RFC 6585, RFC 9110).
RESPONSES = dict(_TWISTED_RESPONSES)
RESPONSES.update({
    421: b"Misdirected Request",
    422: b"Unprocessable Content",
    428: b"Precondition Required",
    429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
    451: b"Unavailable For Legal Reasons",
})

__all__ = [
    "ERRORS",
    "GolbError",
    "errorBody",
    "rawErrorResponse",
    "renderError",
    "renderGrpcError",
    "wantsJSON",
]


# short code -> (status, default message)
ERRORS = {
    "bad-request": (400, "The request is malformed."),
    "unauthorized": (401, "Authentication is required."),
    "forbidden": (403, "Access is denied."),
    "no-route": (404, "No route matches this request."),
    "request-timeout": (408, "The request was not received in time."),
    "body-too-large": (413, "The request body is too large."),
    "uri-too-long": (414, "The request line is too long."),
    "rate-limited": (429, "Too many requests."),
    "headers-too-large": (431, "The request headers are too large."),
    "bad-gateway": (502, "The backend could not be reached."),
    "connect-failure": (502, "The backend refused or failed the connection."),
    "upstream-reset": (502, "The backend closed the connection before answering."),
    "invalid-response": (502, "The backend sent an invalid response."),
    "upstream-tls": (502, "The TLS connection to the backend failed."),
    "no-backend": (503, "No healthy backend is available."),
    "circuit-open": (503, "The backend pool is overloaded (circuit open)."),
    "queue-timeout": (503, "Every backend stayed busy for too long."),
    "queue-full": (503, "Every backend is busy and the waiting room is full."),
    "internal-error": (500, "golb failed to handle the request; see its log."),
    "shutting-down": (503, "The load balancer is shutting down."),
    "upstream-timeout": (504, "The backend did not answer in time."),
}


class GolbError(Exception):
    """
    An error that golb answers itself.

    @ivar code: the short code sent in C{X-Golb-Error}, a key of L{ERRORS}.
    @ivar status: the HTTP status.
    @ivar message: a one-line explanation for people.
    @ivar headers: extra response headers, C{[(name, value)]} as bytes
        (C{WWW-Authenticate}, C{Retry-After}).
    """

    def __init__(self, code: str, message: Optional[str] = None, status: Optional[int] = None,
                 headers: Sequence[Tuple[bytes, bytes]] = ()):
        defaultStatus, defaultMessage = ERRORS.get(code, (502, code))
        self.code = code
        self.headers = headers
        self.status = status if status is not None else defaultStatus
        self.message = message if message is not None else defaultMessage
        Exception.__init__(self, code, self.message)

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.message}"


def wantsJSON(accept: Optional[bytes]) -> bool:
    """
    Whether an C{Accept} header prefers JSON to plain text.

    @param accept: the raw header value, or L{None}.
    """
    if not accept:
        return False
    best = {}
    for part in accept.split(b","):
        fields = part.strip().split(b";")
        mediaType = fields[0].strip().lower()
        q = 1.0
        for param in fields[1:]:
            name, _, value = param.strip().partition(b"=")
            if name.strip() == b"q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        best[mediaType] = max(q, best.get(mediaType, 0.0))
    jsonQ = best.get(b"application/json", 0.0)
    textQ = max(best.get(b"text/plain", 0.0), best.get(b"text/*", 0.0), best.get(b"*/*", 0.0))
    return jsonQ > 0 and jsonQ >= textQ


def errorBody(status: int, code: str, message: str, asJSON: bool):
    """
    The body and content type of an error response.

    @return: C{(contentType, body)} as bytes.
    """
    if asJSON:
        body = json.dumps({"status": status, "error": code, "message": message})
        return b"application/json", body.encode("utf-8") + b"\n"
    reason = RESPONSES.get(status, b"Error").decode("ascii")
    return (
        b"text/plain; charset=utf-8",
        f"{status} {reason}: {message}\n".encode("utf-8"),
    )


def renderError(request, error: GolbError) -> None:
    """
    Answer C{request} (a L{twisted.web.server.Request} that has not started its
    response) with C{error} and finish it.  Safe to call on a request whose
    client has gone: then it does nothing.
    """
    if request.startedWriting or getattr(request, "_disconnected", False):
        return
    record = getattr(request, "record", None)
    if record is not None:
        record.error = error.code
    from golb.grpc import isGrpc

    if isGrpc(request.requestHeaders.getRawHeaders(b"content-type", [None])[0]):
        renderGrpcError(request, error)
        return
    asJSON = wantsJSON(request.requestHeaders.getRawHeaders(b"accept", [None])[0])
    contentType, body = errorBody(error.status, error.code, error.message, asJSON)
    request.setResponseCode(error.status, RESPONSES.get(error.status))
    headers = request.responseHeaders
    headers.setRawHeaders(b"content-type", [contentType])
    headers.setRawHeaders(b"x-golb-error", [error.code.encode("ascii")])
    headers.setRawHeaders(b"content-length", [str(len(body)).encode("ascii")])
    headers.setRawHeaders(b"cache-control", [b"no-store"])
    for name, value in error.headers:
        headers.addRawHeader(name, value)
    if request.method == b"HEAD":
        request.finish()
        return
    request.write(body)
    request.finish()


def renderGrpcError(request, error: GolbError) -> None:
    """
    Answer a gRPC C{request} with C{error} the way gRPC clients read errors:
    HTTP 200, C{application/grpc}, and the status in C{grpc-status} and
    C{grpc-message} (a "trailers-only" response: no messages, the status in
    the head).  C{X-Golb-Error} names golb's error as for other requests.
    """
    from golb.grpc import percentEncodeMessage, statusForError

    code, message = statusForError(error)
    request.setResponseCode(200)
    headers = request.responseHeaders
    headers.setRawHeaders(b"content-type", [b"application/grpc"])
    headers.setRawHeaders(b"grpc-status", [b"%d" % (code,)])
    headers.setRawHeaders(b"grpc-message", [percentEncodeMessage(message)])
    headers.setRawHeaders(b"x-golb-error", [error.code.encode("ascii")])
    for name, value in error.headers:
        headers.addRawHeader(name, value)
    request.finish()


def rawErrorResponse(
    status: int, code: str, message: Optional[str] = None, asJSON: bool = False,
    close: bool = True,
) -> bytes:
    """
    A whole HTTP/1.1 error response as bytes, for answering at the connection
    level where no request object exists yet (malformed requests, header
    timeouts, oversized headers).
    """
    if message is None:
        message = ERRORS.get(code, (status, code))[1]
    contentType, body = errorBody(status, code, message, asJSON)
    reason = RESPONSES.get(status, b"Error")
    lines = [
        b"HTTP/1.1 %d %s" % (status, reason),
        b"Content-Type: " + contentType,
        b"Content-Length: %d" % (len(body),),
        b"X-Golb-Error: " + code.encode("ascii"),
        b"Cache-Control: no-store",
    ]
    if close:
        lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + body
