"""
Tests for L{golb.policies.auth}: HTTP basic authentication.
"""

import base64
import json
import os

import attr
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import LogLevel, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers
from zope.interface.verify import verifyObject

from golb.config import BasicAuthPolicy
from golb.errors import GolbError
from golb.policies import Chain, Context, Environment, IPolicy, States
from golb.policies.auth import (
    BasicAuth,
    _State,
    md5Crypt,
    parseAuthorization,
    parseHtpasswd,
    verifyPassword,
)
from golb.test.support import listenBackend, listenGolb
from golb.test.test_proxy import ProxyTestCase

# every password below is "s3cret" unless said otherwise
BCRYPT = b"$2b$04$xeI7Qqvkr05GcdDrOd7xPu9iRzlGmQn3Eh/gu8Z1.n4R4rDCvaMtq"
# "p\xc3\xa4ss" (UTF-8 "pass" with an a-umlaut), made with the 2a prefix
BCRYPT_2A = b"$2a$04$jt2UWBZGixneWAqy/RIW.OFIxjoo4IjmqxcEzDtFlYxcUTirrNyqy"
# 72 times "x"
BCRYPT_72 = b"$2b$04$CDQR0TWLuouk67nWIcj0OuA4/yan4wI0o1prHyhrdeKWvkoQ93EfO"
SHA = b"{SHA}/vNB+F2HQ559kaLUZbmHHvZrXpg="
# openssl passwd -apr1 -salt Zn2d6Ypw s3cret
APR1 = b"$apr1$Zn2d6Ypw$IsEguayyaNPRffhO12X/z1"
# openssl passwd -1 -salt abcdefgh s3cret
MD5_CRYPT = b"$1$abcdefgh$7.vq19w/w3Vm.hk1FOA7Q/"
# openssl passwd -6 -salt abc s3cret
SHA512_CRYPT = (b"$6$abc$Qciy6P8ZI4.BUgLFaLq4ucJ/kaRX8v1UyAM81WBAsuW.zwYw31yCKomfTgHAl"
                b"ZwPGi/aFdo83BhJQPQYtp74M0")

USERS = (
    b"# a comment\n"
    b"alice:" + BCRYPT + b"\n"
    b"yves:" + BCRYPT.replace(b"$2b$", b"$2y$") + b"\n"
    b"anna:" + BCRYPT_2A + b"\n"
    b"bob:" + SHA + b"\n"
    b"\n"
    b"carol:" + APR1 + b"\r\n"
    b"dave:" + MD5_CRYPT + b"\n"
)


def basic(user: bytes, password: bytes) -> bytes:
    """
    An C{Authorization} header value for C{user} and C{password}.
    """
    return b"Basic " + base64.b64encode(user + b":" + password)


class FakeThreadPool:
    """
    A thread pool whose work waits until the test runs it.

    @ivar calls: the work submitted and not yet run.
    """

    def __init__(self):
        self.calls = []

    def callInThreadWithCallback(self, onResult, function, *args, **kwargs):
        self.calls.append((onResult, function, args, kwargs))

    def runAll(self) -> int:
        """
        Run the pending work, as the threads would.

        @return: how many calls ran.
        """
        calls, self.calls = self.calls, []
        for onResult, function, args, kwargs in calls:
            try:
                result = function(*args, **kwargs)
            except Exception:
                onResult(False, Failure())
            else:
                onResult(True, result)
        return len(calls)


class ThreadReactor(Clock):
    """
    A L{Clock} with a L{FakeThreadPool}, enough for C{deferToThreadPool}.
    """

    def __init__(self):
        Clock.__init__(self)
        self.threadPool = FakeThreadPool()

    def getThreadPool(self):
        return self.threadPool

    def callFromThread(self, function, *args, **kwargs):
        function(*args, **kwargs)


class FakeRequest:
    """
    The part of a L{golb.listener.GolbRequest} basic auth looks at.
    """

    def __init__(self, *authorization: bytes):
        self.requestHeaders = Headers()
        if authorization:
            self.requestHeaders.setRawHeaders(b"authorization", list(authorization))


@attr.s(frozen=True, auto_attribs=True)
class ForwardingConfig:
    """
    A C{basic_auth} configuration with the proposed C{forward_authorization}
    key.
    """

    kind = "basic_auth"
    users_file: str
    realm: str = "golb"
    forward_authorization: bool = False


class BasicAuthTestsMixin:
    """
    A users file in a temporary directory and policies reading it.
    """

    def setUp(self):
        self.reactor = ThreadReactor()
        self.states = States()
        self.path = os.path.abspath(self.mktemp())
        self.writeUsers(USERS)
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def writeUsers(self, data: bytes, mtime=None) -> None:
        with open(self.path, "wb") as f:
            f.write(data)
        if mtime is not None:
            os.utime(self.path, (mtime, mtime))

    def policy(self, realm="golb", config=None) -> BasicAuth:
        if config is None:
            config = BasicAuthPolicy(users_file=self.path, realm=realm)
        return BasicAuth(config, Environment(self.reactor, self.states, "global"))

    def check(self, policy, request):
        """
        Run C{policy}'s request phase on C{request}, finishing any work it
        sent to threads.

        @return: what it answered (L{None} to let the request through).
        """
        result = policy.onRequest(request, Context("r", b"/"))
        if isinstance(result, Deferred):
            self.reactor.threadPool.runAll()
            result = self.successResultOf(result)
        return result

    def assertChallenge(self, result, realm=b'"golb"'):
        self.assertIsInstance(result, GolbError)
        self.assertEqual((result.status, result.code), (401, "unauthorized"))
        self.assertEqual(
            list(result.headers),
            [(b"WWW-Authenticate", b"Basic realm=" + realm + b', charset="UTF-8"')],
        )

    def messages(self, level):
        from twisted.logger import formatEvent

        return [formatEvent(e) for e in self.events if e.get("log_level") == level]


class BasicAuthTests(BasicAuthTestsMixin, SynchronousTestCase):
    """
    L{BasicAuth} against the password formats of htpasswd.
    """

    def test_interface(self):
        """
        L{BasicAuth} provides L{IPolicy}.
        """
        verifyObject(IPolicy, self.policy())

    def test_goodPasswords(self):
        """
        The right password of a bcrypt (C{$2b$}, C{$2y$}, C{$2a$}), C{{SHA}},
        C{$apr1$} or C{$1$} user lets the request through.
        """
        policy = self.policy()
        for user, password in ((b"alice", b"s3cret"), (b"yves", b"s3cret"),
                               (b"anna", "päss".encode()), (b"bob", b"s3cret"),
                               (b"carol", b"s3cret"), (b"dave", b"s3cret")):
            request = FakeRequest(basic(user, password))
            self.assertIsNone(self.check(policy, request), user)

    def test_authorizationRemoved(self):
        """
        Once authenticated, the request goes on without its C{Authorization}
        header: the backend never sees the password.
        """
        request = FakeRequest(basic(b"bob", b"s3cret"))
        self.assertIsNone(self.check(self.policy(), request))
        self.assertFalse(request.requestHeaders.hasHeader(b"authorization"))

    def test_forwardAuthorization(self):
        """
        With C{forward_authorization: true}, the backend gets the
        C{Authorization} header too.
        """
        config = ForwardingConfig(users_file=self.path, forward_authorization=True)
        request = FakeRequest(basic(b"bob", b"s3cret"))
        self.assertIsNone(self.check(self.policy(config=config), request))
        self.assertEqual(request.requestHeaders.getRawHeaders(b"authorization"),
                         [basic(b"bob", b"s3cret")])

    def test_badPassword(self):
        """
        A wrong password, in every format, gets 401 with a C{Basic}
        challenge for the realm.
        """
        policy = self.policy()
        for user in (b"alice", b"yves", b"anna", b"bob", b"carol", b"dave"):
            request = FakeRequest(basic(user, b"s3cret!"))
            self.assertChallenge(self.check(policy, request))
            self.assertTrue(request.requestHeaders.hasHeader(b"authorization"))

    def test_sameAnswer(self):
        """
        No header, a malformed one, another scheme, two headers, an unknown
        user and a wrong password all get the very same answer: nothing
        tells which users exist.
        """
        policy = self.policy()
        requests = [
            FakeRequest(),
            FakeRequest(b"Basic"),
            FakeRequest(b"Basic !!!not base64"),
            FakeRequest(b"Basic " + base64.b64encode(b"no colon")),
            FakeRequest(b"Basic " + base64.b64encode(b":empty user")),
            FakeRequest(b"Bearer abc"),
            FakeRequest(basic(b"bob", b"s3cret"), basic(b"bob", b"s3cret")),
            FakeRequest(basic(b"mallory", b"s3cret")),
            FakeRequest(basic(b"alice", b"wrong")),
        ]
        answers = [self.check(policy, request) for request in requests]
        for answer in answers:
            self.assertChallenge(answer)
            self.assertEqual(answer.message, answers[0].message)

    def test_schemeCase(self):
        """
        The C{Basic} scheme name is not case sensitive.
        """
        value = basic(b"bob", b"s3cret").replace(b"Basic", b"bAsIc")
        self.assertIsNone(self.check(self.policy(), FakeRequest(value)))

    def test_realm(self):
        """
        The challenge names the configured realm as a quoted string, quotes
        and backslashes escaped, control characters blanked.
        """
        result = self.check(self.policy(realm='Staff "only"\\\r\n'), FakeRequest())
        self.assertChallenge(result, realm=b'"Staff \\"only\\"\\\\  "')

    def test_longBcryptPassword(self):
        """
        As with htpasswd, only the first 72 bytes of a password count for
        a bcrypt entry (the bcrypt library would refuse longer ones).
        """
        self.writeUsers(b"long:" + BCRYPT_72 + b"\n")
        policy = self.policy()
        self.assertIsNone(self.check(policy, FakeRequest(basic(b"long", b"x" * 80))))
        self.assertChallenge(self.check(policy, FakeRequest(basic(b"long", b"x" * 71))))

    def test_exampleFile(self):
        """
        The user of C{config/examples/users.htpasswd} is C{demo}, password
        C{demo}.
        """
        here = os.path.dirname(os.path.abspath(__file__))
        path = os.path.join(here, "..", "..", "config", "examples", "users.htpasswd")
        policy = self.policy(config=BasicAuthPolicy(users_file=os.path.abspath(path)))
        self.assertIsNone(self.check(policy, FakeRequest(basic(b"demo", b"demo"))))

    def test_unsupportedFormats(self):
        """
        Entries in formats golb does not check (SHA-crypt, DES crypt,
        plain text, malformed hashes) never match, and the file's problems
        are logged with their line, without the hashes.
        """
        self.writeUsers(
            b"sha512:" + SHA512_CRYPT + b"\n"
            b"des:abJnggxhB/yWI\n"
            b"plain:s3cret\n"
            b"broken:$2b$04$short\n"
            b"no colon here\n"
            b"bob:" + SHA + b"\n"
            b"bob:{SHA}other\n"
        )
        policy = self.policy()
        for user, password in ((b"sha512", b"s3cret"), (b"des", b"s3cret"),
                               (b"plain", b"s3cret"), (b"broken", b"s3cret")):
            self.assertChallenge(self.check(policy, FakeRequest(basic(user, password))))
        self.assertIsNone(self.check(policy, FakeRequest(basic(b"bob", b"s3cret"))))
        warnings = "\n".join(self.messages(LogLevel.warn))
        for expected in ("line 1: the password of 'sha512' is SHA-crypt",
                         "line 2: the password of 'des' is DES crypt(3)",
                         "line 3: the password of 'plain' is an unknown format",
                         "line 4: the password of 'broken' is a malformed hash",
                         "line 5 is not USER:HASH",
                         "line 7: user 'bob' is listed again; the first one counts"):
            self.assertIn(expected, warnings)
        self.assertNotIn("s3cret", warnings)
        self.assertNotIn("Qciy6P8ZI4", warnings)

    def test_stackedPolicies(self):
        """
        Two C{basic_auth} policies in one chain (global and route) both see
        the credentials, and the backend sees none.
        """
        other = os.path.abspath(self.mktemp())
        with open(other, "wb") as f:
            f.write(b"bob:" + SHA + b"\n")
        env = Environment(self.reactor, self.states, "route:x")
        chain = Chain([self.policy(), BasicAuth(BasicAuthPolicy(users_file=other), env)])
        request = FakeRequest(basic(b"bob", b"s3cret"))
        self.assertIsNone(chain.runRequest(request, Context("x", b"/")))
        self.assertFalse(request.requestHeaders.hasHeader(b"authorization"))
        request = FakeRequest(basic(b"carol", b"s3cret"))
        self.assertChallenge(chain.runRequest(request, Context("x", b"/")))


class BcryptThreadTests(BasicAuthTestsMixin, SynchronousTestCase):
    """
    bcrypt checks run in threads and are remembered once they succeed.
    """

    def test_inThread(self):
        """
        An uncached bcrypt check does not run in the reactor: the request
        phase answers with a L{Deferred} that fires only once the thread
        pool has done the work.
        """
        policy = self.policy()
        request = FakeRequest(basic(b"alice", b"s3cret"))
        result = policy.onRequest(request, Context("r", b"/"))
        self.assertIsInstance(result, Deferred)
        self.assertNoResult(result)
        self.assertEqual(len(self.reactor.threadPool.calls), 1)
        self.assertIs(self.reactor.threadPool.calls[0][1], verifyPassword)
        self.assertEqual(self.reactor.threadPool.runAll(), 1)
        self.assertIsNone(self.successResultOf(result))
        self.assertFalse(request.requestHeaders.hasHeader(b"authorization"))

    def test_cached(self):
        """
        Once a user's bcrypt password was verified, the same credentials are
        let through at once, without another bcrypt computation.
        """
        policy = self.policy()
        self.assertIsNone(self.check(policy, FakeRequest(basic(b"alice", b"s3cret"))))
        result = policy.onRequest(FakeRequest(basic(b"alice", b"s3cret")), Context("r", b"/"))
        self.assertIsNone(result)
        self.assertEqual(self.reactor.threadPool.calls, [])

    def test_failuresNotCached(self):
        """
        A wrong password is checked again (in a thread) every time.
        """
        policy = self.policy()
        for _ in range(2):
            result = policy.onRequest(FakeRequest(basic(b"alice", b"nope")), Context("r", b"/"))
            self.assertIsInstance(result, Deferred)
            self.assertEqual(self.reactor.threadPool.runAll(), 1)
            self.assertChallenge(self.successResultOf(result))

    def test_cacheFollowsFile(self):
        """
        When a user's entry changes, the old password stops working at once,
        even though it had been verified before.
        """
        policy = self.policy()
        self.assertIsNone(self.check(policy, FakeRequest(basic(b"alice", b"s3cret"))))
        self.writeUsers(b"alice:" + BCRYPT_72 + b"\n", mtime=1000)
        self.reactor.advance(1)
        self.assertChallenge(self.check(policy, FakeRequest(basic(b"alice", b"s3cret"))))
        self.assertIsNone(self.check(policy, FakeRequest(basic(b"alice", b"x" * 72))))

    def test_concurrentChecksShared(self):
        """
        Simultaneous requests with the same credentials share one bcrypt
        computation.
        """
        policy = self.policy()
        results = [policy.onRequest(FakeRequest(basic(b"alice", b"s3cret")), Context("r", b"/"))
                   for _ in range(3)]
        self.assertEqual(self.reactor.threadPool.runAll(), 1)
        for result in results:
            self.assertIsNone(self.successResultOf(result))

    def test_unknownUserTakesAsLong(self):
        """
        An unknown user's password is checked against another bcrypt entry
        in a thread too (so answer times do not reveal who exists), and
        refused.
        """
        policy = self.policy()
        result = policy.onRequest(FakeRequest(basic(b"mallory", b"s3cret")), Context("r", b"/"))
        self.assertIsInstance(result, Deferred)
        self.assertEqual(self.reactor.threadPool.runAll(), 1)
        self.assertChallenge(self.successResultOf(result))
        result = policy.onRequest(FakeRequest(basic(b"mallory", b"s3cret")), Context("r", b"/"))
        self.assertIsInstance(result, Deferred)

    def test_keptAcrossReloads(self):
        """
        A configuration reload that keeps the policy keeps the verified
        credentials: no new bcrypt computation.
        """
        self.assertIsNone(self.check(self.policy(), FakeRequest(basic(b"alice", b"s3cret"))))
        self.states.begin()
        policy = self.policy()
        self.states.commit()
        self.assertIsNone(policy.onRequest(FakeRequest(basic(b"alice", b"s3cret")),
                                           Context("r", b"/")))

    def test_threadFailure(self):
        """
        A bcrypt entry the bcrypt library refuses gives 401, and the error
        is logged.
        """
        self.writeUsers(b"odd:$2b$99$" + b"a" * 53 + b"\n")
        result = self.check(self.policy(), FakeRequest(basic(b"odd", b"s3cret")))
        self.assertChallenge(result)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    def test_cacheBounded(self):
        """
        At most C{cacheSize} verified credentials are remembered, the least
        recently used forgotten first.
        """
        state = _State(self.path, self.reactor, cacheSize=3)
        keys = [state.key(b"u%d" % i, b"p", b"h") for i in range(4)]
        for key in keys[:3]:
            state.remember(key)
        self.assertTrue(state.isVerified(keys[0]))
        state.remember(keys[3])
        self.assertEqual([state.isVerified(key) for key in keys], [True, False, True, True])


class ReloadTests(BasicAuthTestsMixin, SynchronousTestCase):
    """
    The users file is re-read when it changes.
    """

    def test_newUser(self):
        """
        A user added to the file can log in once the file was looked at
        again, at most a second later.
        """
        policy = self.policy()
        request = FakeRequest(basic(b"erin", b"s3cret"))
        self.assertChallenge(self.check(policy, request))
        self.writeUsers(USERS + b"erin:" + SHA + b"\n", mtime=1000)
        self.reactor.advance(0.5)
        self.assertChallenge(self.check(policy, FakeRequest(basic(b"erin", b"s3cret"))))
        self.reactor.advance(0.5)
        self.assertIsNone(self.check(policy, FakeRequest(basic(b"erin", b"s3cret"))))
        self.assertIn("changed: 7 users", "\n".join(self.messages(LogLevel.info)))

    def test_removedUser(self):
        """
        A user removed from the file is refused, even with credentials that
        were verified before.
        """
        policy = self.policy()
        self.assertIsNone(self.check(policy, FakeRequest(basic(b"carol", b"s3cret"))))
        self.writeUsers(b"bob:" + SHA + b"\n", mtime=1000)
        self.reactor.advance(1)
        self.assertChallenge(self.check(policy, FakeRequest(basic(b"carol", b"s3cret"))))

    def test_missingFile(self):
        """
        While the file is missing, every request gets 401 and one error is
        logged; when it is back, its users can log in again.
        """
        policy = self.policy()
        self.assertIsNone(self.check(policy, FakeRequest(basic(b"alice", b"s3cret"))))
        os.rename(self.path, self.path + ".away")
        for _ in range(3):
            self.reactor.advance(1)
            self.assertChallenge(self.check(policy, FakeRequest(basic(b"alice", b"s3cret"))))
        errors = self.messages(LogLevel.error)
        self.assertEqual(len(errors), 1)
        self.assertIn("cannot be read", errors[0])
        os.rename(self.path + ".away", self.path)
        self.reactor.advance(1)
        self.assertIsNone(self.check(policy, FakeRequest(basic(b"alice", b"s3cret"))))
        self.assertIn("readable again", "\n".join(self.messages(LogLevel.info)))


class HelperTests(SynchronousTestCase):
    """
    The password and header primitives.
    """

    def test_apr1Vectors(self):
        """
        L{md5Crypt} computes what C{openssl passwd -apr1} (and C{-1}) does,
        for empty, long and non-ASCII passwords and short salts.
        """
        vectors = [
            (b"s3cret", b"$apr1$Zn2d6Ypw$IsEguayyaNPRffhO12X/z1"),
            (b"PASSWORD", b"$apr1$SALTsalt$IQBq/.yGRG1WlXvW6F/CR/"),
            (b"", b"$apr1$ab$S8K6Sgp3W8c9Jb6LxgywZ."),
            (b"a much longer password that exceeds sixteen bytes and more",
             b"$apr1$x.y/Z9$QCuCs3B12qZ9IcAu6GZuT1"),
            ("wörd".encode(), b"$apr1$UTF8salt$gyqsFETHZ.eeFKuYUG9wG."),
        ]
        for password, expected in vectors:
            salt = expected.split(b"$")[2]
            self.assertEqual(md5Crypt(password, salt), expected)
            self.assertTrue(verifyPassword(password, expected))
            self.assertFalse(verifyPassword(password + b"x", expected))
        self.assertEqual(md5Crypt(b"s3cret", b"abcdefgh", b"$1$"), MD5_CRYPT)

    def test_parseAuthorization(self):
        """
        L{parseAuthorization} gives the user and password of one C{Basic}
        header; the password may contain colons.
        """
        self.assertEqual(parseAuthorization([basic(b"u", b"p:w:d")]), (b"u", b"p:w:d"))
        self.assertEqual(parseAuthorization([b"basic  " + base64.b64encode(b"u:")]), (b"u", b""))
        self.assertIsNone(parseAuthorization(None))
        self.assertIsNone(parseAuthorization([basic(b"u", b"p")] * 2))

    def test_parseHtpasswd(self):
        """
        L{parseHtpasswd} reads C{user:hash} lines, ignoring comments, blank
        lines, carriage returns and fields after the hash.
        """
        users, problems = parseHtpasswd(b"# c\n\nbob:" + SHA + b":extra\r\n  carol:" + APR1)
        self.assertEqual(users, {b"bob": SHA, b"carol": APR1})
        self.assertEqual(problems, [])


def golbYAML(backendPort: int, usersFile: str) -> str:
    """
    A golb config with a C{basic_auth} route in front of one backend.
    """
    return (
        "listeners: [{name: web, address: '127.0.0.1:0'}]\n"
        "backend_pools:\n  - name: default\n"
        f"    backends: [{{url: 'http://127.0.0.1:{backendPort}'}}]\n"
        "routing_rules:\n"
        "  - match: {path: '/private/*'}\n    target_pool: default\n"
        f"    policies: [{{basic_auth: {{users_file: {json.dumps(usersFile)}, realm: Staff}}}}]\n"
    )


class BasicAuthEndToEndTests(ProxyTestCase):
    """
    Basic authentication in a real golb listener, bcrypt in the real
    reactor's thread pool.
    """

    def start(self):
        path = os.path.abspath(self.mktemp())
        with open(path, "wb") as f:
            f.write(USERS)
        port, self.backend = listenBackend(self)
        golb, golbPort, site = listenGolb(self, golbYAML(port.getHost().port, path))
        self.base = f"http://127.0.0.1:{golbPort.getHost().port}"

    @defer.inlineCallbacks
    def test_goodCredentials(self):
        """
        Users with bcrypt, C{{SHA}} and C{$apr1$} passwords reach the
        backend, which does not see their C{Authorization} header.
        """
        self.start()
        for user in (b"alice", b"bob", b"carol"):
            response, body = yield self.get(
                "/private/x", headers={b"Authorization": [basic(user, b"s3cret")]})
            self.assertEqual(response.code, 200, user)
            self.assertIn(b"GET /private/x HTTP/1.1", body)
            self.assertNotIn(b"authorization", body.lower())
        self.assertEqual(self.backend.requests, 3)

    @defer.inlineCallbacks
    def test_challenge(self):
        """
        Without credentials, or with a wrong password, the client gets 401
        with a C{WWW-Authenticate} challenge and the same body; the backend
        sees nothing.  Routes without the policy are not affected.
        """
        self.start()
        missing, missingBody = yield self.get("/private/x")
        wrong, wrongBody = yield self.get(
            "/private/x", headers={b"Authorization": [basic(b"alice", b"nope")]})
        for response in (missing, wrong):
            self.assertEqual(response.code, 401)
            self.assertEqual(response.headers.getRawHeaders(b"www-authenticate"),
                             [b'Basic realm="Staff", charset="UTF-8"'])
            self.assertEqual(response.headers.getRawHeaders(b"x-golb-error"), [b"unauthorized"])
        self.assertEqual(missingBody, wrongBody)
        self.assertEqual(self.backend.requests, 0)
        public, _ = yield self.get("/public")
        self.assertEqual(public.code, 200)
