"""
Tests for L{golb.tls}'s backend side: golb verifying https backends (system
trust or C{tls.ca}, host names, C{server_name}) and presenting a client
certificate to them, through real loopback sockets.
"""

import os

from twisted.internet import reactor, ssl
from twisted.internet.defer import inlineCallbacks
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site

from golb.test.support import (
    _closeSite,
    _trackProtocols,
    header,
    listenGolb,
    parseResponses,
    rawRequest,
)
from golb.test.test_tls import PKI
from golb.tls import TLSConfigError, trustRootFromFile


class WhoAmI(Resource):
    """
    An https backend page naming the SNI name it was reached with and the
    subject of the client certificate, if any.
    """

    isLeaf = True

    def render(self, request):
        transport = request.channel.transport
        serverName = transport.getHandle().get_servername()
        peer = transport.getPeerCertificate()
        subject = "-" if peer is None else peer.to_cryptography().subject.rfc4514_string()
        request.setHeader(b"content-type", b"text/plain")
        return f"sni={(serverName or b'-').decode('ascii')} client={subject}".encode("utf-8")


def listenHTTPS(testCase, issued, clientCA=None) -> int:
    """
    Serve L{WhoAmI} over TLS with C{issued}'s certificate on an ephemeral
    loopback port; with C{clientCA} (an L{golb.test.test_tls.Issued} CA),
    require a client certificate signed by it.

    @return: the port number.
    """
    with open(issued.cert, "rb") as f:
        certPEM = f.read()
    with open(issued.key, "rb") as f:
        keyPEM = f.read()
    certificate = ssl.PrivateCertificate.loadPEM(certPEM + keyPEM)
    if clientCA is None:
        options = certificate.options()
    else:
        with open(clientCA.cert, "rb") as f:
            options = certificate.options(ssl.Certificate.loadPEM(f.read()))
    site = Site(WhoAmI())
    site.log = lambda request: None
    _trackProtocols(site)
    port = reactor.listenSSL(0, site, options, interface="127.0.0.1")
    testCase.addCleanup(_closeSite, port, site)
    return port.getHost().port


class UpstreamTLSTests(TestCase):
    """
    golb verifies https backends by default and presents a client
    certificate when configured.
    """

    def setUp(self):
        self.pki = PKI(self.mktemp(), "backend CA")
        self.localhost = self.pki.issue("localhost", ["localhost"])
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    @inlineCallbacks
    def get(self, backendPort, tls="{}", host="localhost"):
        """
        Send one request through a golb whose pool is
        C{https://HOST:backendPort} with C{tls} as its C{tls:} section.

        @return: C{(status, X-Golb-Error values, body)}.
        """
        _, port, _ = listenGolb(self, f"""
listeners: [{{name: web, address: "127.0.0.1:0"}}]
backend_pools:
  - name: default
    backends: [{{url: "https://{host}:{backendPort}"}}]
    retries: {{attempts: 0}}
    tls: {tls}
""")
        raw = yield rawRequest(
            self, port.getHost().port,
            b"GET / HTTP/1.1\r\nHost: golb.example\r\nConnection: close\r\n\r\n")
        [(status, headers, body)] = parseResponses(raw)
        return status, header(headers, b"x-golb-error"), body

    def logged(self, text):
        return [formatEvent(e) for e in self.events if text in formatEvent(e)]

    @inlineCallbacks
    def test_unknownCAFails(self):
        """
        Without C{ca}, a backend whose certificate comes from a private CA
        is refused: 502 with C{X-Golb-Error: upstream-tls}, and the reason
        is logged.
        """
        backend = listenHTTPS(self, self.localhost)
        status, error, _ = yield self.get(backend)
        self.assertEqual((status, error), (502, [b"upstream-tls"]))
        [line] = self.logged("TLS handshake failed")
        self.assertIn("certificate verify failed", line)

    @inlineCallbacks
    def test_caBundle(self):
        """
        With C{ca} naming a bundle of several CA certificates, a backend
        signed by any of them is trusted (here the last one).
        """
        backend = listenHTTPS(self, self.localhost)
        others = [PKI(os.path.join(self.pki.directory, f"o{n}"), f"other {n}") for n in (1, 2)]
        bundle = self.pki.bundle("bundle.pem", *others)
        status, error, body = yield self.get(backend, f'{{ca: "{bundle}"}}')
        self.assertEqual((status, error, body), (200, [], b"sni=localhost client=-"))

    @inlineCallbacks
    def test_hostnameMismatch(self):
        """
        A trusted certificate for another name is refused (502
        C{upstream-tls}), naming the expected host in the log.
        """
        backend = listenHTTPS(self, self.pki.issue("a", ["a.example"]))
        status, error, _ = yield self.get(backend, f'{{ca: "{self.pki.ca.cert}"}}')
        self.assertEqual((status, error), (502, [b"upstream-tls"]))
        [line] = self.logged("TLS handshake failed")
        self.assertIn("DNSMismatch", line)

    @inlineCallbacks
    def test_serverName(self):
        """
        C{server_name} is sent as SNI and verified instead of the URL's
        host.
        """
        backend = listenHTTPS(self, self.pki.issue("a", ["a.example"]))
        status, error, body = yield self.get(
            backend, f'{{ca: "{self.pki.ca.cert}", server_name: a.example}}')
        self.assertEqual((status, error, body), (200, [], b"sni=a.example client=-"))

    @inlineCallbacks
    def test_verifyOff(self):
        """
        With C{verify: false}, a certificate nobody vouches for is accepted.
        """
        backend = listenHTTPS(self, self.localhost)
        status, _, body = yield self.get(backend, "{verify: false}")
        self.assertEqual((status, body), (200, b"sni=localhost client=-"))

    @inlineCallbacks
    def test_clientCertificate(self):
        """
        With C{cert} and C{key}, golb presents its client certificate to a
        backend that requires one.
        """
        clientPKI = PKI(os.path.join(self.pki.directory, "clients"), "client CA")
        client = clientPKI.issue("golb", commonName="golb-proxy", client=True)
        backend = listenHTTPS(self, self.localhost, clientCA=clientPKI.ca)
        status, error, body = yield self.get(
            backend,
            f'{{ca: "{self.pki.ca.cert}", cert: "{client.cert}", key: "{client.key}"}}')
        self.assertEqual((status, error), (200, []))
        self.assertEqual(body, b"sni=localhost client=CN=golb-proxy,O=golb tests")

    @inlineCallbacks
    def test_clientCertificateMissing(self):
        """
        A backend requiring a client certificate refuses golb without one:
        a 502.
        """
        clientPKI = PKI(os.path.join(self.pki.directory, "clients"), "client CA")
        backend = listenHTTPS(self, self.localhost, clientCA=clientPKI.ca)
        status, _, _ = yield self.get(backend, f'{{ca: "{self.pki.ca.cert}"}}')
        self.assertEqual(status, 502)


class TrustRootTests(SynchronousTestCase):
    """
    L{trustRootFromFile} reads every certificate of a CA file.
    """

    def test_notACertificate(self):
        """
        A file without certificates is refused, naming it.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("hello\n")
        e = self.assertRaises(TLSConfigError, trustRootFromFile, path)
        self.assertEqual(e.problems, [f"tls.ca: {path}: no PEM certificate in it "
                                      "(expected -----BEGIN CERTIFICATE-----)"])

    def test_missing(self):
        """
        A missing file is refused, naming it.
        """
        e = self.assertRaises(TLSConfigError, trustRootFromFile, "/nonexistent/ca.pem")
        self.assertEqual(e.problems, ["tls.ca: /nonexistent/ca.pem: no such file or directory"])
