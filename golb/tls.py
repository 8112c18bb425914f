"""
TLS for golb, both ways.

Listeners: L{ServerTLS} (from L{golb._tlsserver}) serves a listener's
C{tls:} section: certificates chosen by SNI, TLS 1.2+ with modern ciphers,
ALPN, client certificates, session resumption and certificate reloads.
L{tlsEndpoint} listens with it; L{CertificateReloadService} runs its
C{reload_interval} checks; L{tlsClientSubject} tells policies, headers and
logs who a verified client certificate names.  L{HTTPSRedirect} answers
every request of a plain listener with C{redirect_to_https}.

Backends: L{upstreamCreator} verifies https backends with service-identity
through L{twisted.internet.ssl.optionsForClientTLS}: on by default, against
the system's trust store or the pool's C{tls.ca} (every certificate of it).
"""

import re
from typing import Optional

from OpenSSL import SSL
from twisted.application.service import Service
from twisted.internet import ssl
from twisted.internet.interfaces import (
    ILoggingContext,
    IOpenSSLClientConnectionCreator,
    IProtocolFactory,
    ISSLTransport,
    IStreamServerEndpoint,
)
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.web.resource import Resource
from zope.interface import implementer

from golb._tlsserver import (
    DEFAULT_CIPHERS,
    LoadedCertificate,
    ServerTLS,
    TLSConfigError,
    certificateNames,
    listenerTLSProblems,
    loadPEMCertificates,
    pemBlocks,
    serverTLSFactory,
)

__all__ = [
    "DEFAULT_CIPHERS",
    "CertificateReloadService",
    "HTTPSRedirect",
    "LoadedCertificate",
    "ServerTLS",
    "TLSConfigError",
    "TLSServerEndpoint",
    "certificateNames",
    "listenerTLSProblems",
    "loadPEMCertificates",
    "serverTLSFactory",
    "tlsClientCertificate",
    "tlsClientSubject",
    "tlsEndpoint",
    "trustRootFromFile",
    "upstreamCreator",
]


# ---------------------------------------------------------------- listeners


@implementer(IStreamServerEndpoint)
class TLSServerEndpoint:
    """
    A server endpoint serving TLS over another (TCP, UNIX...) one.
    """

    def __init__(self, wrapped, serverTLS, clock=None):
        """
        @param wrapped: the plain L{IStreamServerEndpoint}.
        @param serverTLS: the L{ServerTLS} (or any
            L{twisted.internet.interfaces.IOpenSSLServerConnectionCreator}).
        @param clock: an C{IReactorTime} for the TLS write buffering (the
            global reactor when L{None}).
        """
        self._wrapped = wrapped
        self._serverTLS = serverTLS
        self._clock = clock

    def listen(self, protocolFactory):
        """
        Listen on the wrapped endpoint with TLS around C{protocolFactory}.
        """
        return self._wrapped.listen(TLSMemoryBIOFactory(
            self._serverTLS, False, _OwnALPN(protocolFactory), clock=self._clock
        ))


@implementer(IProtocolFactory, ILoggingContext)
class _OwnALPN:
    """
    A factory passing everything to C{factory} but hiding whether it offers
    protocols to negotiate: Twisted (before 26) would otherwise replace the
    listener's ALPN choice with the site's own (C{h2} when the C{h2} package
    is installed), on every context.
    """

    def __init__(self, factory):
        self._factory = factory

    def buildProtocol(self, addr):
        return self._factory.buildProtocol(addr)

    def doStart(self):
        self._factory.doStart()

    def doStop(self):
        self._factory.doStop()

    def logPrefix(self):
        prefix = getattr(self._factory, "logPrefix", None)
        return prefix() if prefix is not None else self._factory.__class__.__name__


def tlsEndpoint(reactor, listenerConfig, serverTLS) -> TLSServerEndpoint:
    """
    The endpoint an HTTPS listener listens with: its C{endpoint} (else its
    C{address}) as a plain server endpoint (C{tcp:}, C{tcp6:}, C{unix:}),
    with C{serverTLS} on top.
    """
    from twisted.internet.endpoints import serverFromString

    plain = serverFromString(reactor, listenerConfig.endpointDescription())
    return TLSServerEndpoint(plain, serverTLS, reactor)


class CertificateReloadService(Service):
    """
    Runs a listener's C{reload_interval} checks while golb runs (named
    C{tls:<listener>}).

    @ivar serverTLS: the L{ServerTLS} whose files are checked.
    """

    def __init__(self, serverTLS):
        self.serverTLS = serverTLS
        self.setName(f"tls:{serverTLS.listenerName}")

    def startService(self):
        Service.startService(self)
        self.serverTLS.startReloading()

    def stopService(self):
        self.serverTLS.stopReloading()
        return Service.stopService(self)


_NOT_YET = object()


def tlsClientCertificate(request):
    """
    The client certificate of C{request}'s connection, verified against the
    listener's C{client_auth.ca} during the handshake.

    @return: a L{cryptography.x509.Certificate}, or L{None} on a plain
        connection or when the client sent none.
    """
    transport = getattr(getattr(request, "channel", None), "transport", None)
    if transport is None or not ISSLTransport.providedBy(transport):
        return None
    cached = getattr(transport, "_golbClientCertificate", _NOT_YET)
    if cached is not _NOT_YET:
        return cached
    try:
        peer = transport.getPeerCertificate()
        certificate = None if peer is None else peer.to_cryptography()
    except Exception:
        certificate = None
    # Renegotiation is off: a connection's client certificate never changes.
    transport._golbClientCertificate = certificate
    return certificate


def tlsClientSubject(request) -> Optional[str]:
    """
    The subject of C{request}'s verified client certificate as an RFC 4514
    string, most specific part first (e.g. C{CN=alice,O=Example}).

    @return: the subject, or L{None} without a client certificate.
    """
    certificate = tlsClientCertificate(request)
    if certificate is None:
        return None
    return certificate.subject.rfc4514_string()


_HOST = re.compile(rb"[A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\]")


class HTTPSRedirect(Resource):
    """
    The root of a plain listener with C{redirect_to_https}: every request,
    whatever its method, is answered with a 308 to the same host, path and
    query on https, on port C{port} (left out of the URL when 443).

    @ivar port: the HTTPS port.
    """

    isLeaf = True

    def __init__(self, port: int):
        Resource.__init__(self)
        self.port = port
        self._suffix = b"" if port == 443 else b":%d" % (port,)

    def render(self, request):
        """
        Answer 308 with C{Location: https://HOST[:PORT]/path?query}; a Host
        that is not a name or an address gets a 400.
        """
        from golb.errors import GolbError, renderError
        from golb.policies.headers import requestHost

        observatory = getattr(request, "observatory", None)
        if observatory is not None and observatory.active:
            observatory.requestStarted(request)
        host = requestHost(request)
        if not _HOST.fullmatch(host):
            renderError(request, GolbError("bad-request", "The Host header is invalid."))
            return b""
        target = request.uri if request.uri.startswith(b"/") else b"/"
        location = b"https://" + host + self._suffix + target
        body = b"Moved to " + location + b"\n"
        request.setResponseCode(308)
        request.setHeader(b"location", location)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"content-length", b"%d" % (len(body),))
        return body


# ---------------------------------------------------------------- backends


def trustRootFromFile(path: str):
    """
    An C{IOpenSSLTrustRoot} trusting every certificate of the PEM file
    C{path} (a CA bundle may hold many).

    @raise TLSConfigError: the file cannot be read or holds no certificate.
    """
    try:
        with open(path, "rb") as f:
            blocks = pemBlocks(f.read())
        if not blocks:
            raise ValueError("no PEM certificate in it (expected -----BEGIN CERTIFICATE-----)")
        certificates = [ssl.Certificate.loadPEM(block) for block in blocks]
    except (OSError, ValueError, SSL.Error) as e:
        reason = e.strerror.lower() if isinstance(e, OSError) and e.strerror else str(e)
        raise TLSConfigError([f"tls.ca: {path}: {reason}"]) from None
    return ssl.trustRootFromCertificates(certificates)


def upstreamCreator(backend, tlsConfig, alpn=()):
    """
    The L{IOpenSSLClientConnectionCreator} for an https backend: SNI and
    verification against C{tls.server_name} (else the backend's host),
    trusting C{tls.ca} (else the system), with C{tls.cert}/C{tls.key} as
    client certificate when set.

    @param backend: the L{golb.pool.Backend}.
    @param tlsConfig: its pool's L{golb.config.UpstreamTLSConfig}.
    @param alpn: protocols to offer with ALPN (C{[b"h2"]} for h2 pools).
    """
    serverName = tlsConfig.server_name or backend.host
    if tlsConfig.ca:
        trustRoot = trustRootFromFile(tlsConfig.ca)
    else:
        trustRoot = ssl.platformTrust()
    clientCertificate = None
    if tlsConfig.cert:
        with open(tlsConfig.cert, "rb") as f:
            certPEM = f.read()
        with open(tlsConfig.key, "rb") as f:
            keyPEM = f.read()
        clientCertificate = ssl.PrivateCertificate.loadPEM(certPEM + b"\n" + keyPEM)
    if not tlsConfig.verify:
        return _Unverified(serverName, clientCertificate, alpn)
    return ssl.optionsForClientTLS(
        serverName, trustRoot=trustRoot, clientCertificate=clientCertificate,
        acceptableProtocols=list(alpn) or None,
    )


@implementer(IOpenSSLClientConnectionCreator)
class _Unverified:
    """
    Sends SNI (and a client certificate when configured) but does not verify
    the backend's certificate: C{tls.verify: false}.
    """

    def __init__(self, serverName: str, clientCertificate=None, alpn=()):
        options = ssl.CertificateOptions(
            verify=False,
            privateKey=clientCertificate.privateKey.original if clientCertificate else None,
            certificate=clientCertificate.original if clientCertificate else None,
            acceptableProtocols=list(alpn) or None,
        )
        self._context = options.getContext()
        self._serverName = serverName.encode("idna")

    def clientConnectionForTLS(self, tlsProtocol):
        connection = SSL.Connection(self._context, None)
        connection.set_app_data(tlsProtocol)
        connection.set_tlsext_host_name(self._serverName)
        connection.set_connect_state()
        return connection

