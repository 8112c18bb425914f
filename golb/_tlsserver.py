"""
The server side of golb's TLS: HTTPS listeners.

L{ServerTLS} turns a listener's C{tls:} section into TLS connections.  It
builds one pyOpenSSL context per certificate, all alike but for the
certificate and its key.  Every connection starts on the default context
(the first certificate); the client's SNI name then switches it to the
context whose certificate names it (exact names first, then wildcards).  An
unknown or missing name keeps the default: the handshake never fails on a
name.

The certificate files are read whole when the listener is built, and again
on L{ServerTLS.reload} (SIGHUP) or when C{reload_interval} notices a changed
file.  Only new handshakes see the new certificates; open connections keep
theirs.  A broken new file changes nothing; the reason is logged.
"""

import hashlib
import os
import time
from typing import Dict, List, Optional, Sequence, Tuple

import attr
from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from cryptography.x509.oid import ExtensionOID, NameOID
from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

__all__ = [
    "DEFAULT_CIPHERS",
    "LoadedCertificate",
    "ServerTLS",
    "TLSConfigError",
    "certificateNames",
    "listenerTLSProblems",
    "loadPEMCertificates",
    "pemBlocks",
    "serverTLSFactory",
]

# TLS 1.2 suites: forward secret (ECDHE) and AEAD only, the ECDHE part of
# Mozilla's "intermediate" list.  TLS 1.3 suites are all AEAD already.
DEFAULT_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
)

_VERSIONS = {"1.2": SSL.TLS1_2_VERSION, "1.3": SSL.TLS1_3_VERSION}

_OPTIONS = (
    SSL.OP_NO_COMPRESSION
    | SSL.OP_CIPHER_SERVER_PREFERENCE
    | SSL.OP_SINGLE_ECDH_USE
    | getattr(SSL, "OP_NO_RENEGOTIATION", 0)
)


class TLSConfigError(Exception):
    """
    A listener's certificates cannot be used.

    @ivar problems: one line per problem, each naming the file and the fix.
    """

    def __init__(self, problems: Sequence[str]):
        self.problems = list(problems)
        Exception.__init__(self, "\n".join(self.problems))


@attr.s(frozen=True, auto_attribs=True)
class LoadedCertificate:
    """
    One certificate as a listener serves it.

    @ivar cert: the certificate (chain) file.
    @ivar key: its private key file.
    @ivar leaf: the certificate itself (the first one in C{cert}).
    @ivar chain: the certificates after it in C{cert} (intermediates).
    @ivar names: the lower-case DNS names it is chosen for (its subject
        alternative names, else its common name); C{*.x} are wildcards.
    @ivar label: how logs and metrics name it: its first name, else its
        subject.
    @ivar notAfter: the end of its validity, POSIX seconds.
    @ivar context: the pyOpenSSL context serving it.
    """

    cert: str
    key: str
    leaf: x509.Certificate = attr.ib(repr=False)
    chain: Tuple[x509.Certificate, ...] = attr.ib(repr=False)
    names: Tuple[str, ...]
    label: str
    notAfter: float
    context: SSL.Context = attr.ib(repr=False)


def _notAfter(certificate: x509.Certificate) -> float:
    when = getattr(certificate, "not_valid_after_utc", None)
    if when is None:  # pragma: no cover (cryptography < 42)
        import calendar

        return float(calendar.timegm(certificate.not_valid_after.timetuple()))
    return when.timestamp()


def certificateNames(certificate: x509.Certificate) -> Tuple[str, ...]:
    """
    The DNS names C{certificate} is valid for, lower case: its subject
    alternative names, or its common name when it has none.
    """
    try:
        san = certificate.extensions.get_extension_for_oid(
            ExtensionOID.SUBJECT_ALTERNATIVE_NAME
        ).value
    except x509.ExtensionNotFound:
        san = None
    if san is not None:
        names = san.get_values_for_type(x509.DNSName)
        if names:
            return tuple(name.lower().rstrip(".") for name in names)
        return ()
    common = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if common and isinstance(common[0].value, str):
        return (common[0].value.lower().rstrip("."),)
    return ()


class _CertificateSet:
    """
    One generation of a listener's certificates, never changed once built:
    a reload builds a new one.

    @ivar certificates: the L{LoadedCertificate}s, the default first.
    @ivar default: the default certificate's context; every connection
        starts on it.
    """

    _log = Logger()

    def __init__(self, certificates: Sequence[LoadedCertificate], listenerName: str):
        self.certificates = tuple(certificates)
        self.listenerName = listenerName
        self.default = self.certificates[0].context
        self._exact: Dict[str, SSL.Context] = {}
        self._wildcard: Dict[str, SSL.Context] = {}
        for certificate in self.certificates:
            for name in certificate.names:
                if name.startswith("*."):
                    self._wildcard.setdefault(name[2:], certificate.context)
                else:
                    self._exact.setdefault(name, certificate.context)
        self.default.set_tlsext_servername_callback(self._serverName)

    def contextFor(self, serverName: str) -> SSL.Context:
        """
        The context for the SNI name C{serverName}: the first certificate
        naming it exactly, else the first whose wildcard covers it (one
        label: C{*.b.example} covers C{x.b.example}, not C{b.example} nor
        C{y.x.b.example}), else the default.
        """
        name = serverName.lower().rstrip(".")
        context = self._exact.get(name)
        if context is not None:
            return context
        _, dot, parent = name.partition(".")
        if dot:
            context = self._wildcard.get(parent)
            if context is not None:
                return context
        return self.default

    def _serverName(self, connection: SSL.Connection) -> None:
        # Called by OpenSSL during the handshake: an exception here would
        # abort it, so anything going wrong keeps the default certificate.
        try:
            raw = connection.get_servername()
            if not raw or not raw.isascii():
                return
            context = self.contextFor(raw.decode("ascii"))
            if context is not self.default:
                connection.set_context(context)
        except Exception:
            self._log.failure(
                "listener {listener}: choosing a certificate by SNI failed; "
                "serving the default one", listener=self.listenerName,
            )


_BEGIN = b"-----BEGIN CERTIFICATE-----"
_END = b"-----END CERTIFICATE-----"


def pemBlocks(data: bytes) -> List[bytes]:
    """
    The C{CERTIFICATE} blocks of PEM C{data}, in order (text between them,
    keys included, is skipped).

    @raise ValueError: a block has no END line.
    """
    blocks = []
    start = data.find(_BEGIN)
    while start >= 0:
        end = data.find(_END, start)
        if end < 0:
            raise ValueError("a certificate block has no END line")
        end += len(_END)
        blocks.append(data[start:end] + b"\n")
        start = data.find(_BEGIN, end)
    return blocks


def loadPEMCertificates(path: str) -> List[x509.Certificate]:
    """
    Every certificate of the PEM file C{path}, in file order.

    @raise OSError: the file cannot be read.
    @raise ValueError: it holds no certificate, or a broken one.
    """
    with open(path, "rb") as f:
        data = f.read()
    certificates = [x509.load_pem_x509_certificate(block) for block in pemBlocks(data)]
    if not certificates:
        raise ValueError("no PEM certificate in it (expected -----BEGIN CERTIFICATE-----)")
    return certificates


@implementer(IOpenSSLServerConnectionCreator)
class ServerTLS:
    """
    The TLS side of one HTTPS listener: creates its server connections
    (listen with L{golb.tls.tlsEndpoint}, which also keeps Twisted from
    replacing its ALPN choice) and reloads its certificates.

    @ivar config: the listener's L{golb.config.ListenerTLSConfig}.
    @ivar listenerName: the listener's name, for logs and metrics.
    @ivar reloads: successful reloads so far.
    @ivar reloadFailures: reloads that failed and changed nothing.
    @ivar lastError: the problems of the last failed reload (one line
        each), or L{None} once a reload succeeds.
    """

    _log = Logger()

    def __init__(self, tlsConfig, listenerName: str = "default", reactor=None):
        """
        Read the certificates, keys and client CA now.

        @param tlsConfig: a L{golb.config.ListenerTLSConfig}.
        @param listenerName: the listener's name.
        @param reactor: an C{IReactorTime} for C{reload_interval} and the
            expiry times (the global reactor when L{None}).

        @raise TLSConfigError: a file is missing, unreadable, encrypted,
            not PEM, or a key does not match its certificate.
        """
        if reactor is None:
            from twisted.internet import reactor
        self._reactor = reactor
        self.config = tlsConfig
        self.listenerName = listenerName
        self._sessionID = hashlib.sha256(
            b"golb:" + listenerName.encode("utf-8")
        ).hexdigest()[:32].encode("ascii")
        self._alpn = tuple(protocol.encode("ascii") for protocol in tlsConfig.alpn)
        self._ciphers = (tlsConfig.ciphers or DEFAULT_CIPHERS).encode("ascii")
        self._stamps = self._fileStamps()
        self._current = self._load()
        self._loop: Optional[LoopingCall] = None
        self.reloads = 0
        self.reloadFailures = 0
        self.lastError: Optional[List[str]] = None

    # -- IOpenSSLServerConnectionCreator

    def serverConnectionForTLS(self, tlsProtocol) -> SSL.Connection:
        """
        A new server connection on the current default certificate; SNI
        may switch it during the handshake.
        """
        return SSL.Connection(self._current.default, None)

    # -- certificates

    @property
    def certificates(self) -> Tuple[LoadedCertificate, ...]:
        """
        The certificates new handshakes are served with, the default first.
        """
        return self._current.certificates

    def contextFor(self, serverName: Optional[str]) -> SSL.Context:
        """
        The context a handshake with the SNI name C{serverName} (L{None}:
        none sent) is served with.
        """
        if not serverName:
            return self._current.default
        return self._current.contextFor(serverName)

    def certificateFor(self, serverName: Optional[str]) -> LoadedCertificate:
        """
        The certificate a handshake with the SNI name C{serverName} (L{None}:
        none sent) is served with.
        """
        context = self.contextFor(serverName)
        for certificate in self._current.certificates:
            if certificate.context is context:
                return certificate
        return self._current.certificates[0]  # pragma: no cover

    def certificateExpiries(self, now: Optional[float] = None) -> List[Tuple[str, str, float]]:
        """
        How long each certificate served now stays valid.

        @param now: POSIX seconds (the reactor's time when L{None}).
        @return: C{[(listener, certificate label, seconds until notAfter)]},
            negative for an expired certificate, in configuration order; a
            label repeated within the listener gets C{" (2)"}, C{" (3)"}...
            so that each is unique.
        """
        if now is None:
            now = self._reactor.seconds()
        expiries = []
        seen: Dict[str, int] = {}
        for certificate in self._current.certificates:
            label = certificate.label
            seen[label] = count = seen.get(label, 0) + 1
            if count > 1:
                label = f"{label} ({count})"
            expiries.append((self.listenerName, label, certificate.notAfter - now))
        return expiries

    # -- loading

    def _where(self, index: int, key: str) -> str:
        return f"listeners[{self.listenerName}].tls.certificates[{index}].{key}"

    def _files(self) -> List[str]:
        paths = []
        for pair in self.config.certificates:
            paths.extend((pair.cert, pair.key))
        if self.config.client_auth is not None:
            paths.append(self.config.client_auth.ca)
        return paths

    def _fileStamps(self) -> Tuple[object, ...]:
        stamps = []
        for path in self._files():
            try:
                info = os.stat(path)
            except OSError as e:
                stamps.append((path, e.errno))
            else:
                stamps.append((path, info.st_mtime_ns, info.st_size, info.st_ino))
        return tuple(stamps)

    def _load(self) -> _CertificateSet:
        problems: List[str] = []
        clientCA: List[x509.Certificate] = []
        clientAuth = self.config.client_auth
        if clientAuth is not None:
            try:
                clientCA = loadPEMCertificates(clientAuth.ca)
            except (OSError, ValueError) as e:
                problems.append(
                    f"listeners[{self.listenerName}].tls.client_auth.ca: {clientAuth.ca}: "
                    f"{_reason(e)}; give a PEM file of the CA certificate(s) that sign "
                    "client certificates"
                )
        loaded = []
        for index, pair in enumerate(self.config.certificates):
            try:
                loaded.append(self._loadPair(index, pair, clientCA))
            except TLSConfigError as e:
                problems.extend(e.problems)
        if problems:
            raise TLSConfigError(list(dict.fromkeys(problems)))
        for certificate in loaded:
            left = certificate.notAfter - self._reactor.seconds()
            if left < 0:
                self._log.warn(
                    "listener {listener}: certificate {label} ({cert}) expired "
                    "{days:.0f} days ago", listener=self.listenerName,
                    label=certificate.label, cert=certificate.cert, days=-left / 86400,
                )
        return _CertificateSet(loaded, self.listenerName)

    def _loadPair(self, index: int, pair, clientCA) -> LoadedCertificate:
        certWhere, keyWhere = self._where(index, "cert"), self._where(index, "key")
        try:
            certificates = loadPEMCertificates(pair.cert)
        except (OSError, ValueError) as e:
            raise TLSConfigError([
                f"{certWhere}: {pair.cert}: {_reason(e)}; give a PEM file with the "
                "certificate first, then its intermediates"
            ]) from None
        try:
            with open(pair.key, "rb") as f:
                keyData = f.read()
        except OSError as e:
            raise TLSConfigError([
                f"{keyWhere}: {pair.key}: {_reason(e)}; give the certificate's "
                "unencrypted PEM key"
            ]) from None
        try:
            key = load_pem_private_key(keyData, password=None)
        except TypeError:
            raise TLSConfigError([
                f"{keyWhere}: {pair.key} is encrypted (passphrase-protected) and golb "
                f"cannot ask for a passphrase; decrypt it (openssl pkey -in {pair.key} "
                f"-out {pair.key}.plain; chmod 600) and point the key at the plain file"
            ]) from None
        except Exception as e:
            raise TLSConfigError([
                f"{keyWhere}: {pair.key}: not a PEM private key ({_reason(e)}); "
                "give the certificate's unencrypted PEM key"
            ]) from None
        leaf, chain = certificates[0], tuple(certificates[1:])
        try:
            context = self._context(leaf, chain, key, clientCA)
        except _KeyMismatch:
            raise TLSConfigError([
                f"{keyWhere}: {pair.key} is not the key of the certificate in "
                f"{pair.cert}; give the matching key (or the matching certificate)"
            ]) from None
        except SSL.Error as e:
            raise TLSConfigError([
                f"listeners[{self.listenerName}].tls: cannot use {pair.cert} "
                f"with these settings: {_reason(e)}"
            ]) from None
        names = certificateNames(leaf)
        label = names[0] if names else leaf.subject.rfc4514_string()
        return LoadedCertificate(
            pair.cert, pair.key, leaf, chain, names, label, _notAfter(leaf), context
        )

    def _context(self, leaf, chain, key, clientCA) -> SSL.Context:
        context = SSL.Context(SSL.TLS_METHOD)
        context.set_options(_OPTIONS)
        context.set_min_proto_version(_VERSIONS[self.config.min_version])
        try:
            context.set_cipher_list(self._ciphers)
        except SSL.Error:
            raise TLSConfigError([
                f"listeners[{self.listenerName}].tls.ciphers: "
                f"{self._ciphers.decode('ascii')!r} matches no cipher OpenSSL knows; "
                "use an OpenSSL cipher string, or null for golb's modern defaults"
            ]) from None
        context.use_certificate(leaf)
        for intermediate in chain:
            context.add_extra_chain_cert(intermediate)
        try:
            context.use_privatekey(key)
            context.check_privatekey()
        except SSL.Error:
            raise _KeyMismatch() from None
        context.set_session_id(self._sessionID)
        context.set_session_cache_mode(SSL.SESS_CACHE_SERVER)
        if self._alpn:
            context.set_alpn_select_callback(self._selectALPN)
        clientAuth = self.config.client_auth
        if clientAuth is not None:
            context.load_verify_locations(clientAuth.ca.encode("utf-8"))
            for certificate in clientCA:
                context.add_client_ca(certificate)
            mode = SSL.VERIFY_PEER
            if clientAuth.required:
                mode |= SSL.VERIFY_FAIL_IF_NO_PEER_CERT
            context.set_verify(mode)
        return context

    def _selectALPN(self, connection: SSL.Connection, offered: List[bytes]):
        # Called by OpenSSL during the handshake: never raise.  Without a
        # protocol in common, the handshake goes on without ALPN.
        try:
            for protocol in self._alpn:
                if protocol in offered:
                    return protocol
        except Exception:
            self._log.failure("listener {listener}: ALPN selection failed",
                              listener=self.listenerName)
        return SSL.NO_OVERLAPPING_PROTOCOLS

    # -- reloading

    def reload(self) -> bool:
        """
        Read the certificate, key and client CA files again.  New handshakes
        use them from now on; open connections keep what they have.  When
        any file is broken, nothing changes and the reason is logged.

        @return: whether the new files are in use.
        """
        stamps = self._fileStamps()
        try:
            current = self._load()
        except TLSConfigError as e:
            self._stamps = stamps
            self.reloadFailures += 1
            self.lastError = e.problems
            for problem in e.problems:
                self._log.error(
                    "listener {listener}: certificates not reloaded, the current ones "
                    "stay in use: {problem}", listener=self.listenerName, problem=problem,
                )
            return False
        self._stamps = stamps
        self._current = current
        self.reloads += 1
        self.lastError = None
        self._log.info(
            "listener {listener}: certificates reloaded: {labels}",
            listener=self.listenerName,
            labels=", ".join(certificate.label for certificate in current.certificates),
        )
        return True

    def checkFiles(self) -> Optional[bool]:
        """
        Reload when a certificate, key or client CA file changed (its
        modification time, size or inode) since the last load.  The body of
        the C{reload_interval} loop; it never raises.

        @return: L{None} when nothing changed, else what L{reload} returned.
        """
        try:
            if self._fileStamps() == self._stamps:
                return None
            return self.reload()
        except Exception:
            self._log.failure("listener {listener}: checking the certificate files failed",
                              listener=self.listenerName)
            return False

    def startReloading(self) -> None:
        """
        With a C{reload_interval} above 0, check the files every interval.
        """
        interval = self.config.reload_interval
        if interval <= 0 or self._loop is not None:
            return
        self._loop = LoopingCall(self.checkFiles)
        self._loop.clock = self._reactor
        self._loop.start(interval, now=False)

    def stopReloading(self) -> None:
        """
        Stop checking the files.
        """
        loop, self._loop = self._loop, None
        if loop is not None and loop.running:
            loop.stop()


class _KeyMismatch(Exception):
    pass


def _reason(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror.lower()
    if isinstance(error, SSL.Error) and error.args and isinstance(error.args[0], list):
        return "; ".join(str(item[-1]) for item in error.args[0]) or "OpenSSL error"
    return str(error) or error.__class__.__name__


class _WallClock:
    @staticmethod
    def seconds() -> float:
        return time.time()


def listenerTLSProblems(tlsConfig, listenerName: str) -> List[str]:
    """
    What keeps a listener's C{tls:} section from serving, one line per
    problem (for C{golb check} and config reloads): every file is read, no
    reactor is needed.

    @return: the problems; empty when the files are usable.
    """
    try:
        ServerTLS(tlsConfig, listenerName, _WallClock())
    except TLSConfigError as e:
        return e.problems
    return []


def serverTLSFactory(tlsConfig, listenerName: str = "default", reactor=None) -> ServerTLS:
    """
    The L{ServerTLS} of a listener's C{tls:} section.

    @raise TLSConfigError: see L{ServerTLS.__init__}.
    """
    return ServerTLS(tlsConfig, listenerName, reactor)
