"""
Tests for L{golb.errors}: golb's own answers, for people and for gRPC
clients.
"""

from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from golb.errors import GolbError, renderError


def request(contentType=None) -> DummyRequest:
    req = DummyRequest([b""])
    req.startedWriting = False
    if contentType is not None:
        req.requestHeaders.setRawHeaders(b"content-type", [contentType])
    return req


class RenderErrorTests(SynchronousTestCase):
    def test_plain(self):
        """
        An ordinary request gets the error's status, code and message.
        """
        req = request()
        renderError(req, GolbError("no-backend"))
        self.assertEqual(req.responseCode, 503)
        self.assertEqual(req.responseHeaders.getRawHeaders(b"x-golb-error"), [b"no-backend"])
        self.assertIn(b"No healthy backend", b"".join(req.written))
        self.assertEqual(req.finished, 1)

    def test_grpc(self):
        """
        A gRPC call gets HTTP 200 with the status in grpc-status and
        grpc-message (percent-encoded), and no body: what gRPC clients read.
        """
        req = request(b"application/grpc+proto")
        renderError(req, GolbError("no-backend"))
        self.assertEqual(req.responseCode, 200)
        headers = req.responseHeaders
        self.assertEqual(headers.getRawHeaders(b"content-type"), [b"application/grpc"])
        self.assertEqual(headers.getRawHeaders(b"grpc-status"), [b"14"])
        self.assertEqual(headers.getRawHeaders(b"grpc-message"),
                         [b"No healthy backend is available."])
        self.assertEqual(headers.getRawHeaders(b"x-golb-error"), [b"no-backend"])
        self.assertEqual(b"".join(req.written), b"")
        self.assertEqual(req.finished, 1)

    def test_grpcStatuses(self):
        """
        golb's errors map to the gRPC statuses a client would expect.
        """
        for code, expected in [("unauthorized", b"16"), ("forbidden", b"7"),
                               ("no-route", b"12"), ("rate-limited", b"8"),
                               ("upstream-timeout", b"4"), ("circuit-open", b"14"),
                               ("internal-error", b"13")]:
            req = request(b"application/grpc")
            renderError(req, GolbError(code))
            self.assertEqual(req.responseHeaders.getRawHeaders(b"grpc-status"), [expected],
                             code)

    def test_grpcWeb(self):
        """
        gRPC-Web is not gRPC: it gets an ordinary error.
        """
        req = request(b"application/grpc-web")
        renderError(req, GolbError("no-backend"))
        self.assertEqual(req.responseCode, 503)
