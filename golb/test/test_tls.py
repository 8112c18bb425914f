"""
Tests for L{golb.tls}'s listener side: HTTPS listeners (SNI, versions,
ciphers, ALPN, client certificates, session resumption, reloads, expiry) and
the plain listener's C{redirect_to_https}.

Certificates are made by the tests (L{PKI}); TLS runs over real loopback
sockets, with pyOpenSSL (and, for session resumption, the standard
library's L{ssl}) as the client.
"""

import datetime
import os
import ssl as stdlibssl
import time

import attr
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL
from twisted.internet import defer, reactor
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    connectProtocol,
    wrapClientTLS,
)
from twisted.internet.interfaces import (
    IHandshakeListener,
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
)
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from zope.interface import implementer
from zope.interface.verify import verifyObject

from golb.app import Golb
from golb.config import CertificatePair, ClientAuth, ListenerConfig, ListenerTLSConfig, parseConfig
from golb.listener import GolbSite
from golb.tap import listenerSite
from golb.test.support import (
    RawClient,
    _closeSite,
    _trackProtocols,
    header,
    listenBackend,
    parseResponses,
    rawRequest,
)
from golb.tls import (
    DEFAULT_CIPHERS,
    CertificateReloadService,
    HTTPSRedirect,
    ServerTLS,
    TLSConfigError,
    listenerTLSProblems,
    tlsClientSubject,
    tlsEndpoint,
)

# ---------------------------------------------------------------- certificates

_DAY = datetime.timedelta(days=1)


def _name(commonName: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "golb tests"),
        x509.NameAttribute(NameOID.COMMON_NAME, commonName),
    ])


@attr.s(auto_attribs=True)
class Issued:
    """
    A certificate written by L{PKI.issue}.

    @ivar cert: the certificate file (with its chain when issued by an
        intermediate).
    @ivar key: its (unencrypted) key file.
    @ivar certificate: the certificate.
    """

    cert: str
    key: str
    certificate: x509.Certificate
    privateKey: object

    @property
    def pair(self) -> CertificatePair:
        return CertificatePair(self.cert, self.key)


class PKI:
    """
    A test certificate authority writing PEM files into one directory.

    @ivar ca: the root's L{Issued} (a self-signed CA).
    """

    def __init__(self, directory: str, caName: str = "golb test CA"):
        self.directory = directory
        os.makedirs(directory, exist_ok=True)
        self._serial = 1
        self.ca = self.issue("ca", commonName=caName, isCA=True)

    def issue(self, fileName, dnsNames=(), commonName=None, isCA=False, issuer=None,
              client=False, notAfter=None, chain=True) -> Issued:
        """
        Write C{fileName}.pem and C{fileName}.key: a certificate for
        C{dnsNames} signed by C{issuer} (default: this CA; L{None} when
        making the CA itself), its chain appended when the issuer is an
        intermediate.
        """
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        if isCA and issuer is None and not hasattr(self, "ca"):
            issuer, issuerKey, issuerName = None, key, None
        else:
            issuer = issuer or self.ca
            issuerKey, issuerName = issuer.privateKey, issuer.certificate.subject
        subject = _name(commonName or (dnsNames[0] if dnsNames else fileName))
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuerName or subject)
            .public_key(key.public_key())
            .serial_number(self._nextSerial())
            .not_valid_before(now - _DAY)
            .not_valid_after(notAfter or now + 30 * _DAY)
            .add_extension(x509.BasicConstraints(ca=isCA, path_length=None), critical=True)
        )
        if dnsNames:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName(n) for n in dnsNames]), critical=False
            )
        if isCA:
            builder = builder.add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                critical=True,
            )
        else:
            usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
            builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        certificate = builder.sign(issuerKey, hashes.SHA256())
        pem = certificate.public_bytes(serialization.Encoding.PEM)
        if chain and issuer is not None and issuer is not self.ca:
            pem += issuer.certificate.public_bytes(serialization.Encoding.PEM)
        cert = os.path.join(self.directory, fileName + ".pem")
        keyPath = os.path.join(self.directory, fileName + ".key")
        with open(cert, "wb") as f:
            f.write(pem)
        with open(keyPath, "wb") as f:
            f.write(key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ))
        return Issued(cert, keyPath, certificate, key)

    def _nextSerial(self) -> int:
        self._serial += 1
        return self._serial

    def bundle(self, fileName: str, *others: "PKI") -> str:
        """
        Write C{fileName}: the CA certificates of C{others} then this one's.
        """
        path = os.path.join(self.directory, fileName)
        with open(path, "wb") as f:
            for pki in others + (self,):
                f.write(pki.ca.certificate.public_bytes(serialization.Encoding.PEM))
        return path


class ServerPKI:
    """
    The certificates most tests use: a CA, leaf certificates for
    C{a.example} and C{*.b.example}, a default one, a client certificate.
    """

    def __init__(self, directory: str):
        self.pki = PKI(directory)
        self.default = self.pki.issue("default", ["default.example"])
        self.a = self.pki.issue("a", ["a.example"])
        self.b = self.pki.issue("b", ["*.b.example"])
        self.client = self.pki.issue("client", commonName="alice", client=True)

    def tlsConfig(self, **kwargs) -> ListenerTLSConfig:
        """
        A listener's TLS settings: the default certificate first, then
        C{a.example}'s and C{*.b.example}'s.
        """
        kwargs.setdefault("certificates", (self.default.pair, self.a.pair, self.b.pair))
        return ListenerTLSConfig(**kwargs)


# ---------------------------------------------------------------- clients


@implementer(IOpenSSLClientConnectionCreator)
class ClientTLS:
    """
    A pyOpenSSL client: SNI (text, or raw bytes), trust, versions,
    ciphers, ALPN and a client certificate as a test needs them.

    @ivar connections: the L{SSL.Connection}s made, in order.
    """

    def __init__(self, serverName=None, ca=None, maxVersion=None, minVersion=None,
                 ciphers=None, cert=None, key=None, alpn=None):
        context = SSL.Context(SSL.TLS_METHOD)
        if minVersion is not None:
            context.set_min_proto_version(minVersion)
        if maxVersion is not None:
            context.set_max_proto_version(maxVersion)
        if ciphers is not None:
            context.set_cipher_list(ciphers)
        if ca is not None:
            context.load_verify_locations(ca.encode("utf-8"))
            context.set_verify(SSL.VERIFY_PEER)
        if cert is not None:
            context.use_certificate_chain_file(cert.encode("utf-8"))
            context.use_privatekey_file(key.encode("utf-8"))
        if alpn is not None:
            context.set_alpn_protos(alpn)
        self._context = context
        self._serverName = serverName
        self.connections = []

    def clientConnectionForTLS(self, tlsProtocol):
        connection = SSL.Connection(self._context, None)
        if self._serverName is not None:
            serverName = self._serverName
            if isinstance(serverName, str):
                serverName = serverName.encode("ascii")
            connection.set_tlsext_host_name(serverName)
        self.connections.append(connection)
        return connection


@implementer(IHandshakeListener)
class TLSClient(RawClient):
    """
    A L{RawClient} over TLS that knows when its handshake ended.

    @ivar handshake: fires once the handshake completed, fails with why it
        did not.
    """

    def __init__(self):
        RawClient.__init__(self)
        self.handshake = defer.Deferred()

    def handshakeCompleted(self):
        self.handshake.callback(None)

    def connectionLost(self, reason=None):
        if not self.handshake.called:
            self.handshake.errback(reason)
        RawClient.connectionLost(self, reason)

    def peerCertificate(self) -> x509.Certificate:
        """
        The certificate the server presented.
        """
        return self.transport.getPeerCertificate().to_cryptography()


@defer.inlineCallbacks
def tlsConnect(testCase, port: int, creator: ClientTLS):
    """
    Connect a L{TLSClient} to 127.0.0.1:C{port} and wait for its handshake
    (which may fail); closed at cleanup.
    """
    client = TLSClient()
    endpoint = wrapClientTLS(creator, TCP4ClientEndpoint(reactor, "127.0.0.1", port))
    yield connectProtocol(endpoint, client)

    def close():
        if client.connected:
            client.transport.abortConnection()
            return client.lost

    testCase.addCleanup(close)
    yield client.handshake
    return client


def request(path: bytes = b"/", host: bytes = b"a.example") -> bytes:
    """
    A keep-alive GET.
    """
    return b"GET " + path + b" HTTP/1.1\r\nHost: " + host + b"\r\n\r\n"


# ---------------------------------------------------------------- servers


class EchoTLS(Resource):
    """
    Answers with the request's scheme, then its client certificate's
    subject (or C{-}).
    """

    isLeaf = True

    def render(self, request):
        request.setHeader(b"content-type", b"text/plain")
        subject = tlsClientSubject(request) or "-"
        return f"{request.scheme()} {subject}".encode("utf-8")


@defer.inlineCallbacks
def listenTLS(testCase, serverTLS: ServerTLS, site=None):
    """
    Serve C{site} (default: a L{GolbSite} over L{EchoTLS}) with
    C{serverTLS} on an ephemeral loopback port, through L{tlsEndpoint}, for
    the duration of C{testCase}.

    @return: the listening port.
    """
    if site is None:
        site = GolbSite(EchoTLS(), reactor=reactor)
    _trackProtocols(site)
    listener = ListenerConfig(name="web", endpoint="tcp:0:interface=127.0.0.1")
    port = yield tlsEndpoint(reactor, listener, serverTLS).listen(site)
    testCase.addCleanup(_closeSite, port, site)
    return port


def listenGolbTLS(testCase, yaml: str):
    """
    Build a L{Golb} from C{yaml} and serve its first listener, an HTTPS one,
    on an ephemeral loopback port.

    @return: a Deferred firing with C{(golb, serverTLS, port)}.
    """
    config = parseConfig(yaml, "test.yaml")
    golb = Golb(config, reactor=reactor)
    listener = config.listeners[0]
    serverTLS = ServerTLS(listener.tls, listener.name, reactor)
    site = listenerSite(golb, listener, reactor)
    testCase.addCleanup(golb.close)
    d = listenTLS(testCase, serverTLS, site)
    d.addCallback(lambda port: (golb, serverTLS, port))
    return d


def permissiveServer(testCase, issued: Issued):
    """
    A bare pyOpenSSL server accepting TLS 1.0 and up at security level 0:
    what a client that golb refuses can do elsewhere.

    @return: the listening port.
    """

    @implementer(IOpenSSLServerConnectionCreator)
    class Creator:
        def __init__(self):
            context = SSL.Context(SSL.TLS_METHOD)
            context.set_min_proto_version(SSL.TLS1_VERSION)
            context.set_cipher_list(b"DEFAULT:@SECLEVEL=0")
            context.use_certificate_chain_file(issued.cert.encode("utf-8"))
            context.use_privatekey_file(issued.key.encode("utf-8"))
            self.context = context

        def serverConnectionForTLS(self, tlsProtocol):
            return SSL.Connection(self.context, None)

    site = GolbSite(EchoTLS(), reactor=reactor)
    _trackProtocols(site)
    port = reactor.listenTCP(0, TLSMemoryBIOFactory(Creator(), False, site),
                             interface="127.0.0.1")
    testCase.addCleanup(_closeSite, port, site)
    return port


class TLSTestCase(TestCase):
    """
    Certificates in a temporary directory, made afresh for each test.
    """

    def setUp(self):
        self.certs = ServerPKI(self.mktemp())
        self.pki = self.certs.pki

    def serve(self, **tlsSettings):
        """
        Listen with the L{ServerPKI} certificates and C{tlsSettings}.

        @return: a Deferred firing with C{(serverTLS, port number)}.
        """
        serverTLS = ServerTLS(self.certs.tlsConfig(**tlsSettings), "web", reactor)
        d = listenTLS(self, serverTLS)
        d.addCallback(lambda port: (serverTLS, port.getHost().port))
        return d

    @defer.inlineCallbacks
    def handshakeFails(self, port, creator):
        """
        Assert that a handshake with C{creator} fails.

        @return: the client's failure.
        """
        client = TLSClient()
        endpoint = wrapClientTLS(creator, TCP4ClientEndpoint(reactor, "127.0.0.1", port))
        yield connectProtocol(endpoint, client)
        try:
            yield client.handshake
        except Exception as e:
            yield client.lost
            return e
        client.transport.abortConnection()
        yield client.lost
        self.fail("the handshake succeeded")


# ---------------------------------------------------------------- tests


class SNITests(TLSTestCase):
    """
    A listener with several certificates picks one by the client's SNI name.
    """

    @defer.inlineCallbacks
    def test_exactName(self):
        """
        A client asking for C{a.example} gets C{a.example}'s certificate,
        which it can verify.
        """
        _, port = yield self.serve()
        client = yield tlsConnect(self, port, ClientTLS("a.example", ca=self.pki.ca.cert))
        self.assertEqual(client.peerCertificate(), self.certs.a.certificate)

    @defer.inlineCallbacks
    def test_wildcardName(self):
        """
        A client asking for C{x.b.example} gets the C{*.b.example}
        certificate.
        """
        _, port = yield self.serve()
        client = yield tlsConnect(self, port, ClientTLS("x.b.example", ca=self.pki.ca.cert))
        self.assertEqual(client.peerCertificate(), self.certs.b.certificate)

    @defer.inlineCallbacks
    def test_unknownNameGetsDefault(self):
        """
        A name no certificate has gets the first (default) certificate, not
        an aborted handshake.
        """
        _, port = yield self.serve()
        client = yield tlsConnect(self, port, ClientTLS("c.example"))
        self.assertEqual(client.peerCertificate(), self.certs.default.certificate)

    @defer.inlineCallbacks
    def test_noNameGetsDefault(self):
        """
        A client that sends no SNI gets the default certificate.
        """
        _, port = yield self.serve()
        client = yield tlsConnect(self, port, ClientTLS())
        self.assertEqual(client.peerCertificate(), self.certs.default.certificate)

    def test_wildcardCoversOneLabel(self):
        """
        C{*.b.example} covers C{x.b.example}, and neither C{b.example} nor
        C{y.x.b.example}; exact names win over wildcards and names are
        case-insensitive.
        """
        exact = self.pki.issue("exact", ["x.b.example"])
        serverTLS = ServerTLS(self.certs.tlsConfig(certificates=(
            self.certs.default.pair, self.certs.b.pair, exact.pair,
        )), "web", Clock())
        pick = lambda name: serverTLS.certificateFor(name).leaf  # noqa: E731
        self.assertEqual(pick("z.b.example"), self.certs.b.certificate)
        self.assertEqual(pick("X.B.Example."), exact.certificate)
        self.assertEqual(pick("b.example"), self.certs.default.certificate)
        self.assertEqual(pick("y.x.b.example"), self.certs.default.certificate)
        self.assertEqual(pick(None), self.certs.default.certificate)

    def test_callbackErrorKeepsDefault(self):
        """
        Should choosing a certificate by SNI fail, the connection keeps the
        default certificate (an exception there would abort the handshake)
        and the error is logged.
        """
        class Broken:
            def get_servername(self):
                raise ZeroDivisionError("boom")

        serverTLS = ServerTLS(self.certs.tlsConfig(), "web", Clock())
        serverTLS._current._serverName(Broken())
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    @defer.inlineCallbacks
    def test_oddNameGetsDefault(self):
        """
        An SNI name that is not ASCII gets the default certificate.
        """
        _, port = yield self.serve()
        creator = ClientTLS("\u00e9.b.example".encode("utf-8"))
        client = yield tlsConnect(self, port, creator)
        self.assertEqual(client.peerCertificate(), self.certs.default.certificate)

    @defer.inlineCallbacks
    def test_fullChain(self):
        """
        A certificate issued by an intermediate is sent with the
        intermediates that follow it in its file: a client trusting only the
        root verifies it.
        """
        intermediate = self.pki.issue("intermediate", commonName="golb intermediate",
                                      isCA=True)
        leaf = self.pki.issue("chained", ["chained.example"], issuer=intermediate)
        _, port = yield self.serve(certificates=(self.certs.default.pair, leaf.pair))
        creator = ClientTLS("chained.example", ca=self.pki.ca.cert)
        client = yield tlsConnect(self, port, creator)
        chain = creator.connections[0].get_peer_cert_chain(as_cryptography=True)
        self.assertEqual(chain, [leaf.certificate, intermediate.certificate])
        self.assertEqual(client.peerCertificate(), leaf.certificate)


class VersionAndCipherTests(TLSTestCase):
    """
    TLS 1.2 and up, and only forward-secret AEAD suites with TLS 1.2, unless
    configured otherwise.
    """

    @defer.inlineCallbacks
    def test_tls11Refused(self):
        """
        A TLS 1.1 client is refused by golb, with a protocol version alert
        from golb's side, although that same client (at OpenSSL security
        level 0) completes a TLS 1.1 handshake with a permissive server.
        """
        def creator():
            return ClientTLS(maxVersion=SSL.TLS1_1_VERSION, minVersion=SSL.TLS1_VERSION,
                             ciphers=b"DEFAULT:@SECLEVEL=0")

        permissive = permissiveServer(self, self.certs.default)
        control = creator()
        yield tlsConnect(self, permissive.getHost().port, control)
        self.assertEqual(control.connections[0].get_protocol_version_name(), "TLSv1.1")

        _, port = yield self.serve()
        error = yield self.handshakeFails(port, creator())
        self.assertIn("alert protocol version", str(error))

    @defer.inlineCallbacks
    def test_tls12And13Accepted(self):
        """
        By default, TLS 1.2 and TLS 1.3 clients are served.
        """
        _, port = yield self.serve()
        for version, name in [(SSL.TLS1_2_VERSION, "TLSv1.2"), (SSL.TLS1_3_VERSION, "TLSv1.3")]:
            creator = ClientTLS(maxVersion=version)
            yield tlsConnect(self, port, creator)
            self.assertEqual(creator.connections[0].get_protocol_version_name(), name)

    @defer.inlineCallbacks
    def test_minVersion13(self):
        """
        With C{min_version: "1.3"}, a TLS 1.2 client is refused.
        """
        _, port = yield self.serve(min_version="1.3")
        error = yield self.handshakeFails(port, ClientTLS(maxVersion=SSL.TLS1_2_VERSION))
        self.assertIn("alert protocol version", str(error))

    @defer.inlineCallbacks
    def test_defaultCiphersAreModern(self):
        """
        With TLS 1.2, a client offering only CBC or non-forward-secret suites
        is refused; an ECDHE AEAD suite is negotiated for one that offers
        them among others.
        """
        _, port = yield self.serve()
        for ciphers in [b"ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA384:@SECLEVEL=0",
                        b"AES128-GCM-SHA256:AES256-GCM-SHA384:@SECLEVEL=0"]:
            yield self.handshakeFails(
                port, ClientTLS(maxVersion=SSL.TLS1_2_VERSION, ciphers=ciphers))
        creator = ClientTLS(maxVersion=SSL.TLS1_2_VERSION, ciphers=b"ALL:@SECLEVEL=0")
        yield tlsConnect(self, port, creator)
        cipher = creator.connections[0].get_cipher_name()
        self.assertIn(cipher, DEFAULT_CIPHERS.split(":"))

    @defer.inlineCallbacks
    def test_configuredCiphers(self):
        """
        C{ciphers} replaces the default list for TLS 1.2.
        """
        _, port = yield self.serve(ciphers="ECDHE-ECDSA-AES128-SHA:@SECLEVEL=0")
        creator = ClientTLS(maxVersion=SSL.TLS1_2_VERSION,
                            ciphers=b"ECDHE-ECDSA-AES128-SHA:@SECLEVEL=0")
        yield tlsConnect(self, port, creator)
        self.assertEqual(creator.connections[0].get_cipher_name(), "ECDHE-ECDSA-AES128-SHA")

    def test_unknownCiphers(self):
        """
        A cipher string that matches nothing is refused at startup, naming
        the setting.
        """
        e = self.assertRaises(TLSConfigError, ServerTLS,
                              self.certs.tlsConfig(ciphers="NOPE-NOTHING"), "web", Clock())
        self.assertEqual(len(e.problems), 1)
        self.assertIn("listeners[web].tls.ciphers: 'NOPE-NOTHING' matches no cipher",
                      e.problems[0])


class ALPNTests(TLSTestCase):
    """
    ALPN offers the configured protocols.
    """

    @defer.inlineCallbacks
    def test_http11ByDefault(self):
        """
        A client offering h2 and http/1.1 gets http/1.1 by default.
        """
        _, port = yield self.serve()
        client = yield tlsConnect(self, port, ClientTLS(alpn=[b"h2", b"http/1.1"]))
        self.assertEqual(client.transport.negotiatedProtocol, b"http/1.1")

    @defer.inlineCallbacks
    def test_noCommonProtocol(self):
        """
        A client offering none of the listener's protocols still completes
        its handshake, without ALPN.
        """
        _, port = yield self.serve()
        client = yield tlsConnect(self, port, ClientTLS(alpn=[b"spdy/3"]))
        self.assertIsNone(client.transport.negotiatedProtocol)

    @defer.inlineCallbacks
    def test_configuredOrder(self):
        """
        The listener's first protocol the client offers is chosen.
        """
        _, port = yield self.serve(alpn=("h2", "http/1.1"))
        client = yield tlsConnect(self, port, ClientTLS(alpn=[b"http/1.1", b"h2"]))
        self.assertEqual(client.transport.negotiatedProtocol, b"h2")


class ClientAuthTests(TLSTestCase):
    """
    C{client_auth} asks clients for a certificate signed by its CA.
    """

    @defer.inlineCallbacks
    def test_requiredRefusesWithoutCertificate(self):
        """
        With C{required: true}, a client without a certificate is refused.
        """
        _, port = yield self.serve(client_auth=ClientAuth(self.pki.ca.cert, required=True))
        error = yield self.handshakeFails(port, ClientTLS(maxVersion=SSL.TLS1_2_VERSION))
        self.assertIn("alert handshake failure", str(error))

    @defer.inlineCallbacks
    def test_requiredRefusesWithoutCertificateTLS13(self):
        """
        With TLS 1.3 (where the client finishes first), a client without a
        certificate gets no response: the connection is closed.
        """
        _, port = yield self.serve(client_auth=ClientAuth(self.pki.ca.cert, required=True))
        client = yield tlsConnect(self, port, ClientTLS(maxVersion=SSL.TLS1_3_VERSION))
        client.transport.write(request())
        received = yield client.lost
        self.assertEqual(received, b"")

    @defer.inlineCallbacks
    def test_requiredAcceptsSignedCertificate(self):
        """
        A client certificate signed by the CA is accepted and its subject is
        what L{tlsClientSubject} gives for the client's requests.
        """
        _, port = yield self.serve(client_auth=ClientAuth(self.pki.ca.cert, required=True))
        client = yield tlsConnect(self, port, ClientTLS(
            cert=self.certs.client.cert, key=self.certs.client.key))
        client.transport.write(request())
        data = yield client.waitFor(lambda data: len(parseResponses(data)) == 1)
        [(status, _, body)] = parseResponses(data)
        self.assertEqual((status, body), (200, b"https CN=alice,O=golb tests"))

    @defer.inlineCallbacks
    def test_refusesOtherCA(self):
        """
        A client certificate from another CA is refused, even when client
        certificates are optional.
        """
        other = PKI(os.path.join(self.pki.directory, "other"), "other CA")
        stranger = other.issue("stranger", commonName="mallory", client=True)
        _, port = yield self.serve(client_auth=ClientAuth(self.pki.ca.cert, required=False))
        error = yield self.handshakeFails(port, ClientTLS(
            maxVersion=SSL.TLS1_2_VERSION, cert=stranger.cert, key=stranger.key))
        self.assertIn("alert unknown ca", str(error))

    @defer.inlineCallbacks
    def test_optional(self):
        """
        With C{required: false}, a client without a certificate is served
        (no subject) and one with a certificate is verified (its subject).
        """
        _, port = yield self.serve(client_auth=ClientAuth(self.pki.ca.cert, required=False))
        anonymous = yield tlsConnect(self, port, ClientTLS())
        known = yield tlsConnect(self, port, ClientTLS(
            cert=self.certs.client.cert, key=self.certs.client.key))
        bodies = []
        for client in (anonymous, known):
            client.transport.write(request())
            data = yield client.waitFor(lambda data: len(parseResponses(data)) == 1)
            bodies.append(parseResponses(data)[0][2])
        self.assertEqual(bodies, [b"https -", b"https CN=alice,O=golb tests"])

    def test_clientSubjectOnPlainConnection(self):
        """
        L{tlsClientSubject} is L{None} for a request on a plain connection.
        """
        from twisted.web.test.requesthelper import DummyRequest

        self.assertIsNone(tlsClientSubject(DummyRequest([b""])))


class _StdlibClient(Protocol):
    """
    A TLS client over the standard library's L{ssl} memory BIOs, which tell
    whether a session was resumed.  It sends one request and reads its
    response (TLS 1.3 session tickets arrive after the handshake).

    @ivar done: fires with the L{ssl.SSLObject} once the response arrived.
    """

    def __init__(self, context, session=None):
        self._in = stdlibssl.MemoryBIO()
        self._out = stdlibssl.MemoryBIO()
        self.tls = context.wrap_bio(self._in, self._out, server_hostname="a.example",
                                    session=session)
        self.done = defer.Deferred()
        self.lost = defer.Deferred()
        self._handshaken = False
        self._received = b""

    def connectionMade(self):
        self._step()

    def dataReceived(self, data):
        self._in.write(data)
        self._step()

    def _step(self):
        try:
            if not self._handshaken:
                self.tls.do_handshake()
                self._handshaken = True
                self.tls.write(request())
            while True:
                self._received += self.tls.read(65536)
                if parseResponses(self._received) and not self.done.called:
                    self.done.callback(self.tls)
        except (stdlibssl.SSLWantReadError, stdlibssl.SSLZeroReturnError):
            pass
        except stdlibssl.SSLError as e:
            if not self.done.called:
                self.done.errback(e)
        pending = self._out.read()
        if pending:
            self.transport.write(pending)

    def close(self):
        """
        Close the connection properly (close_notify both ways, so that the
        server may keep the session).

        @return: a Deferred firing once the connection is closed.
        """
        try:
            self.tls.unwrap()
        except stdlibssl.SSLError:
            pass
        self.transport.write(self._out.read())
        return self.lost

    def connectionLost(self, reason=None):
        if not self.done.called:
            self.done.errback(reason)
        self.lost.callback(None)


class SessionResumptionTests(TLSTestCase):
    """
    Returning clients resume their TLS session, from a session ticket or
    from the server's session cache.
    """

    @defer.inlineCallbacks
    def resumes(self, port, configure):
        context = stdlibssl.SSLContext(stdlibssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(self.pki.ca.cert)
        configure(context)
        session = None
        reused = []
        for _ in range(2):
            client = _StdlibClient(context, session)
            yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
            tls = yield client.done
            reused.append(tls.session_reused)
            session = tls.session
            yield client.close()
        return reused

    @defer.inlineCallbacks
    def test_tls13Ticket(self):
        """
        A TLS 1.3 client resumes with its session ticket.
        """
        _, port = yield self.serve()
        reused = yield self.resumes(port, lambda context: None)
        self.assertEqual(reused, [False, True])

    @defer.inlineCallbacks
    def test_tls12SessionCache(self):
        """
        A TLS 1.2 client that does not take tickets resumes from the
        session cache, by session id.
        """
        _, port = yield self.serve()

        def configure(context):
            context.maximum_version = stdlibssl.TLSVersion.TLSv1_2
            context.options |= stdlibssl.OP_NO_TICKET

        reused = yield self.resumes(port, configure)
        self.assertEqual(reused, [False, True])

    @defer.inlineCallbacks
    def test_resumedClientKeepsSubject(self):
        """
        A client resuming a session that was authenticated with a client
        certificate keeps its subject.
        """
        _, port = yield self.serve(client_auth=ClientAuth(self.pki.ca.cert, required=True))
        client = self.certs.client
        context = stdlibssl.SSLContext(stdlibssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(self.pki.ca.cert)
        context.load_cert_chain(client.cert, client.key)
        context.maximum_version = stdlibssl.TLSVersion.TLSv1_2
        session = None
        for expectReused in (False, True):
            stdlib = _StdlibClient(context, session)
            yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), stdlib)
            tls = yield stdlib.done
            self.assertEqual(tls.session_reused, expectReused)
            self.assertEqual(parseResponses(stdlib._received)[0][2],
                             b"https CN=alice,O=golb tests")
            session = tls.session
            yield stdlib.close()


class LoadingTests(SynchronousTestCase):
    """
    Files that cannot serve are refused at startup, one line each, naming
    the file and the fix.
    """

    def setUp(self):
        self.certs = ServerPKI(self.mktemp())

    def problems(self, *pairs, **settings):
        settings.setdefault("certificates", pairs)
        e = self.assertRaises(TLSConfigError, ServerTLS,
                              self.certs.tlsConfig(**settings), "web", Clock())
        for problem in e.problems:
            self.assertNotIn("\n", problem)
        return e.problems

    def test_encryptedKey(self):
        """
        An encrypted key is refused with its path and how to decrypt it.
        """
        key = self.certs.a.privateKey.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
        path = self.certs.a.key + ".enc"
        with open(path, "wb") as f:
            f.write(key)
        [problem] = self.problems(CertificatePair(self.certs.a.cert, path))
        self.assertTrue(problem.startswith(
            f"listeners[web].tls.certificates[0].key: {path} is encrypted"))
        self.assertIn(f"openssl pkey -in {path}", problem)

    def test_keyMismatch(self):
        """
        A key that is not the certificate's is refused.
        """
        [problem] = self.problems(self.certs.default.pair,
                                  CertificatePair(self.certs.a.cert, self.certs.b.key))
        self.assertIn(f"certificates[1].key: {self.certs.b.key} is not the key of the "
                      f"certificate in {self.certs.a.cert}", problem)

    def test_missingAndBrokenFiles(self):
        """
        Every broken file is reported, each on its own line.
        """
        broken = self.certs.a.cert + ".broken"
        with open(broken, "wb") as f:
            f.write(b"not a certificate\n")
        problems = self.problems(
            CertificatePair("/nonexistent/cert.pem", self.certs.a.key),
            CertificatePair(broken, self.certs.a.key),
            CertificatePair(self.certs.b.cert, "/nonexistent/b.key"),
            client_auth=ClientAuth("/nonexistent/ca.pem"),
        )
        self.assertEqual(len(problems), 4)
        self.assertIn("client_auth.ca: /nonexistent/ca.pem: no such file", problems[0])
        self.assertIn("certificates[0].cert: /nonexistent/cert.pem: no such file", problems[1])
        self.assertIn(f"certificates[1].cert: {broken}: no PEM certificate", problems[2])
        self.assertIn("certificates[2].key: /nonexistent/b.key: no such file", problems[3])

    def test_problemsWithoutReactor(self):
        """
        L{listenerTLSProblems} lists the same problems without a reactor,
        and none for usable files.
        """
        self.assertEqual(listenerTLSProblems(self.certs.tlsConfig(), "web"), [])
        problems = listenerTLSProblems(self.certs.tlsConfig(certificates=(
            CertificatePair(self.certs.a.cert, "/nonexistent/a.key"),)), "web")
        self.assertEqual(problems, [
            "listeners[web].tls.certificates[0].key: /nonexistent/a.key: no such file or "
            "directory; give the certificate's unencrypted PEM key"
        ])

    def test_certificateExpiries(self):
        """
        L{ServerTLS.certificateExpiries} tells each certificate's seconds
        left, named by its first DNS name.
        """
        notAfter = datetime.datetime(2031, 1, 2, tzinfo=datetime.timezone.utc)
        soon = self.certs.pki.issue("soon", ["soon.example"], notAfter=notAfter)
        clock = Clock()
        clock.advance(notAfter.timestamp() - 3600)
        serverTLS = ServerTLS(self.certs.tlsConfig(
            certificates=(soon.pair, self.certs.client.pair)), "web", clock)
        expiries = serverTLS.certificateExpiries()
        self.assertEqual(expiries[0], ("web", "soon.example", 3600.0))
        self.assertEqual(expiries[1][:2], ("web", "alice"))
        self.assertEqual(serverTLS.certificateExpiries(notAfter.timestamp() + 5)[0][2], -5.0)

    def test_certificateExpiryLabelsUnique(self):
        """
        Two certificates with the same name (an ECDSA and an RSA one, say)
        are told apart in L{ServerTLS.certificateExpiries}.
        """
        again = self.certs.pki.issue("again", ["default.example"])
        serverTLS = ServerTLS(self.certs.tlsConfig(
            certificates=(self.certs.default.pair, again.pair)), "web", Clock())
        self.assertEqual([label for _, label, _ in serverTLS.certificateExpiries()],
                         ["default.example", "default.example (2)"])

    def test_connectionCreator(self):
        """
        L{ServerTLS} is an C{IOpenSSLServerConnectionCreator}.
        """
        serverTLS = ServerTLS(self.certs.tlsConfig(), "web", Clock())
        self.assertTrue(verifyObject(IOpenSSLServerConnectionCreator, serverTLS))


def _replace(source: Issued, target: Issued) -> None:
    """
    Copy C{source}'s files over C{target}'s.
    """
    for fromPath, toPath in [(source.cert, target.cert), (source.key, target.key)]:
        with open(fromPath, "rb") as f:
            data = f.read()
        with open(toPath, "wb") as f:
            f.write(data)


class ReloadTests(TLSTestCase):
    """
    Reloading picks up changed certificate files for new handshakes and
    keeps open connections; broken files change nothing.
    """

    def setUp(self):
        TLSTestCase.setUp(self)
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def logged(self, text):
        from twisted.logger import formatEvent

        return [formatEvent(e) for e in self.events if text in formatEvent(e)]

    @defer.inlineCallbacks
    def test_reloadKeepsOpenConnections(self):
        """
        After a reload, new connections get the new certificate, while a
        keep-alive connection made before it goes on serving requests with
        the old one.
        """
        backend, _ = listenBackend(self)
        self.certs.tlsConfig()
        golb, serverTLS, port = yield listenGolbTLS(self, f"""
listeners:
  - name: web
    address: "127.0.0.1:0"
    tls:
      certificates:
        - {{cert: "{self.certs.a.cert}", key: "{self.certs.a.key}"}}
backend_pools:
  - name: default
    backends: [{{url: "http://127.0.0.1:{backend.getHost().port}"}}]
""")
        port = port.getHost().port
        creator = ClientTLS("a.example", ca=self.pki.ca.cert)
        old = yield tlsConnect(self, port, creator)
        old.transport.write(request())
        yield old.waitFor(lambda data: len(parseResponses(data)) == 1)

        renewed = self.pki.issue("renewed", ["a.example"])
        _replace(renewed, self.certs.a)
        self.assertTrue(serverTLS.reload())

        new = yield tlsConnect(self, port, ClientTLS("a.example", ca=self.pki.ca.cert))
        self.assertEqual(new.peerCertificate(), renewed.certificate)

        old.transport.write(request(b"/again"))
        data = yield old.waitFor(lambda data: len(parseResponses(data)) == 2)
        responses = parseResponses(data)
        self.assertEqual([status for status, _, _ in responses], [200, 200])
        self.assertIn(b"GET /again HTTP/1.1", responses[1][2])
        self.assertIn(b"x-forwarded-proto: https", responses[1][2].lower())
        self.assertEqual(old.peerCertificate(), self.certs.a.certificate)
        self.assertEqual(len(self.logged("certificates reloaded: a.example")), 1)

    @defer.inlineCallbacks
    def test_brokenFileKeepsOldCertificate(self):
        """
        When a changed file is broken, the reload fails, says why, and new
        connections still get the old certificate.
        """
        serverTLS, port = yield self.serve()
        with open(self.certs.a.key, "wb") as f:
            f.write(b"-----BEGIN PRIVATE KEY-----\ntruncated")
        self.assertFalse(serverTLS.reload())
        self.assertEqual(serverTLS.reloadFailures, 1)
        [line] = self.logged("certificates not reloaded")
        self.assertIn(f"{self.certs.a.key}: not a PEM private key", line)
        client = yield tlsConnect(self, port, ClientTLS("a.example", ca=self.pki.ca.cert))
        self.assertEqual(client.peerCertificate(), self.certs.a.certificate)

    def test_reloadInterval(self):
        """
        With C{reload_interval}, changed files are picked up on the next
        check; unchanged files are not read again.
        """
        clock = Clock()
        serverTLS = ServerTLS(self.certs.tlsConfig(reload_interval=30.0), "web", clock)
        service = CertificateReloadService(serverTLS)
        self.assertEqual(service.name, "tls:web")
        service.startService()
        clock.advance(30)
        self.assertEqual(serverTLS.reloads, 0)

        renewed = self.pki.issue("renewed", ["default.example"])
        _replace(renewed, self.certs.default)
        for path in (self.certs.default.cert, self.certs.default.key):
            os.utime(path, (1000000000, 1000000000))
        clock.advance(29)
        self.assertEqual(serverTLS.certificates[0].leaf, self.certs.default.certificate)
        clock.advance(1)
        self.assertEqual(serverTLS.reloads, 1)
        self.assertEqual(serverTLS.certificates[0].leaf, renewed.certificate)

        clock.advance(30)
        self.assertEqual(serverTLS.reloads, 1)
        service.stopService()
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_brokenFileLoggedOnce(self):
        """
        A broken file is reported once, not at every check, and picked up
        once it is fixed.
        """
        clock = Clock()
        serverTLS = ServerTLS(self.certs.tlsConfig(reload_interval=10.0), "web", clock)
        serverTLS.startReloading()
        self.addCleanup(serverTLS.stopReloading)
        with open(self.certs.b.cert, "wb") as f:
            f.write(b"garbage")
        clock.advance(10)
        clock.advance(10)
        self.assertEqual(serverTLS.reloadFailures, 1)
        self.assertEqual(len(self.logged("certificates not reloaded")), 1)
        renewed = self.pki.issue("renewed", ["*.b.example"])
        _replace(renewed, self.certs.b)
        clock.advance(10)
        self.assertEqual(serverTLS.reloads, 1)
        self.assertIsNone(serverTLS.lastError)
        self.assertEqual(serverTLS.certificateFor("x.b.example").leaf, renewed.certificate)

    def test_noIntervalNoTimer(self):
        """
        Without C{reload_interval}, nothing is scheduled.
        """
        clock = Clock()
        service = CertificateReloadService(ServerTLS(self.certs.tlsConfig(), "web", clock))
        service.startService()
        self.assertEqual(clock.getDelayedCalls(), [])
        service.stopService()


class HTTPSListenerTests(TLSTestCase):
    """
    A whole golb behind an HTTPS listener.
    """

    @defer.inlineCallbacks
    def test_proxiesOverTLS(self):
        """
        Requests over TLS are routed to the backend, which is told the
        scheme was https.
        """
        backend, _ = listenBackend(self)
        _, _, port = yield listenGolbTLS(self, f"""
listeners:
  - name: web
    address: "127.0.0.1:0"
    tls:
      certificates:
        - {{cert: "{self.certs.default.cert}", key: "{self.certs.default.key}"}}
        - {{cert: "{self.certs.a.cert}", key: "{self.certs.a.key}"}}
backend_pools:
  - name: default
    backends: [{{url: "http://127.0.0.1:{backend.getHost().port}"}}]
""")
        client = yield tlsConnect(self, port.getHost().port,
                                  ClientTLS("a.example", ca=self.pki.ca.cert))
        client.transport.write(request(b"/x?y=1"))
        data = yield client.waitFor(lambda data: len(parseResponses(data)) == 1)
        [(status, headers, body)] = parseResponses(data)
        self.assertEqual(status, 200)
        self.assertIn(b"GET /x?y=1 HTTP/1.1", body)
        self.assertIn(b"x-forwarded-proto: https", body.lower())


class HTTPSRedirectTests(TestCase):
    """
    L{HTTPSRedirect} answers every request of a plain listener with a 308 to
    https.
    """

    def listen(self, port):
        site = GolbSite(HTTPSRedirect(port), reactor=reactor)
        _trackProtocols(site)
        listening = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(_closeSite, listening, site)
        return listening.getHost().port

    @defer.inlineCallbacks
    def redirect(self, port, data):
        """
        Send C{data} with C{Connection: close}.

        @return: the response's status, C{Location} values and body.
        """
        data = data.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1)
        raw = yield rawRequest(self, self.listen(port), data)
        [(status, headers, body)] = parseResponses(raw)
        return status, header(headers, b"location"), body

    @defer.inlineCallbacks
    def test_samePathAndQuery(self):
        """
        The redirect keeps the host (without its port), path and query, on
        the HTTPS port.
        """
        status, location, _ = yield self.redirect(
            8443, b"GET /a/b?c=d&e HTTP/1.1\r\nHost: example.com:8080\r\n\r\n")
        self.assertEqual((status, location), (308, [b"https://example.com:8443/a/b?c=d&e"]))

    @defer.inlineCallbacks
    def test_port443Omitted(self):
        """
        Port 443 is left out of the URL; POST is redirected too (308 keeps
        the method).
        """
        status, location, _ = yield self.redirect(
            443, b"POST /form HTTP/1.1\r\nHost: example.com\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual((status, location), (308, [b"https://example.com/form"]))

    @defer.inlineCallbacks
    def test_ipv6Host(self):
        """
        An IPv6 literal keeps its brackets.
        """
        status, location, _ = yield self.redirect(
            8443, b"GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n")
        self.assertEqual((status, location), (308, [b"https://[::1]:8443/"]))

    @defer.inlineCallbacks
    def test_badHost(self):
        """
        A Host that is not a name or an address gets a 400, not a redirect
        elsewhere.
        """
        status, location, _ = yield self.redirect(
            443, b"GET / HTTP/1.1\r\nHost: evil.example/x?\r\n\r\n")
        self.assertEqual((status, location), (400, []))


class ClientSubjectTests(TLSTestCase):
    """
    The verified client certificate's subject reaches headers policies and
    the access log.
    """

    @defer.inlineCallbacks
    def test_headerAndAccessLog(self):
        """
        With client certificates required, a C{headers} policy can pass the
        subject to the backend with C{{tls_client_subject}} (replacing any
        value the client sent), and the JSON access log records it.
        """
        from golb.observe.logs import AccessLogObserver

        backend, _ = listenBackend(self)
        golb, serverTLS, port = yield listenGolbTLS(self, f"""
listeners:
  - name: web
    address: "127.0.0.1:0"
    tls:
      certificates:
        - {{cert: "{self.certs.a.cert}", key: "{self.certs.a.key}"}}
      client_auth: {{ca: "{self.pki.ca.cert}", required: true}}
backend_pools:
  - name: default
    backends: [{{url: "http://127.0.0.1:{backend.getHost().port}"}}]
policies:
  - headers: {{request: {{set: {{X-Client-Subject: "{{tls_client_subject}}"}}}}}}
""")
        lines = []
        golb.observatory.add(AccessLogObserver(lines.append, "json", reactor))
        client = yield tlsConnect(self, port.getHost().port, ClientTLS(
            "a.example", ca=self.pki.ca.cert, cert=self.certs.client.cert,
            key=self.certs.client.key))
        client.transport.write(request(b"/who")[:-2] + b"X-Client-Subject: CN=forged\r\n\r\n")
        data = yield client.waitFor(lambda data: len(parseResponses(data)) == 1)
        [(status, _, body)] = parseResponses(data)
        self.assertEqual(status, 200)
        self.assertIn(b"X-Client-Subject: CN=alice,O=golb tests", body)
        self.assertNotIn(b"forged", body)
        import json

        [line] = [json.loads(line) for line in lines]
        self.assertEqual(line["tls_client"], "CN=alice,O=golb tests")


class CertificateMetricsTests(TLSTestCase):
    """
    The metrics show each HTTPS certificate's time left and its reloads.
    """

    def test_expiry(self):
        """
        C{golb_tls_certificate_expiry_seconds} gives, per listener and
        certificate, the seconds until notAfter; reloads are counted.
        """
        from golb.observe.metrics import Metrics
        from golb.test.test_metrics import value

        serverTLS = ServerTLS(self.certs.tlsConfig(), "web", reactor)

        class Site:
            openConnections = ()

        site = Site()
        site.serverTLS = serverTLS
        golb = Golb(parseConfig("""
listeners: [{name: web, address: "127.0.0.1:0"}]
backend_pools: [{name: default, backends: [{url: "http://127.0.0.1:1"}]}]
""", "t.yaml"), reactor=reactor, upstreamFactory=lambda b, p, c: None)
        metrics = Metrics(golb, reactor)
        metrics.sites["web"] = site
        serverTLS.reload()
        text = metrics.exposition()[0].decode("utf-8")
        left = value(text, "golb_tls_certificate_expiry_seconds", listener="web",
                     certificate="a.example")
        notAfter = self.certs.a.certificate.not_valid_after_utc.timestamp()
        self.assertLess(abs(left - (notAfter - time.time())), 60)
        self.assertEqual(value(text, "golb_tls_certificate_reloads_total", listener="web",
                               result="success"), 1)
