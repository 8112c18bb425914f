"""
TLS for golb: client connection creators toward https backends.

Upstream verification uses service-identity through
L{twisted.internet.ssl.optionsForClientTLS}: on by default, against the
system's trust store or the pool's C{tls.ca}.
"""

from OpenSSL import SSL
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from zope.interface import implementer

__all__ = ["upstreamCreator"]


def upstreamCreator(backend, tlsConfig):
    """
    The L{IOpenSSLClientConnectionCreator} for an https backend.

    @param backend: the L{golb.pool.Backend}.
    @param tlsConfig: its pool's L{golb.config.UpstreamTLSConfig}.
    """
    serverName = tlsConfig.server_name or backend.host
    if tlsConfig.ca:
        with open(tlsConfig.ca, "rb") as f:
            trustRoot = ssl.Certificate.loadPEM(f.read())
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
        return _Unverified(serverName, clientCertificate)
    return ssl.optionsForClientTLS(
        serverName, trustRoot=trustRoot, clientCertificate=clientCertificate
    )


@implementer(IOpenSSLClientConnectionCreator)
class _Unverified:
    """
    Sends SNI (and a client certificate when configured) but does not verify
    the backend's certificate: C{tls.verify: false}.
    """

    def __init__(self, serverName: str, clientCertificate=None):
        options = ssl.CertificateOptions(
            verify=False,
            privateKey=clientCertificate.privateKey.original if clientCertificate else None,
            certificate=clientCertificate.original if clientCertificate else None,
        )
        self._context = options.getContext()
        self._serverName = serverName.encode("idna")

    def clientConnectionForTLS(self, tlsProtocol):
        connection = SSL.Connection(self._context, None)
        connection.set_app_data(tlsProtocol)
        connection.set_tlsext_host_name(self._serverName)
        connection.set_connect_state()
        return connection
