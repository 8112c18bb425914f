"""
Tests for L{golb.manhole}: the SSH Manhole, reached over real loopback
sockets by Twisted's SSH client and by OpenSSH's C{ssh}.
"""

import os
import shutil
import stat
import sys

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.conch.ssh import channel, connection, keys, session, transport, userauth
from twisted.conch.ssh.common import NS, getNS
from twisted.cred.portal import Portal
from twisted.internet import defer, error, reactor
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory, ProcessProtocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from golb import _units
from golb.app import Golb
from golb.config import ManholeConfig, parseConfig
from golb.manhole import (
    CLOSE_TIMEOUT,
    HOST_KEY_NAME,
    LiveNamespace,
    ManholeError,
    ManholeFactory,
    ManholeRealm,
    ManholeService,
    defaultStateDir,
    namespaceFor,
)

# The expression each session evaluates; its echo never contains its value.
POOL_COUNT = b"f'<{len(pools)}>'\r"


def _configYAML(pools: int) -> str:
    lines = ['server: {address: "127.0.0.1:0"}', "backend_pools:"]
    for index in range(pools):
        lines.append(
            f'  - {{name: "p{index}", backends: [{{url: "http://127.0.0.1:{index + 1}",'
            f' name: b1}}, {{url: "http://127.0.0.1:{index + 101}", name: b2}}]}}'
        )
    return "\n".join(lines) + "\n"


def _config(pools: int):
    return parseConfig(_configYAML(pools), "test.yaml")


def _makeKey() -> keys.Key:
    return keys.Key(ed25519.Ed25519PrivateKey.generate())


def _privateBytes(key: keys.Key, password: bytes = None) -> bytes:
    encryption = (serialization.BestAvailableEncryption(password) if password
                  else serialization.NoEncryption())
    return key._keyObject.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, encryption
    )


def _writeFile(path: str, data: bytes, mode: int = 0o600) -> str:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


class _Session(channel.SSHChannel):
    """
    A shell session with a pty that records what it receives.
    """

    name = b"session"

    def __init__(self, *args, **kwargs):
        channel.SSHChannel.__init__(self, *args, **kwargs)
        self.received = b""
        self.opened = defer.Deferred()
        self.ended = defer.Deferred()
        self._waiters = []

    def closed(self):
        self.ended.callback(None)

    def channelOpen(self, specificData):
        pty = session.packRequest_pty_req(b"xterm", (24, 80, 0, 0), b"")
        requests = [
            self.conn.sendRequest(self, b"pty-req", pty, wantReply=True),
            self.conn.sendRequest(self, b"shell", b"", wantReply=True),
        ]
        defer.gatherResults(requests).addCallbacks(
            lambda _: self.opened.callback(self), self.opened.errback
        )

    def openFailed(self, reason):
        self.opened.errback(reason)

    def dataReceived(self, data):
        self.received += data
        for waiter in list(self._waiters):
            marker, start, d = waiter
            if marker in self.received[start:]:
                self._waiters.remove(waiter)
                d.callback(self.received[start:])

    def waitFor(self, marker: bytes, start: int = 0) -> defer.Deferred:
        """
        A L{Deferred} firing with what was received from C{start} on, once
        C{marker} is in it.
        """
        d = defer.Deferred()
        self._waiters.append((marker, start, d))
        self.dataReceived(b"")
        return d

    def command(self, line: bytes, marker: bytes) -> defer.Deferred:
        """
        Type C{line} and wait for C{marker} in what comes back.
        """
        d = self.waitFor(marker, len(self.received))
        self.write(line)
        return d


class _Connection(connection.SSHConnection):
    def __init__(self, shell):
        connection.SSHConnection.__init__(self)
        self.shell = shell

    def serviceStarted(self):
        connection.SSHConnection.serviceStarted(self)
        self.openChannel(self.shell)


class _Auth(userauth.SSHUserAuthClient):
    """
    Offers one key, or (instead of asking which methods the server takes)
    sends a password straight away.
    """

    def __init__(self, instance, key=None, password=None):
        userauth.SSHUserAuthClient.__init__(self, b"operator", instance)
        self.key = key
        self.password = password
        self.offered = False

    def serviceStarted(self):
        if self.password is None:
            return userauth.SSHUserAuthClient.serviceStarted(self)
        self.authenticatedWith, self.triedPublicKeys, self.lastPublicKey = [], [], None
        self.askForAuth(b"password", b"\x00" + NS(self.password))

    def getPublicKey(self):
        if self.key is None or self.offered:
            return None
        self.offered = True
        return self.key.public()

    def getPrivateKey(self):
        return defer.succeed(self.key)

    def getPassword(self, prompt=None):
        return None

    def ssh_USERAUTH_FAILURE(self, packet):
        self.transport.factory.failures.append((self.lastAuth, getNS(packet)[0]))
        return userauth.SSHUserAuthClient.ssh_USERAUTH_FAILURE(self, packet)

    def ssh_USERAUTH_SUCCESS(self, packet):
        self.transport.factory.authenticated = True
        return userauth.SSHUserAuthClient.ssh_USERAUTH_SUCCESS(self, packet)


class _ClientTransport(transport.SSHClientTransport):
    def verifyHostKey(self, hostKey, fingerprint):
        self.factory.hostKeys.append(keys.Key.fromString(hostKey))
        return defer.succeed(True)

    def connectionSecure(self):
        self.requestService(self.factory.auth)

    def connectionLost(self, reason):
        transport.SSHClientTransport.connectionLost(self, reason)
        if not self.factory.shell.opened.called:
            self.factory.shell.opened.errback(reason)
        self.factory.lost.callback(None)


class _ClientFactory(Factory):
    """
    One SSH client connection and what it went through.

    @ivar hostKeys: the host keys the server presented.
    @ivar failures: C{(method, methods the server would take)} per refusal.
    """

    protocol = _ClientTransport

    def __init__(self, key=None, password=None):
        self.shell = _Session()
        self.auth = _Auth(_Connection(self.shell), key, password)
        self.hostKeys = []
        self.failures = []
        self.authenticated = False
        self.lost = defer.Deferred()


class _SSHProcess(ProcessProtocol):
    """
    An C{ssh} process whose output can be waited for.
    """

    def __init__(self):
        self.output = b""
        self.ended = defer.Deferred()
        self._waiters = []

    def outReceived(self, data):
        self.output += data
        for marker, d in list(self._waiters):
            if marker in self.output:
                self._waiters.remove((marker, d))
                d.callback(self.output)

    errReceived = outReceived

    def waitFor(self, marker: bytes) -> defer.Deferred:
        d = defer.Deferred()
        self._waiters.append((marker, d))
        self.outReceived(b"")
        return d

    def processEnded(self, reason):
        for _marker, d in self._waiters:
            d.errback(AssertionError(f"ssh ended; it wrote {self.output!r}"))
        self._waiters = []
        self.ended.callback(reason.value.exitCode)


class _ManholeTestMixin:
    """
    A L{Golb} with two pools, an authorized client key and a way to start
    Manholes over them.
    """

    def setUp(self):
        self.dir = self.mktemp()
        os.makedirs(self.dir)
        self.golb = Golb(_config(2), reactor=reactor)
        self.addCleanup(self.golb.close)
        self.clientKey = _makeKey()
        self.keysFile = _writeFile(
            os.path.join(self.dir, "authorized_keys"),
            b"# the operators\n" + self.clientKey.public().toString("openssh") + b" op@golb\n",
        )
        self.stateDir = os.path.join(self.dir, "state")

    def manholeConfig(self, **overrides) -> ManholeConfig:
        values = dict(enabled=True, address=_units.Address("127.0.0.1", 0),
                      authorized_keys=self.keysFile)
        values.update(overrides)
        return ManholeConfig(**values)

    def startManhole(self, config=None, **kwargs) -> ManholeService:
        kwargs.setdefault("stateDir", self.stateDir)
        kwargs.setdefault("reactor", reactor)
        service = ManholeService(self.golb, config or self.manholeConfig(), **kwargs)
        service.startService()
        self.addCleanup(lambda: service.stopService() if service.running else None)
        return service

    def connect(self, service, key=None, password=None) -> defer.Deferred:
        """
        Connect an SSH client to C{service}; it is closed at cleanup.

        @return: a L{Deferred} firing with its L{_ClientFactory}.
        """
        factory = _ClientFactory(key, password)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", service.port.getHost().port)

        def connected(client):
            def close():
                if not factory.lost.called:
                    client.transport.loseConnection()
                return factory.lost

            self.addCleanup(close)
            return factory

        return endpoint.connect(factory).addCallback(connected)

    @defer.inlineCallbacks
    def login(self, service):
        """
        Log in with the authorized key and wait for the first prompt.

        @return: the shell L{_Session}.
        """
        client = yield self.connect(service, key=self.clientKey)
        shell = yield client.shell.opened
        yield shell.waitFor(b">>> ")
        return shell


class ManholeSessionTests(_ManholeTestMixin, TestCase):
    """
    SSH sessions into a running L{ManholeService}.
    """

    @defer.inlineCallbacks
    def test_sessionSeesLiveObjectsAcrossReload(self):
        """
        An operator with an authorized key gets a banner and a prompt where
        C{pools} is golb's current pools; after a reload the same expression,
        and a function defined before it, show the new ones.
        """
        service = self.startManhole()
        shell = yield self.login(service)
        self.assertIn(f"Manhole on 127.0.0.1:{service.port.getHost().port}".encode(),
                      shell.received)
        self.assertIn(b"pools", shell.received)
        self.assertIn(b"reactor thread", shell.received)
        self.assertNotIn(b"\x1b[2J", shell.received)
        output = yield shell.command(POOL_COUNT, b"'<2>'")
        self.assertIn(b"'<2>'", output)
        yield shell.command(b"count = lambda: len(backends)\r", b">>> ")

        self.golb.reload(_config(3))
        output = yield shell.command(POOL_COUNT, b"'<3>'")
        self.assertIn(b"'<3>'", output)
        output = yield shell.command(b"f'<<{count()}>>'\r", b"'<<6>>'")
        self.assertIn(b"'<<6>>'", output)
        output = yield shell.command(b"config is golb.config, runtime is golb.runtime\r",
                                     b"(True, True)")
        self.assertIn(b"(True, True)", output)

    @defer.inlineCallbacks
    def test_helpersAtThePrompt(self):
        """
        C{setState} drains a backend by pool and id, and C{backend} finds it.
        """
        service = self.startManhole()
        shell = yield self.login(service)
        yield shell.command(b"setState('p1', 'b2', 'drain')\r", b">>> ")
        self.assertEqual(self.golb.pools["p1"].backends[1].state, "drain")
        output = yield shell.command(b"backend('p1', 'b2').state\r", b"'drain'")
        self.assertIn(b"'drain'", output)

    @defer.inlineCallbacks
    def test_exitEndsTheSessionOnly(self):
        """
        C{exit()} (or C{SystemExit}) at the prompt ends that session, not
        golb: other sessions go on.
        """
        service = self.startManhole()
        other = yield self.login(service)
        for line in (b"exit()\r", b"import sys; sys.exit(3)\r"):
            client = yield self.connect(service, key=self.clientKey)
            shell = yield client.shell.opened
            yield shell.waitFor(b">>> ")
            shell.write(line)
            yield shell.ended
        output = yield other.command(b"exit\r", b"Ctrl-D")
        self.assertIn(b"Use exit() or Ctrl-D to leave", output)
        output = yield other.command(POOL_COUNT, b"'<2>'")
        self.assertIn(b"'<2>'", output)

    @defer.inlineCallbacks
    def test_sessionsHaveTheirOwnVariables(self):
        """
        A variable set in one session is not seen in another.
        """
        service = self.startManhole()
        first = yield self.login(service)
        second = yield self.login(service)
        yield first.command(b"mine = 7\r", b">>> ")
        output = yield second.command(b"mine\r", b"NameError")
        self.assertIn(b"NameError", output)

    @defer.inlineCallbacks
    def test_unauthorizedKeyRefused(self):
        """
        A client whose key is not in C{authorized_keys} is refused and
        disconnected, and the server offers no other method.
        """
        service = self.startManhole()
        client = yield self.connect(service, key=_makeKey())
        yield client.lost
        self.assertFalse(client.authenticated)
        self.assertEqual(client.failures[-1], (b"publickey", b"publickey"))
        yield self.assertFailure(client.shell.opened, error.ConnectionDone)

    @defer.inlineCallbacks
    def test_passwordRefused(self):
        """
        A password is refused at once: only public keys are accepted.
        """
        service = self.startManhole()
        client = yield self.connect(service, password=b"hunter2")
        yield client.lost
        self.assertFalse(client.authenticated)
        self.assertEqual(client.failures[0], (b"password", b"publickey"))
        yield self.assertFailure(client.shell.opened, error.ConnectionDone)

    @defer.inlineCallbacks
    def test_authorizedKeysReadAtLogin(self):
        """
        A key added to C{authorized_keys} while golb runs works at the next
        login.
        """
        service = self.startManhole()
        newKey = _makeKey()
        with open(self.keysFile, "ab") as f:
            f.write(newKey.public().toString("openssh") + b"\n")
        client = yield self.connect(service, key=newKey)
        yield client.shell.opened
        self.assertTrue(client.authenticated)

    @defer.inlineCallbacks
    def test_stopServiceClosesPortAndSessions(self):
        """
        Stopping the service disconnects every session and closes the port.
        """
        service = self.startManhole()
        port = service.port.getHost().port
        client = yield self.connect(service, key=self.clientKey)
        yield client.shell.opened
        yield service.stopService()
        yield client.lost
        self.assertIsNone(service.port)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        yield self.assertFailure(endpoint.connect(_ClientFactory()), error.ConnectionRefusedError)

    @defer.inlineCallbacks
    def test_generatedHostKeyIsKeptAndReused(self):
        """
        Without C{host_key}, a host key is generated into the state directory
        (mode 0600) and presented again after a restart.
        """
        first = self.startManhole()
        client = yield self.connect(first, key=self.clientKey)
        yield client.shell.opened
        yield first.stopService()
        path = os.path.join(self.stateDir, HOST_KEY_NAME)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)

        second = self.startManhole()
        again = yield self.connect(second, key=self.clientKey)
        yield again.shell.opened
        self.assertEqual(client.hostKeys, again.hostKeys)
        self.assertEqual(again.hostKeys[0].fingerprint(), keys.Key.fromFile(path).fingerprint())

    @defer.inlineCallbacks
    def test_configuredHostKey(self):
        """
        The key named by C{host_key} is the one presented.
        """
        hostKey = _makeKey()
        path = _writeFile(os.path.join(self.dir, "host"), _privateBytes(hostKey))
        service = self.startManhole(self.manholeConfig(host_key=path))
        client = yield self.connect(service, key=self.clientKey)
        yield client.shell.opened
        self.assertEqual(client.hostKeys, [hostKey.public()])
        self.assertFalse(os.path.exists(self.stateDir))

    @defer.inlineCallbacks
    def test_openSSHClient(self):
        """
        OpenSSH's C{ssh} logs in with the authorized key, checks the host key
        and evaluates an expression (CI installs Debian's C{openssh-client}).
        """
        ssh = shutil.which("ssh")
        if ssh is None:
            self.fail("this test needs the ssh command (Debian package openssh-client)")
        service = self.startManhole()
        port = service.port.getHost().port
        identity = _writeFile(os.path.join(self.dir, "id"), _privateBytes(self.clientKey))
        known = _writeFile(
            os.path.join(self.dir, "known_hosts"),
            f"[127.0.0.1]:{port} ".encode() + service.hostKey.public().toString("openssh")
            + b"\n",
        )
        process = _SSHProcess()
        args = [
            ssh, "-F", "/dev/null", "-tt", "-p", str(port), "-i", identity,
            "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known}",
            "-o", "LogLevel=ERROR", "operator@127.0.0.1",
        ]
        reactor.spawnProcess(process, ssh, args, env={"PATH": os.environ.get("PATH", "")})

        def kill():
            if not process.ended.called:
                process.transport.signalProcess("KILL")
            return process.ended.addErrback(lambda _: None)

        self.addCleanup(kill)
        yield process.waitFor(b">>> ")
        process.transport.write(POOL_COUNT)
        yield process.waitFor(b"'<2>'")
        process.transport.write(b"\x04")
        code = yield process.ended
        self.assertEqual(code, 0, process.output)

    @defer.inlineCallbacks
    def test_openSSHCommandRefused(self):
        """
        C{ssh host CMD} gets a message that the Manhole runs no commands and
        exit status 1.
        """
        ssh = shutil.which("ssh")
        if ssh is None:
            self.fail("this test needs the ssh command (Debian package openssh-client)")
        service = self.startManhole()
        identity = _writeFile(os.path.join(self.dir, "id"), _privateBytes(self.clientKey))
        process = _SSHProcess()
        args = [
            ssh, "-F", "/dev/null", "-p", str(service.port.getHost().port), "-i", identity,
            "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
            "operator@127.0.0.1", "len(pools)",
        ]
        reactor.spawnProcess(process, ssh, args, env={"PATH": os.environ.get("PATH", "")})
        code = yield process.ended
        self.assertEqual(code, 1, process.output)
        self.assertIn(b"runs no commands", process.output)

    @defer.inlineCallbacks
    def test_openSSHPasswordOnlyRefused(self):
        """
        OpenSSH told to use only passwords is refused: the server offers
        public keys only.
        """
        ssh = shutil.which("ssh")
        if ssh is None:
            self.fail("this test needs the ssh command (Debian package openssh-client)")
        service = self.startManhole()
        process = _SSHProcess()
        args = [
            ssh, "-F", "/dev/null", "-p", str(service.port.getHost().port),
            "-o", "PubkeyAuthentication=no", "-o", "PreferredAuthentications=password",
            "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
            "operator@127.0.0.1", "true",
        ]
        reactor.spawnProcess(process, ssh, args, env={"PATH": os.environ.get("PATH", "")})
        code = yield process.ended
        self.assertEqual(code, 255)
        self.assertIn(b"Permission denied (publickey)", process.output)


class ManholeStartupTests(_ManholeTestMixin, TestCase):
    """
    What L{ManholeService.startService} checks and reports.
    """

    def test_encryptedHostKey(self):
        """
        A passphrase-protected C{host_key} stops the start with an error that
        says how to fix it.
        """
        path = _writeFile(os.path.join(self.dir, "host"), _privateBytes(_makeKey(), b"secret"))
        service = ManholeService(self.golb, self.manholeConfig(host_key=path), MemoryReactor())
        e = self.assertRaises(ManholeError, service.startService)
        self.assertIn(f"manhole.host_key {path} is encrypted", str(e))
        self.assertIn("ssh-keygen -p", str(e))
        self.assertFalse(service.running)

    def test_unreadableHostKey(self):
        """
        A C{host_key} that is not a private key, or cannot be read, stops the
        start with an error naming it.
        """
        garbage = _writeFile(os.path.join(self.dir, "garbage"), b"not a key\n")
        public = _writeFile(os.path.join(self.dir, "public"),
                            _makeKey().public().toString("openssh"))
        missing = os.path.join(self.dir, "missing")
        for path, what in [(garbage, "is not an SSH private key"),
                           (public, "is a public key"), (missing, "cannot be read")]:
            service = ManholeService(self.golb, self.manholeConfig(host_key=path), MemoryReactor())
            e = self.assertRaises(ManholeError, service.startService)
            self.assertIn(f"manhole.host_key {path} {what}", str(e))

    def test_unwritableStateDir(self):
        """
        When the host key cannot be generated, the error says to set
        C{GOLB_STATE_DIR} or C{manhole.host_key}.
        """
        blocker = _writeFile(os.path.join(self.dir, "file"), b"")
        service = ManholeService(self.golb, self.manholeConfig(), MemoryReactor(),
                                 stateDir=os.path.join(blocker, "state"))
        e = self.assertRaises(ManholeError, service.startService)
        self.assertIn("GOLB_STATE_DIR", str(e))

    def test_listensOnConfiguredAddress(self):
        """
        The service is named C{manhole} and listens on C{manhole.address}.
        """
        memory = MemoryReactor()
        config = self.manholeConfig(address=_units.Address("127.0.0.1", 2222))
        service = ManholeService(self.golb, config, memory, stateDir=self.stateDir)
        service.startService()
        self.assertEqual(service.name, "manhole")
        [(port, factory, _backlog, interface)] = memory.tcpServers
        self.assertEqual((port, interface), (2222, "127.0.0.1"))
        self.assertIs(factory, service.factory)
        self.successResultOf(service.stopService())

    def test_nonLoopbackWarns(self):
        """
        Listening on an address other than loopback logs a warning that key
        authentication is the only protection; loopback does not.
        """
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        for host in ("127.0.0.1", "0.0.0.0"):
            config = self.manholeConfig(address=_units.Address(host, 2222))
            service = ManholeService(self.golb, config, MemoryReactor(), stateDir=self.stateDir)
            service.startService()
            self.successResultOf(service.stopService())
        warnings = [e for e in events if "not loopback" in e.get("log_format", "")]
        self.assertEqual([e["address"] for e in warnings], ["0.0.0.0:2222"])

    def test_stuckClientAborted(self):
        """
        Closing sessions for shutdown aborts a client that has not let go
        after L{CLOSE_TIMEOUT} seconds, and then reports them all closed.
        """
        clock = Clock()
        factory = ManholeFactory(Portal(ManholeRealm(self.golb, clock)), _makeKey(), clock)
        factory.doStart()
        self.addCleanup(factory.doStop)
        client = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        wire = StringTransport()
        aborts = []
        wire.abortConnection = lambda: aborts.append(True)
        client.makeConnection(wire)
        closing = factory.closeAll()
        self.assertTrue(wire.disconnecting)
        clock.advance(CLOSE_TIMEOUT - 0.5)
        self.assertEqual(aborts, [])
        self.assertNoResult(closing)
        clock.advance(0.5)
        self.assertEqual(aborts, [True])
        client.connectionLost(Failure(error.ConnectionAborted()))
        self.successResultOf(closing)
        self.assertEqual(factory.connections, set())
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_portInUse(self):
        """
        An address already in use fails the start.
        """
        first = self.startManhole()
        port = first.port.getHost().port
        service = ManholeService(self.golb, self.manholeConfig(
            address=_units.Address("127.0.0.1", port)), reactor, stateDir=self.stateDir)
        self.assertRaises(error.CannotListenError, service.startService)
        self.assertFalse(service.running)
        self.assertIsNone(service.port)


class StateDirTests(TestCase):
    """
    L{defaultStateDir}: where the generated host key goes.
    """

    def test_environmentWins(self):
        """
        C{GOLB_STATE_DIR} wins over everything.
        """
        self.assertEqual(defaultStateDir({"GOLB_STATE_DIR": "/srv/golb"}, systemDir="/"),
                         "/srv/golb")

    def test_systemDirWhenWritable(self):
        """
        A writable system directory (C{/var/lib/golb}) comes next.
        """
        system = self.mktemp()
        os.makedirs(system)
        self.assertEqual(defaultStateDir({"HOME": "/home/op"}, systemDir=system), system)

    def test_userStateDir(self):
        """
        Else the user's state directory: C{$XDG_STATE_HOME/golb}, by default
        C{~/.local/state/golb}.
        """
        missing = self.mktemp()
        self.assertEqual(defaultStateDir({"HOME": "/home/op"}, systemDir=missing),
                         "/home/op/.local/state/golb")
        self.assertEqual(
            defaultStateDir({"HOME": "/home/op", "XDG_STATE_HOME": "/st"}, systemDir=missing),
            "/st/golb",
        )


class LiveNamespaceTests(TestCase):
    """
    L{namespaceFor}: the names code at the prompt sees.
    """

    def setUp(self):
        self.golb = Golb(_config(2), reactor=MemoryReactor())
        self.addCleanup(self.golb.close)
        self.namespace = namespaceFor(self.golb, reactor)

    def execute(self, source: str):
        exec(compile(source, "<manhole>", "exec"), self.namespace)

    def test_names(self):
        """
        The namespace holds golb's objects, the reactor and the helpers.
        """
        self.assertIsInstance(self.namespace, LiveNamespace)
        self.execute("result = (golb, runtime, pools, config, reactor, len(backends))")
        self.assertEqual(self.namespace["result"], (
            self.golb, self.golb.runtime, self.golb.pools, self.golb.config, reactor, 4
        ))
        for name in ("pool", "backend", "setState", "status"):
            self.assertTrue(callable(self.namespace[name]), name)

    def test_liveAfterReload(self):
        """
        After a reload, names and functions defined earlier see the new
        objects, even before the next command refreshes the namespace.
        """
        self.execute("count = lambda: (len(pools), len(backends), runtime is golb.runtime)")
        self.golb.reload(_config(3))
        self.execute("now = count()")
        self.assertEqual(self.namespace["now"], (3, 6, True))
        self.assertIs(self.namespace["config"], self.golb.config)

    def test_refresh(self):
        """
        L{LiveNamespace.refresh} stores the current values, as C{dir()} and
        C{vars()} see them.
        """
        self.golb.reload(_config(1))
        self.namespace.refresh()
        self.assertIs(dict.get(self.namespace, "pools"), self.golb.pools)

    def test_userRebinding(self):
        """
        A live name the user assigns to is theirs until they delete it.
        """
        self.execute("pools = 'mine'")
        self.golb.reload(_config(3))
        self.namespace.refresh()
        self.execute("seen = pools")
        self.assertEqual(self.namespace["seen"], "mine")
        self.execute("del pools\nseen = len(pools)")
        self.assertEqual(self.namespace["seen"], 3)

    def test_poolAndBackend(self):
        """
        C{pool(name)} and C{backend(pool, id or URL)} find current objects;
        unknown names raise L{KeyError} listing the known ones.
        """
        self.execute("found = (pool('p1'), backend('p1', 'b2'), backend('p0', 'http://127.0.0.1:1'))")
        p1 = self.golb.pools["p1"]
        self.assertEqual(self.namespace["found"],
                         (p1, p1.backends[1], self.golb.pools["p0"].backends[0]))
        e = self.assertRaises(KeyError, self.execute, "pool('nope')")
        self.assertIn("pools: p0, p1", str(e))
        e = self.assertRaises(KeyError, self.execute, "backend('p0', 'nope')")
        self.assertIn("backends: b1, b2", str(e))

    def test_setState(self):
        """
        C{setState} sets a backend's admin state, and refuses unknown states.
        """
        backend = self.golb.pools["p0"].backends[0]
        self.execute("setState('p0', 'b1', 'maint')")
        self.assertEqual(backend.state, "maint")
        self.execute("setState('p0', 'b1', 'ready')")
        self.assertEqual(backend.state, "ready")
        self.assertNotEqual(backend.readySince, 0)
        e = self.assertRaises(ValueError, self.execute, "setState('p0', 'b1', 'off')")
        self.assertIn("ready, drain, maint", str(e))

    def test_status(self):
        """
        C{status()} prints each pool's backends with state and health.
        """
        written = []
        self.patch(sys, "stdout", type("Out", (), {"write": lambda self, s: written.append(s)})())
        self.execute("status()")
        text = "".join(written)
        self.assertIn("p0:\n", text)
        self.assertIn("b2", text)
        self.assertIn("ready", text)
