"""
Tests for L{golb.test.grpcfixture}: its gRPC server and client, run as
subprocesses by an interpreter with grpcio, talking to each other directly
(no golb in between).

Skipped when no interpreter with grpcio is found (on PyPy, the checkout's
CPython C{.venv} is used when it has grpcio; C{GOLB_GRPC_PYTHON} names
another).
"""

import datetime
import os
import signal
import socket

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase

from golb.test.grpcfixture import (
    FixtureError,
    _parseHealth,
    requireGrpcPython,
    runClient,
    startServer,
)


def selfSigned(directory: str, name: str):
    """
    Write a self-signed certificate for the DNS name C{name} and its key into
    C{directory}.

    @return: C{(certificate file, key file)}.
    """
    os.makedirs(directory, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert = os.path.join(directory, "cert.pem")
    keyFile = os.path.join(directory, "key.pem")
    with open(cert, "wb") as f:
        f.write(certificate.public_bytes(serialization.Encoding.PEM))
    with open(keyFile, "wb") as f:
        f.write(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ))
    return cert, keyFile


class ParseHealthTests(SynchronousTestCase):
    """
    The client's hand-written C{HealthCheckResponse} decoder.
    """

    def test_status(self):
        """
        Field 1 is the status; an empty message is C{UNKNOWN} (0).
        """
        self.assertEqual(_parseHealth(b"\x08\x01"), 1)
        self.assertEqual(_parseHealth(b"\x08\x02"), 2)
        self.assertEqual(_parseHealth(b""), 0)

    def test_unknownFieldsSkipped(self):
        """
        Unknown varint, length-delimited and fixed-size fields are skipped.
        """
        data = b"\x10\x96\x01" + b"\x1a\x03abc" + b"\x21" + b"\x00" * 8 + b"\x08\x03"
        self.assertEqual(_parseHealth(data), 3)


class FixtureTests(TestCase):
    """
    The fixture server and client, against each other.
    """

    timeout = 60

    def setUp(self):
        requireGrpcPython()

    def target(self, port: int) -> str:
        return f"127.0.0.1:{port}"

    @defer.inlineCallbacks
    def test_unaryRepliesNameTheServer(self):
        """
        Unary calls to each of two servers are answered C{NAME:payload} by
        that server.
        """
        (portA, _), (portB, _) = yield defer.gatherResults(
            [startServer(self, "a"), startServer(self, "b")])
        self.assertNotEqual(portA, portB)
        a, b = yield defer.gatherResults([
            runClient(["--target", self.target(portA), "--call", "unary", "--count", 2]),
            runClient(["--target", self.target(portB), "--call", "unary", "--count", 2,
                       "--payload", "hi"]),
        ])
        self.assertEqual(a, {"replies": ["a:hello", "a:hello"], "code": "OK"})
        self.assertEqual(b, {"replies": ["b:hi", "b:hi"], "code": "OK"})

    @defer.inlineCallbacks
    def test_bidiInOrder(self):
        """
        One bidirectional call gets a reply for each message, in order, each
        before the client sends the next.
        """
        port, _ = yield startServer(self, "a")
        result = yield runClient(["--target", self.target(port), "--call", "bidi",
                                  "--count", 5, "--payload", "m", "--timeout", 10])
        self.assertEqual(result, {"replies": [f"a:m-{i}" for i in range(5)], "code": "OK"})

    @defer.inlineCallbacks
    def test_failNotFound(self):
        """
        C{Fail} ends with C{NOT_FOUND} and details naming the payload.
        """
        port, _ = yield startServer(self, "a")
        result = yield runClient(["--target", self.target(port), "--call", "fail",
                                  "--payload", "thing 1"])
        self.assertEqual(result, {"code": "NOT_FOUND", "details": "no such thing: thing 1"})

    @defer.inlineCallbacks
    def test_slowDeadline(self):
        """
        A call slower than its deadline ends with C{DEADLINE_EXCEEDED}; and
        the server still stops promptly (the slow handler sees the
        cancellation).
        """
        port, _ = yield startServer(self, "a")
        result = yield runClient(["--target", self.target(port), "--call", "slow",
                                  "--payload", 30, "--timeout", 0.2])
        self.assertEqual(result["code"], "DEADLINE_EXCEEDED")
        self.assertEqual(result["replies"], [])

    @defer.inlineCallbacks
    def test_health(self):
        """
        The health check says C{SERVING}, C{NOT_SERVING} after C{SIGUSR1},
        and C{SERVING} again after C{SIGUSR2}.
        """
        port, process = yield startServer(self, "a")
        args = ["--target", self.target(port), "--call", "health"]
        result = yield runClient(args)
        self.assertEqual(result, {"code": "OK", "status": "SERVING"})
        for number, expected in ((signal.SIGUSR1, "NOT_SERVING"),
                                 (signal.SIGUSR2, "SERVING")):
            process.signalProcess(number)
            # The signal arrives asynchronously; give it a few chances.
            for _ in range(20):
                result = yield runClient(args)
                if result["status"] == expected:
                    break
                yield deferLater(reactor, 0.05, lambda: None)
            self.assertEqual(result, {"code": "OK", "status": expected})

    @defer.inlineCallbacks
    def test_tls(self):
        """
        With C{--tls}, the server speaks TLS, and the client verifies it with
        C{--tls-ca} and C{--authority}.
        """
        cert, key = selfSigned(self.mktemp(), "grpc.example")
        port, _ = yield startServer(self, "t", tls=(cert, key))
        result = yield runClient(["--target", self.target(port), "--call", "unary",
                                  "--tls-ca", cert, "--authority", "grpc.example"])
        self.assertEqual(result, {"replies": ["t:hello"], "code": "OK"})

    @defer.inlineCallbacks
    def test_serverCannotListen(self):
        """
        A server that cannot listen fails L{startServer} with
        L{FixtureError}, saying why.
        """
        taken = socket.socket()
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        self.addCleanup(taken.close)
        d = startServer(self, "a", port=taken.getsockname()[1])
        error = yield self.assertFailure(d, FixtureError)
        self.assertIn("before ready", str(error))
        self.assertIn("cannot listen", str(error))

    @defer.inlineCallbacks
    def test_clientUsageError(self):
        """
        A client exiting non-zero fails L{runClient} with L{FixtureError}
        and its standard error.
        """
        d = runClient(["--target", "127.0.0.1:1", "--call", "nonsense"])
        error = yield self.assertFailure(d, FixtureError)
        self.assertIn("exited with code 2", str(error))
        self.assertIn("invalid choice", str(error))
