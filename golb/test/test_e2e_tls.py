"""
HTTPS end to end: C{twistd -n golb} with an HTTPS listener and a plain one
that redirects to it.
"""

import os

from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from golb.test.support import freePort, listenBackend, parseResponses, rawRequest
from golb.test.test_e2e import runTwistd
from golb.test.test_tls import PKI, ClientTLS, _replace, request, tlsConnect


class HTTPSEndToEndTests(TestCase):
    """
    What a user of an HTTPS listener sees.
    """

    timeout = 60

    @defer.inlineCallbacks
    def test_httpsRedirectAndReload(self):
        """
        The plain listener answers 308 to the HTTPS one; the HTTPS listener
        proxies with X-Forwarded-Proto https; after the certificate files
        change and golb gets SIGHUP, new connections get the new certificate
        while a connection opened before keeps working.
        """
        pki = PKI(os.path.abspath(self.mktemp()))
        site = pki.issue("site", ["a.example"])
        backend, _ = listenBackend(self)
        plain, secure = freePort(), freePort()
        protocol, _ = runTwistd(self, f"""\
listeners:
  - name: http
    address: "127.0.0.1:{plain}"
    redirect_to_https: {secure}
  - name: https
    address: "127.0.0.1:{secure}"
    tls:
      certificates: [{{cert: "{site.cert}", key: "{site.key}"}}]
backend_pools:
  - name: default
    backends: [{{url: "http://127.0.0.1:{backend.getHost().port}"}}]
""")
        yield protocol.ready
        data = yield rawRequest(self, plain, b"GET /a/b?c=1 HTTP/1.1\r\nHost: a.example\r\n"
                                b"Connection: close\r\n\r\n")
        [(status, headers, _)] = parseResponses(data)
        self.assertEqual(status, 308)
        self.assertIn((b"location", f"https://a.example:{secure}/a/b?c=1".encode()), headers)

        old = yield tlsConnect(self, secure, ClientTLS("a.example", ca=pki.ca.cert))
        old.transport.write(request(b"/first"))
        data = yield old.waitFor(lambda data: len(parseResponses(data)) == 1)
        [(status, _, body)] = parseResponses(data)
        self.assertEqual(status, 200)
        self.assertIn(b"x-forwarded-proto: https", body.lower())
        self.assertEqual(old.peerCertificate(), site.certificate)

        renewed = pki.issue("renewed", ["a.example"])
        _replace(renewed, site)
        protocol.transport.signalProcess("HUP")
        for _ in range(250):
            if b"certificates reloaded" in protocol.output:
                break
            yield deferLater(reactor, 0.02, lambda: None)
        new = yield tlsConnect(self, secure, ClientTLS("a.example", ca=pki.ca.cert))
        self.assertEqual(new.peerCertificate(), renewed.certificate)
        old.transport.write(request(b"/again"))
        data = yield old.waitFor(lambda data: len(parseResponses(data)) == 2)
        self.assertEqual([status for status, _, _ in parseResponses(data)], [200, 200])
        self.assertNotIn(b"Traceback", protocol.output)
