"""
The SSH Manhole: a Python prompt inside the running golb.

L{ManholeService} serves SSH (never telnet) on C{manhole.address}, loopback
by default.  Only public-key authentication is offered: the keys are those in
C{manhole.authorized_keys}, read again at every login attempt so that adding
or removing a line takes effect without a restart.  The host key is
C{manhole.host_key}, or an Ed25519 key generated once into golb's state
directory (see L{defaultStateDir}) and reused on later starts.

Each session gets a L{LiveNamespace}: C{golb}, C{runtime}, C{pools},
C{backends} and C{config} are looked up when the code at the prompt uses
them, so after a reload they name the new objects.  Code typed at the prompt
runs in the reactor thread: while it runs, golb serves nothing.
"""

import os
import struct
import sys
from typing import Callable, Dict, List, Optional

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.application.service import Service
from twisted.conch import manhole_ssh
from twisted.conch.checkers import IAuthorizedKeysDB, SSHPublicKeyChecker, readAuthorizedKeyFile
from twisted.conch.insults import insults
from twisted.conch.manhole import ColoredManhole, ManholeInterpreter
from twisted.conch.ssh import connection, keys, transport, userauth
from twisted.cred.portal import Portal
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from zope.interface import implementer

from golb import __version__, _units
from golb.pool import ADMIN_STATES

__all__ = [
    "CLOSE_TIMEOUT",
    "HOST_KEY_NAME",
    "LOGIN_TIMEOUT",
    "AuthorizedKeysFile",
    "GolbManhole",
    "LiveInterpreter",
    "LiveNamespace",
    "ManholeError",
    "ManholeFactory",
    "ManholeRealm",
    "ManholeService",
    "defaultStateDir",
    "hostKeyFor",
    "namespaceFor",
]

# The file name of the generated host key in the state directory.
HOST_KEY_NAME = "manhole_host_key"

# Seconds a client has to authenticate before it is disconnected.
LOGIN_TIMEOUT = 120

# Seconds a closing connection has to say goodbye before it is aborted.
CLOSE_TIMEOUT = 2

_MISSING = object()


class ManholeError(Exception):
    """
    The Manhole cannot start; the message says why and how to fix it.
    """


def defaultStateDir(environ=None, systemDir: str = "/var/lib/golb") -> str:
    """
    Where golb keeps state of its own (the generated Manhole host key):
    C{$GOLB_STATE_DIR} when set, else C{systemDir} when it exists and is
    writable (a system service), else C{$XDG_STATE_HOME/golb}
    (C{~/.local/state/golb}).

    @param environ: the environment (default L{os.environ}).
    """
    if environ is None:
        environ = os.environ
    if environ.get("GOLB_STATE_DIR"):
        return environ["GOLB_STATE_DIR"]
    if os.path.isdir(systemDir) and os.access(systemDir, os.W_OK | os.X_OK):
        return systemDir
    base = environ.get("XDG_STATE_HOME") or os.path.join(
        environ.get("HOME") or os.path.expanduser("~"), ".local", "state"
    )
    return os.path.join(base, "golb")


def _loadHostKey(path: str) -> keys.Key:
    fix = "set manhole.host_key to an unencrypted private key, or to null to generate one"
    try:
        key = keys.Key.fromFile(path)
    except keys.EncryptedKeyError:
        raise ManholeError(
            f"manhole.host_key {path} is encrypted; golb needs it without a passphrase"
            f" (ssh-keygen -p -N '' -f {path})"
        ) from None
    except (keys.BadKeyError, ValueError) as e:
        raise ManholeError(f"manhole.host_key {path} is not an SSH private key ({e}); {fix}") \
            from None
    except OSError as e:
        raise ManholeError(f"manhole.host_key {path} cannot be read: {e.strerror or e}; {fix}") \
            from None
    if key.isPublic():
        raise ManholeError(f"manhole.host_key {path} is a public key; {fix}")
    return key


def _generateHostKey(path: str) -> keys.Key:
    """
    Generate an Ed25519 key and write it to C{path} (OpenSSH format, mode
    0600), creating its directory (mode 0700) when needed.
    """
    private = ed25519.Ed25519PrivateKey.generate()
    data = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    directory = os.path.dirname(path)
    temporary = f"{path}.{os.getpid()}.tmp"
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        if os.path.exists(temporary):  # left by a crash
            os.unlink(temporary)
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(temporary, path)
    except OSError as e:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise ManholeError(
            f"cannot write the Manhole host key {path}: {e.strerror or e}; set GOLB_STATE_DIR"
            " to a writable directory or manhole.host_key to an existing key"
        ) from None
    return keys.Key(private)


def hostKeyFor(config, stateDir: Optional[str] = None) -> keys.Key:
    """
    The Manhole's host key: C{config.host_key} when set, else the key in
    C{stateDir} (default L{defaultStateDir}), generated there on first use.

    @param config: a L{golb.config.ManholeConfig}.
    @raise ManholeError: the key cannot be read or written.
    """
    if config.host_key is not None:
        return _loadHostKey(config.host_key)
    path = os.path.join(stateDir or defaultStateDir(), HOST_KEY_NAME)
    if os.path.exists(path):
        return _loadHostKey(path)
    return _generateHostKey(path)


@implementer(IAuthorizedKeysDB)
class AuthorizedKeysFile:
    """
    The public keys of one C{authorized_keys} file, whatever the user name;
    the file is read at each login attempt.  Lines that are not keys (such as
    those with OpenSSH options) are logged and ignored.
    """

    log = Logger()

    def __init__(self, path: str):
        self.path = path

    def getAuthorizedKeys(self, username: bytes) -> List[keys.Key]:
        """
        Every key in the file (none when it cannot be read).
        """
        try:
            with open(self.path, "rb") as f:
                return list(readAuthorizedKeyFile(f))
        except OSError as e:
            self.log.warn("manhole: cannot read {path}: {error}; nobody can log in",
                          path=self.path, error=e.strerror or e)
            return []


def _pool(golb, name: str):
    pools = golb.pools
    if name not in pools:
        raise KeyError(f"no pool {name!r}; pools: {', '.join(sorted(pools)) or 'none'}")
    return pools[name]


def _backend(golb, poolName: str, which: str):
    found = _pool(golb, poolName)
    for backend in found.backends:
        if which in (backend.id, backend.url):
            return backend
    names = ", ".join(backend.id for backend in found.backends) or "none"
    raise KeyError(f"pool {poolName!r} has no backend {which!r}; backends: {names}")


def _setState(golb, poolName: str, which: str, state: str):
    if state not in ADMIN_STATES:
        raise ValueError(f"{state!r} is not one of {', '.join(ADMIN_STATES)}")
    backend = _backend(golb, poolName, which)
    if backend.state != state:
        backend.state = state
        if state == "ready":
            backend.markReady()
        ManholeService.log.info("manhole: set {pool}/{backend} to {state}",
                                pool=poolName, backend=backend.id, state=state)
    return backend


def _status(golb, write: Callable[[str], object]) -> None:
    for poolName, found in sorted(golb.pools.items()):
        write(f"{poolName}:\n")
        for backend in found.backends:
            write(
                f"  {backend.id:24} {backend.state:6} {'up' if backend.healthy else 'DOWN':4}"
                f" in-flight={backend.inFlight} requests={backend.requests}"
                f" failures={backend.failures} latency={backend.latency * 1000:.1f}ms"
                f" ({backend.health.reason})\n"
            )


def _allBackends(golb) -> list:
    return [backend for found in golb.pools.values() for backend in found.backends]


def namespaceFor(golb, reactor) -> "LiveNamespace":
    """
    A new prompt namespace over C{golb}: the live names C{golb}, C{runtime},
    C{pools}, C{backends} and C{config}, plus C{reactor} and the helpers
    C{pool}, C{backend}, C{setState} and C{status}.
    """
    live = {
        "golb": lambda: golb,
        "runtime": lambda: golb.runtime,
        "pools": lambda: golb.pools,
        "backends": lambda: _allBackends(golb),
        "config": lambda: golb.config,
    }

    def pool(name):
        """The current pool called C{name}."""
        return _pool(golb, name)

    def backend(poolName, which):
        """The backend of pool C{poolName} whose id or URL is C{which}."""
        return _backend(golb, poolName, which)

    def setState(poolName, which, state):
        """Set a backend's admin state: ready, drain or maint."""
        return _setState(golb, poolName, which, state)

    def status():
        """Print every pool's backends: admin state, health, counters."""
        _status(golb, lambda text: sys.stdout.write(text))

    fixed = {
        "__name__": "__manhole__",
        "__doc__": None,
        "reactor": reactor,
        "pool": pool,
        "backend": backend,
        "setState": setState,
        "status": status,
        "exit": _Leave(),
        "quit": _Leave(),
    }
    return LiveNamespace(live, fixed)


class LiveNamespace(dict):
    """
    The globals code at the prompt runs in.  Its live names are looked up
    each time they are used (exec honours a dict subclass's C{__getitem__}
    for globals on CPython and PyPy) and refreshed before each command, so
    C{dir()} and C{vars()} show current values too.  A live name the user
    assigns to is theirs until they C{del} it.

    @ivar live: the live names and the callables giving their values.
    """

    def __init__(self, live: Dict[str, Callable[[], object]], fixed: Dict[str, object]):
        dict.__init__(self, fixed)
        self.live = live
        self._stored: Dict[str, object] = {}
        self.refresh()

    def refresh(self) -> None:
        """
        Store the current value of every live name the user has not rebound.
        """
        for name in self.live:
            self._resolve(name)

    def _resolve(self, name: str) -> object:
        current = dict.get(self, name, _MISSING)
        if current is not _MISSING and current is not self._stored.get(name, _MISSING):
            return current
        value = self.live[name]()
        dict.__setitem__(self, name, value)
        self._stored[name] = value
        return value

    def __getitem__(self, key):
        if key in self.live:
            return self._resolve(key)
        return dict.__getitem__(self, key)


class _Leave:
    """
    C{exit} and C{quit} at the prompt: end the session (not golb, and
    without closing golb's standard input as the builtins would).
    """

    def __repr__(self) -> str:
        return "Use exit() or Ctrl-D to leave the Manhole."

    def __call__(self, code=None):
        raise SystemExit(code)


class LiveInterpreter(ManholeInterpreter):
    """
    A L{ManholeInterpreter} that refreshes its L{LiveNamespace} before
    running each command, and ends the session on L{SystemExit} (which
    L{code.InteractiveInterpreter} would let through to the reactor).
    """

    def runcode(self, *args, **kwargs):
        self.locals.refresh()
        try:
            return ManholeInterpreter.runcode(self, *args, **kwargs)
        except SystemExit:
            self.handler.leaving = True


def _banner(address) -> str:
    return "\n".join([
        f"golb {__version__} Manhole on {address} (Python {sys.version.split()[0]});"
        " Ctrl-D leaves.",
        "  golb      the application: golb.reloadFile(), golb.reload(config)",
        "  runtime   the current Runtime       config    the current Config",
        "  pools     its pools by name         backends  every Backend of those pools",
        "  reactor   the reactor",
        "  pool('web'), backend('web', 'b1'), setState('web', 'b1', 'drain'), status()",
        "These names are looked up live: after a reload they show the new objects.",
        "Code here runs in the reactor thread: while it runs, golb serves nothing.",
        "",
    ])


class GolbManhole(ColoredManhole):
    """
    A L{ColoredManhole} over a L{LiveNamespace} (not a copy of it) that
    greets the user with a banner.
    """

    def __init__(self, namespace: LiveNamespace, banner: str = ""):
        ColoredManhole.__init__(self)
        self.namespace = namespace
        self.banner = banner
        self.leaving = False
        self._sized = False

    def lineReceived(self, line):
        ColoredManhole.lineReceived(self, line)
        if self.leaving:
            self.handle_QUIT()

    def connectionMade(self):
        ColoredManhole.connectionMade(self)
        self.interpreter = LiveInterpreter(self, self.namespace)

    def initializeScreen(self):
        self.terminal.reset()
        self.terminal.write(self.banner.encode("utf-8"))
        self.terminal.write(self.ps[self.pn])
        self.setInsertMode()

    def terminalSize(self, width, height):
        # The first call comes right after the banner: keep it on screen.
        if self._sized:
            ColoredManhole.terminalSize(self, width, height)
        else:
            self._sized = True
            self.width, self.height = width, height


class ManholeSessionTransport(manhole_ssh.TerminalSessionTransport):
    """
    Connects an SSH session to the terminal; when the prompt ends (Ctrl-D),
    the client is told exit status 0 before the session closes.
    """

    def __init__(self, proto, chainedProtocol, avatar, width, height):
        manhole_ssh.TerminalSessionTransport.__init__(
            self, proto, chainedProtocol, avatar, width, height
        )
        chainedProtocol.transport.loseConnection = self._exit

    def _exit(self):
        session = self.proto.session
        session.conn.sendRequest(session, b"exit-status", struct.pack(">L", 0))
        self.proto.loseConnection()


class _NoProcess:
    """
    The transport of the process protocol of a refused command: there is no
    process, so there is nothing to write to or close.
    """

    def write(self, data):
        pass

    def loseConnection(self):
        pass


class ManholeSession(manhole_ssh.TerminalSession):
    """
    A terminal session that does not fail on window changes or EOF, works
    without a pty (80x24), and answers a command (C{ssh host CMD}) with a
    message and exit status 1.
    """

    width = 80
    height = 24

    def execCommand(self, proto, cmd):
        proto.makeConnection(_NoProcess())
        session = proto.session
        session.writeExtended(
            connection.EXTENDED_DATA_STDERR,
            b"golb's Manhole is an interactive Python prompt and runs no commands;"
            b" log in without one (ssh -p PORT HOST)\r\n",
        )
        session.conn.transport.factory.reactor.callLater(0, self._refuse, session)

    @staticmethod
    def _refuse(session):
        session.conn.sendRequest(session, b"exit-status", struct.pack(">L", 1))
        session.conn.sendClose(session)

    def openShell(self, proto):
        self._proto = proto
        manhole_ssh.TerminalSession.openShell(self, proto)

    def windowChanged(self, newWindowSize):
        """
        Ignored: the prompt does not lay out by width.
        """

    def eofReceived(self):
        """
        The client has no more input: end the session.
        """
        proto = getattr(self, "_proto", None)
        if proto is not None:
            proto.loseConnection()


class ManholeRealm(manhole_ssh.TerminalRealm):
    """
    Gives each login a terminal running a L{GolbManhole} over a new
    L{LiveNamespace}.
    """

    log = Logger()
    sessionFactory = ManholeSession
    transportFactory = ManholeSessionTransport

    def __init__(self, golb, reactor, banner: str = ""):
        manhole_ssh.TerminalRealm.__init__(self)
        self.banner = banner
        self.chainedProtocolFactory = lambda: insults.ServerProtocol(
            GolbManhole, namespaceFor(golb, reactor), self.banner
        )

    def requestAvatar(self, avatarId, mind, *interfaces):
        user = avatarId.decode("utf-8", "replace") if isinstance(avatarId, bytes) else avatarId
        interface, avatar, logout = manhole_ssh.TerminalRealm.requestAvatar(
            self, avatarId, mind, *interfaces
        )
        self.log.info("manhole: {user} logged in", user=user)

        def loggedOut():
            self.log.info("manhole: {user} logged out", user=user)
            logout()

        return interface, avatar, loggedOut


class ManholeTransport(transport.SSHServerTransport):
    """
    The server side of one SSH connection; its factory keeps track of it.
    """

    def connectionMade(self):
        self.factory.connections.add(self)
        transport.SSHServerTransport.connectionMade(self)

    def connectionLost(self, reason):
        try:
            transport.SSHServerTransport.connectionLost(self, reason)
        finally:
            self.factory.connections.discard(self)
            for d in self.factory.closeWaiters.pop(self, []):
                d.callback(None)


class ManholeFactory(manhole_ssh.ConchFactory):
    """
    The SSH factory: one host key, public-key authentication only, a login
    timeout on the injected reactor, and the open connections tracked.

    @ivar connections: the L{ManholeTransport}s connected now.
    """

    protocol = ManholeTransport

    def __init__(self, portal: Portal, hostKey: keys.Key, reactor):
        manhole_ssh.ConchFactory.__init__(self, portal)
        self.publicKeys = {hostKey.sshType(): hostKey.public()}
        self.privateKeys = {hostKey.sshType(): hostKey}
        self.reactor = reactor
        self.connections = set()
        self.closeWaiters: Dict[ManholeTransport, list] = {}

    def getService(self, transport, service):
        if service == userauth.SSHUserAuthServer.name:
            def build():
                auth = userauth.SSHUserAuthServer()
                auth.clock = self.reactor
                auth.loginTimeout = LOGIN_TIMEOUT
                return auth

            return build
        return manhole_ssh.ConchFactory.getService(self, transport, service)

    def closeAll(self) -> defer.Deferred:
        """
        Disconnect every client.

        @return: a L{Deferred} that fires when they are all gone.
        """
        waits = []
        for client in list(self.connections):
            d = defer.Deferred()
            self.closeWaiters.setdefault(client, []).append(d)
            abort = self.reactor.callLater(CLOSE_TIMEOUT, client.transport.abortConnection)
            d.addBoth(lambda result, abort=abort: abort.cancel() if abort.active() else None)
            waits.append(d)
            client.loseConnection()
        return defer.gatherResults(waits)


class ManholeService(Service):
    """
    Serves the SSH Manhole while running.

    @ivar golb: the L{golb.app.Golb} whose objects the prompt sees.
    @ivar config: the L{golb.config.ManholeConfig}.
    @ivar port: the L{IListeningPort} while listening, else L{None}.
    @ivar factory: the L{ManholeFactory} while running, else L{None}.
    @ivar hostKey: the host key in use (a L{twisted.conch.ssh.keys.Key}).
    """

    name = "manhole"
    log = Logger()

    def __init__(self, golb, config, reactor=None, stateDir: Optional[str] = None):
        if reactor is None:
            from twisted.internet import reactor
        self.golb = golb
        self.config = config
        self.reactor = reactor
        self.stateDir = stateDir
        self.port = None
        self.factory: Optional[ManholeFactory] = None
        self.hostKey: Optional[keys.Key] = None

    def startService(self) -> None:
        """
        Load or generate the host key and listen.

        @raise ManholeError: the host key cannot be read or written.
        @raise Exception: listening failed (the address is in use...).
        """
        config = self.config
        self.hostKey = hostKeyFor(config, self.stateDir)
        authorized = AuthorizedKeysFile(config.authorized_keys)
        realm = ManholeRealm(self.golb, self.reactor)
        portal = Portal(realm, [SSHPublicKeyChecker(authorized)])
        self.factory = ManholeFactory(portal, self.hostKey, self.reactor)
        endpoint = serverFromString(self.reactor, config.address.endpointDescription())
        listening = endpoint.listen(self.factory)
        failures: List = []
        listening.addCallbacks(self._listening, failures.append)
        if failures:
            self.factory = None
            failures[0].raiseException()
        Service.startService(self)
        count = len(authorized.getAuthorizedKeys(b""))
        address = config.address
        if self.port is not None:
            address = _units.Address(address.host, self.port.getHost().port)
        realm.banner = _banner(address)
        address = str(address)
        if not config.address.isLoopback():
            self.log.warn(
                "manhole: {address} is not loopback: SSH key authentication is all that"
                " stands between the network and a Python prompt inside golb",
                address=address,
            )
        self.log.info(
            "manhole: SSH on {address}, {count} authorized key(s) in {keys},"
            " host key {fingerprint}",
            address=address, count=count, keys=config.authorized_keys,
            fingerprint="SHA256:" + self.hostKey.fingerprint(
                keys.FingerprintFormats.SHA256_BASE64
            ).rstrip("="),
        )

    def _listening(self, port) -> None:
        self.port = port

    def stopService(self) -> defer.Deferred:
        """
        Stop listening and disconnect every session.
        """
        Service.stopService(self)
        waits: List[defer.Deferred] = []
        if self.port is not None:
            waits = [defer.maybeDeferred(self.port.stopListening)]
            self.port = None
        if self.factory is not None:
            waits.append(self.factory.closeAll())
            self.factory = None
        return defer.gatherResults(waits).addCallback(lambda _: None)
