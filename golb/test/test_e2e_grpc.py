"""
End-to-end HTTP/2 and gRPC: C{twistd golb} in front of grpcio servers (run
by L{golb.test.grpcfixture} in a CPython with grpcio, also when the suite
runs on PyPy), checked with grpcio clients, h2load and nghttp.
"""

import os
import shutil
import signal
import subprocess

from twisted.internet import defer, reactor, threads
from twisted.trial.unittest import TestCase

from golb.test.grpcfixture import requireGrpcPython, runClient, startServer
from golb.test.support import freePort, waitUntil
from golb.test.test_e2e import runTwistd
from golb.test.test_tls import PKI


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise AssertionError(f"{name} is missing: apt-get install -y nghttp2-client")
    return path


class GrpcEndToEndTests(TestCase):
    """
    gRPC calls through golb (an h2c listener, an h2c pool of two grpcio
    servers with gRPC health checks).
    """

    timeout = 120

    @defer.inlineCallbacks
    def setUp(self):
        requireGrpcPython()
        self.ports = []
        self.servers = []
        for name in ("s1", "s2"):
            port, process = yield startServer(self, name)
            self.ports.append(port)
            self.servers.append(process)
        self.listen = freePort()
        backends = "".join(f"      - {{name: {name}, url: http://127.0.0.1:{port}}}\n"
                           for name, port in zip(("s1", "s2"), self.ports))
        self.protocol, _ = runTwistd(self, f"""\
listeners:
  - {{name: grpc, address: "127.0.0.1:{self.listen}", http2: {{h2c: true}}}}
backend_pools:
  - name: default
    protocol: h2c
    backends:
{backends}    health_check: {{type: grpc, interval: 0.25s, timeout: 0.25s,
                    unhealthy_threshold: 2, healthy_threshold: 1}}
""")
        yield self.protocol.ready
        self.target = f"127.0.0.1:{self.listen}"

    def call(self, *args):
        return runClient(["--target", self.target, *args])

    @defer.inlineCallbacks
    def test_calls(self):
        """
        Unary calls spread over both servers (per call, on one client
        connection); a bidirectional stream answers message by message; a
        server's error status arrives intact; an expired deadline is
        DEADLINE_EXCEEDED.
        """
        result = yield self.call("--call", "unary", "--count", "10", "--payload", "x")
        self.assertEqual(result["code"], "OK")
        self.assertEqual(sorted(set(result["replies"])), ["s1:x", "s2:x"])

        # the client sends each message only after the previous reply: a
        # proxy holding the request stream back would time out here
        result = yield self.call("--call", "bidi", "--count", "5", "--payload", "m",
                                 "--timeout", "10")
        self.assertEqual(result["code"], "OK")
        self.assertEqual(len(result["replies"]), 5)
        server = result["replies"][0].split(":")[0]
        self.assertEqual(result["replies"], [f"{server}:m-{i}" for i in range(5)])

        result = yield self.call("--call", "fail", "--payload", "thing")
        self.assertEqual(result["code"], "NOT_FOUND")
        self.assertEqual(result["details"], "no such thing: thing")

        result = yield self.call("--call", "slow", "--payload", "3", "--timeout", "0.5")
        self.assertEqual(result["code"], "DEADLINE_EXCEEDED")

    @defer.inlineCallbacks
    def test_deadline(self):
        """
        golb keeps a call's grpc-timeout itself: a client that sent one and
        waits longer gets DEADLINE_EXCEEDED from golb when it runs out.
        """
        from golb.grpc import frameMessage
        from golb.h2client import H2Pool
        from golb.upstream import UpstreamRequest

        pool = H2Pool(reactor, "127.0.0.1", self.listen)
        self.addCleanup(pool.close)
        started = reactor.seconds()
        response = yield pool.request(UpstreamRequest(
            method=b"POST", target=b"/test.Echo/Slow",
            headers=[(b"Host", b"grpc.test"), (b"Content-Type", b"application/grpc"),
                     (b"TE", b"trailers"), (b"grpc-timeout", b"300m")],
            body=frameMessage(b"3")))
        self.assertLess(reactor.seconds() - started, 2.5)
        self.assertEqual(response.code, 200)
        self.assertEqual(response.getHeader(b"grpc-status"), b"4")
        self.assertEqual(response.getHeader(b"x-golb-error"), b"upstream-timeout")
        response.stopProducing()

    @defer.inlineCallbacks
    def test_killedServerTakenOut(self):
        """
        A killed server is taken out by the gRPC health checks: every call
        then goes to the other one and none fails.
        """
        self.servers[1].signalProcess(signal.SIGKILL)
        yield from waitUntil(lambda: b"default/s2 is unhealthy" in self.protocol.output,
                             timeout=20)
        result = yield self.call("--call", "unary", "--count", "10", "--payload", "y")
        self.assertEqual(result["code"], "OK")
        self.assertEqual(result["replies"], ["s1:y"] * 10)

    @defer.inlineCallbacks
    def test_notServing(self):
        """
        A server whose health service says NOT_SERVING is taken out, and
        comes back when it serves again.
        """
        self.servers[0].signalProcess(signal.SIGUSR1)
        yield from waitUntil(lambda: b"default/s1 is unhealthy" in self.protocol.output,
                             timeout=20)
        self.assertIn(b"NOT_SERVING", self.protocol.output)
        result = yield self.call("--call", "unary", "--count", "6", "--payload", "z")
        self.assertEqual(result["replies"], ["s2:z"] * 6)
        self.servers[0].signalProcess(signal.SIGUSR2)
        yield from waitUntil(lambda: b"default/s1 is healthy again" in self.protocol.output,
                             timeout=20)


class HTTP2EndToEndTests(TestCase):
    """
    h2load and nghttp through golb, over TLS with ALPN h2 and over h2c.
    """

    timeout = 120

    @defer.inlineCallbacks
    def setUp(self):
        from golb.test.support import listenBackend

        port, _ = listenBackend(self, name="b1")
        self.tlsPort, self.h2cPort = freePort(), freePort()
        pki = PKI(os.path.abspath(self.mktemp()))
        issued = pki.issue("golb", dnsNames=["localhost"])
        self.ca = pki.ca.cert
        self.protocol, _ = runTwistd(self, f"""\
listeners:
  - name: tls
    address: "127.0.0.1:{self.tlsPort}"
    tls:
      certificates: [{{cert: "{issued.cert}", key: "{issued.key}"}}]
      alpn: [h2, http/1.1]
  - {{name: h2c, address: "127.0.0.1:{self.h2cPort}", http2: {{h2c: true}}}}
backend_pools:
  - name: default
    backends: [{{url: "http://127.0.0.1:{port.getHost().port}"}}]
""")
        yield self.protocol.ready

    def runTool(self, *argv):
        return threads.deferToThread(
            subprocess.run, list(argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            timeout=60, env=dict(os.environ, SSL_CERT_FILE=self.ca))

    @defer.inlineCallbacks
    def test_h2load(self):
        """
        h2load's requests all succeed over TLS (ALPN h2) and over h2c.
        """
        h2load = _tool("h2load")
        for url in (f"https://localhost:{self.tlsPort}/", f"http://127.0.0.1:{self.h2cPort}/"):
            done = yield self.runTool(h2load, "-n", "400", "-c", "4", "-m", "10", url)
            out = done.stdout.decode()
            self.assertIn("400 succeeded, 0 failed, 0 errored", out, out)
            self.assertIn("Application protocol: h2", out)

    @defer.inlineCallbacks
    def test_nghttp(self):
        """
        nghttp negotiates h2 with ALPN and gets the backend's answer.
        """
        nghttp = _tool("nghttp")
        done = yield self.runTool(nghttp, "-nv", f"https://localhost:{self.tlsPort}/hello")
        out = done.stdout.decode()
        self.assertIn("The negotiated protocol: h2", out, out)
        self.assertIn(":status: 200", out)
        done = yield self.runTool(nghttp, "-v", f"http://127.0.0.1:{self.h2cPort}/hello")
        out = done.stdout.decode()
        self.assertIn(":status: 200", out, out)
        self.assertIn("GET /hello HTTP/1.1", out)

