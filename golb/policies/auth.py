"""
C{basic_auth}: HTTP basic authentication against an htpasswd file.

Password entries may be bcrypt (C{$2y$}, C{$2b$}, C{$2a$}; C{htpasswd -B}),
Apache MD5 (C{$apr1$}, C{htpasswd}'s default, and its C{$1$} md5-crypt
cousin) or C{{SHA}} (C{htpasswd -s}).  Other formats (DES crypt(3), SHA-crypt
C{$5$}/C{$6$}, plain text) are refused: logged when the file is read, and
never matched.

bcrypt is slow on purpose (tens to hundreds of milliseconds), so bcrypt
checks run in the reactor's thread pool and the request phase returns a
L{Deferred}; successful checks are remembered (a bounded LRU of keyed hashes
of user, password and file entry), so a client sending the same credentials
again is answered at once.  The file is re-read when it changes, checked at
most once a second.

Every failure (no or malformed C{Authorization}, unknown user, wrong
password, unreadable file) gets the same 401 and C{WWW-Authenticate}
challenge; an unknown user's password is still checked against another
entry of the file so that the time taken does not tell who exists.
"""

import base64
import binascii
import hashlib
import hmac
import os
import re
from collections import OrderedDict
from typing import Dict, List, Optional, Tuple

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure

from golb.errors import GolbError
from golb.policies import Policy

__all__ = [
    "BasicAuth",
    "Htpasswd",
    "md5Crypt",
    "parseAuthorization",
    "parseHtpasswd",
    "scheme",
    "verifyPassword",
]

_BCRYPT = re.compile(rb"^\$2[aby]\$[0-9]{2}\$[./A-Za-z0-9]{53}$")
_MD5 = re.compile(rb"^(\$apr1\$|\$1\$)([^$]{0,8})\$[./0-9A-Za-z]{22}$")
_SHA = re.compile(rb"^\{SHA\}[A-Za-z0-9+/]{27}=$")

# bcrypt only looks at the first 72 bytes of a password (htpasswd truncates
# too); the bcrypt package refuses longer ones instead.
_BCRYPT_MAX = 72

_ITOA64 = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def _to64(value: int, count: int) -> bytes:
    out = bytearray()
    for _ in range(count):
        out.append(_ITOA64[value & 0x3F])
        value >>= 6
    return bytes(out)


def md5Crypt(password: bytes, salt: bytes, magic: bytes = b"$apr1$") -> bytes:
    """
    The MD5-based crypt of Poul-Henning Kamp, as Apache's C{$apr1$} (or,
    with C{magic=b"$1$"}, crypt(3)'s md5-crypt) computes it.

    @param password: the password.
    @param salt: up to 8 salt characters (more are ignored).
    @param magic: C{b"$apr1$"} or C{b"$1$"}.
    @return: the whole entry, C{magic + salt + b"$" + 22 characters}.
    """
    salt = salt[:8]
    md5 = hashlib.md5
    final = md5(password + salt + password).digest()
    context = [password, magic, salt]
    length = len(password)
    while length > 0:
        context.append(final[:min(16, length)])
        length -= 16
    bits = len(password)
    while bits:
        context.append(b"\0" if bits & 1 else password[:1])
        bits >>= 1
    final = md5(b"".join(context)).digest()
    for i in range(1000):
        head = password if i & 1 else final
        if i % 3:
            head += salt
        if i % 7:
            head += password
        head += final if i & 1 else password
        final = md5(head).digest()
    encoded = b"".join(
        _to64((final[a] << 16) | (final[b] << 8) | final[c], 4)
        for a, b, c in ((0, 6, 12), (1, 7, 13), (2, 8, 14), (3, 9, 15), (4, 10, 5))
    ) + _to64(final[11], 2)
    return magic + salt + b"$" + encoded


def scheme(hashed: bytes) -> Optional[str]:
    """
    The password scheme of an htpasswd entry: C{"bcrypt"}, C{"md5"} or
    C{"sha"}, or L{None} for any other (unsupported) format.
    """
    if _BCRYPT.match(hashed):
        return "bcrypt"
    if _MD5.match(hashed):
        return "md5"
    if _SHA.match(hashed):
        return "sha"
    return None


def _describe(hashed: bytes) -> str:
    if hashed.startswith((b"$5$", b"$6$")):
        return "SHA-crypt ($5$/$6$)"
    if hashed.startswith((b"$2", b"$apr1$", b"$1$", b"{SHA}")):
        return "a malformed hash"
    if len(hashed) == 13 and re.match(rb"^[./0-9A-Za-z]{13}$", hashed):
        return "DES crypt(3)"
    return "an unknown format (plain text?)"


def verifyPassword(password: bytes, hashed: bytes) -> bool:
    """
    Whether C{password} matches the htpasswd entry C{hashed}, in constant
    time for a given entry.  Blocking: for bcrypt, call it in a thread.

    @raise ValueError: if bcrypt refuses the entry.
    """
    kind = scheme(hashed)
    if kind == "bcrypt":
        import bcrypt

        return bcrypt.checkpw(password[:_BCRYPT_MAX], hashed)
    if kind == "md5":
        magic, salt = _MD5.match(hashed).groups()
        return hmac.compare_digest(md5Crypt(password, salt, magic), hashed)
    if kind == "sha":
        digest = base64.b64encode(hashlib.sha1(password).digest())
        return hmac.compare_digest(b"{SHA}" + digest, hashed)
    return False


def parseHtpasswd(data: bytes) -> Tuple[Dict[bytes, bytes], List[str]]:
    """
    Parse an htpasswd file: C{user:hash} lines; blank lines and C{#}
    comments are skipped; the hash ends at the next colon, as Apache reads
    it; the first line of a user wins.

    @return: C{(users, problems)}: the entries by user name (unsupported
        ones included: they never match), and one message per problem,
        naming the line but never showing a hash.
    """
    users: Dict[bytes, bytes] = {}
    problems: List[str] = []
    for number, line in enumerate(data.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith(b"#"):
            continue
        user, sep, rest = line.partition(b":")
        user = user.strip()
        if not sep or not user:
            problems.append(f"line {number} is not USER:HASH; ignored")
            continue
        name = user.decode("utf-8", "replace")
        hashed = rest.split(b":", 1)[0].strip()
        if user in users:
            problems.append(f"line {number}: user {name!r} is listed again; the first one counts")
            continue
        users[user] = hashed
        if scheme(hashed) is None:
            problems.append(
                f"line {number}: the password of {name!r} is {_describe(hashed)}, which golb"
                " does not accept; it never matches (use bcrypt: htpasswd -B)"
            )
    return users, problems


def parseAuthorization(values: Optional[List[bytes]]) -> Optional[Tuple[bytes, bytes]]:
    """
    The user and password of a C{Basic} C{Authorization} header.

    @param values: the header's raw values (L{None} when absent).
    @return: C{(user, password)} as bytes, or L{None} when there is not
        exactly one well-formed C{Basic} header.
    """
    if not values or len(values) != 1:
        return None
    authScheme, _, token = values[0].strip().partition(b" ")
    if authScheme.lower() != b"basic":
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, sep, password = decoded.partition(b":")
    if not sep or not user:
        return None
    return user, password


def _quote(text: str) -> bytes:
    """
    C{text} as an HTTP quoted-string (control characters become spaces).
    """
    text = "".join(" " if ord(c) < 32 or ord(c) == 127 else c for c in text)
    return b'"' + text.replace("\\", "\\\\").replace('"', '\\"').encode("utf-8") + b'"'


class Htpasswd:
    """
    The entries of an htpasswd file, re-read when the file changes (its
    modification time, size or inode), looked at no more than once per
    C{interval} seconds.

    @ivar path: the file.
    @ivar users: the entries by user name, or L{None} while the file cannot
        be read (then nobody is let in).
    @ivar decoy: an entry to check unknown users' passwords against (the
        first usable one), or L{None}.
    """

    log = Logger()

    def __init__(self, path: str, clock, interval: float = 1.0):
        self.path = path
        self.users: Optional[Dict[bytes, bytes]] = None
        self.decoy: Optional[bytes] = None
        self._clock = clock
        self._interval = interval
        self._checked: Optional[float] = None
        self._signature: Optional[tuple] = None
        self._error: Optional[str] = None

    def current(self) -> Optional[Dict[bytes, bytes]]:
        """
        The entries by user name, after re-reading the file if it changed
        (at most once per interval); L{None} while it cannot be read.
        """
        now = self._clock.seconds()
        checked = self._checked
        if checked is None or not checked <= now < checked + self._interval:
            self._checked = now
            self._refresh()
        return self.users

    def _refresh(self) -> None:
        try:
            status = os.stat(self.path)
            signature = (status.st_mtime_ns, status.st_size, status.st_ino, status.st_dev)
            if signature == self._signature:
                return
            with open(self.path, "rb") as f:
                data = f.read()
        except OSError as e:
            self._failed(e.strerror or str(e))
            return
        users, problems = parseHtpasswd(data)
        for problem in problems:
            self.log.warn("basic_auth users_file {path}: {problem}",
                          path=self.path, problem=problem)
        if self._error is not None:
            self.log.info("basic_auth users_file {path} is readable again", path=self.path)
        elif self._signature is not None:
            self.log.info("basic_auth users_file {path} changed: {count} users",
                          path=self.path, count=len(users))
        self._signature = signature
        self._error = None
        self.users = users
        self.decoy = next((hashed for hashed in users.values() if scheme(hashed)), None)

    def _failed(self, error: str) -> None:
        if error != self._error:
            self.log.error(
                "basic_auth users_file {path} cannot be read ({error}): every request"
                " is refused until it can", path=self.path, error=error,
            )
        self._error = error
        self._signature = None
        self.users = None
        self.decoy = None


class _State:
    """
    What one C{basic_auth} configuration keeps across reloads: its file,
    the credentials already verified, the bcrypt checks under way.

    @ivar htpasswd: the L{Htpasswd}.
    @ivar verified: keys of verified credentials, oldest first.
    """

    log = Logger()

    def __init__(self, path: str, reactor, cacheSize: int = 1024):
        self.htpasswd = Htpasswd(path, reactor)
        self.verified: OrderedDict[bytes, None] = OrderedDict()
        self._reactor = reactor
        self._cacheSize = cacheSize
        self._secret = os.urandom(32)
        self._pending: Dict[bytes, List[Deferred]] = {}

    def key(self, user: bytes, password: bytes, hashed: bytes) -> bytes:
        """
        A keyed hash (with a secret of this process) of credentials and the
        entry they are checked against: no password is kept in memory.
        """
        h = hashlib.blake2b(key=self._secret, digest_size=32)
        h.update(b"%d:%d:%d:" % (len(user), len(password), len(hashed)))
        h.update(user + password + hashed)
        return h.digest()

    def isVerified(self, key: bytes) -> bool:
        if key in self.verified:
            self.verified.move_to_end(key)
            return True
        return False

    def remember(self, key: bytes) -> None:
        self.verified[key] = None
        self.verified.move_to_end(key)
        while len(self.verified) > self._cacheSize:
            self.verified.popitem(last=False)

    def verifyInThread(self, key: bytes, password: bytes, hashed: bytes,
                       remember: bool = True) -> Deferred:
        """
        Check C{password} against C{hashed} in the reactor's thread pool;
        simultaneous checks of the same credentials share one computation.

        @return: a L{Deferred} firing with whether it matches.
        """
        d = Deferred()
        waiting = self._pending.get(key)
        if waiting is not None:
            waiting.append(d)
            return d
        self._pending[key] = [d]
        reactor = self._reactor
        work = deferToThreadPool(reactor, reactor.getThreadPool(), verifyPassword,
                                 password, hashed)
        work.addBoth(self._checked, key, remember)
        return d

    def _checked(self, result, key: bytes, remember: bool) -> None:
        if isinstance(result, Failure):
            self.log.failure("basic_auth: checking a password of {path} failed", result,
                             path=self.htpasswd.path)
            result = False
        if result and remember:
            self.remember(key)
        for d in self._pending.pop(key, ()):
            d.callback(bool(result))


class BasicAuth(Policy):
    """
    Let a request through only with the C{Basic} credentials of a user of
    C{users_file}; answer anything else with 401 and a C{WWW-Authenticate}
    challenge for C{realm}.

    The C{Authorization} header is removed before the request is forwarded,
    unless C{forward_authorization} is true.

    @ivar forwardAuthorization: whether the backend sees C{Authorization}.
    """

    def __init__(self, config, env):
        Policy.__init__(self, config, env)
        self.forwardAuthorization = bool(getattr(config, "forward_authorization", False))
        self.state = env.keep(
            ("basic_auth", config.users_file), lambda: _State(config.users_file, env.reactor)
        )
        self.state.htpasswd.current()
        challenge = b"Basic realm=" + _quote(config.realm) + b', charset="UTF-8"'
        self.error = GolbError("unauthorized", headers=[(b"WWW-Authenticate", challenge)])

    def onRequest(self, request, context):
        headers = request.requestHeaders
        values = headers.getRawHeaders(b"authorization")
        if values is None:
            # a basic_auth policy before this one took the header away
            values = getattr(request, "_golbAuthorization", None)
        credentials = parseAuthorization(values)
        if credentials is None:
            return self.error
        user, password = credentials
        state = self.state
        users = state.htpasswd.current()
        if users is None:
            return self.error
        hashed = users.get(user)
        if hashed is None:
            return self._decoy(user, password)
        key = state.key(user, password, hashed)
        if state.isVerified(key):
            return self._accept(request, values)
        kind = scheme(hashed)
        if kind == "bcrypt":
            d = state.verifyInThread(key, password, hashed)
            d.addCallback(self._verified, request, values)
            return d
        if kind is not None and verifyPassword(password, hashed):
            if kind == "md5":
                state.remember(key)
            return self._accept(request, values)
        return self.error

    def _decoy(self, user: bytes, password: bytes):
        """
        Refuse an unknown user, after as much work as for a known one.
        """
        state = self.state
        decoy = state.htpasswd.decoy
        if decoy is None:
            return self.error
        if scheme(decoy) == "bcrypt":
            d = state.verifyInThread(state.key(user, password, decoy), password, decoy,
                                     remember=False)
            d.addCallback(lambda _: self.error)
            return d
        verifyPassword(password, decoy)
        return self.error

    def _verified(self, matched: bool, request, values):
        if not matched:
            return self.error
        return self._accept(request, values)

    def _accept(self, request, values) -> None:
        if not self.forwardAuthorization:
            request.requestHeaders.removeHeader(b"authorization")
            request._golbAuthorization = values
        return None
