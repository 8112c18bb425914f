"""
Who may use the admin site, and proof that a change was meant.

Authentication (L{Authenticator}): with C{admin.auth.users_file} a browser or
client sends HTTP Basic credentials checked against that htpasswd file (the
same code and formats as the C{basic_auth} policy, bcrypt checks in a thread
and remembered); with C{admin.auth.token_file} a client sends
C{Authorization: Bearer <token>}, one token per line of that file, compared
in constant time.  Both files are re-read when they change.  With neither,
the site is open (only allowed on loopback).

CSRF (L{CSRF}): a change (POST, PATCH) made with ambient credentials (Basic
credentials a browser re-sends by itself, or none at all on an open site)
must come from the admin site's own pages: its C{Origin} (or C{Referer})
names the site itself, and it carries either C{Content-Type:
application/json} (which a cross-site form cannot send) or the
double-submit token of the C{golb_admin_csrf} cookie.
"""

import hashlib
import hmac
import os
from typing import List, Optional, Tuple
from urllib.parse import urlsplit

import attr
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from golb._units import Address
from golb.policies.auth import _State as _PasswordState
from golb.policies.auth import parseAuthorization, scheme, verifyPassword

__all__ = ["CSRF", "CSRF_COOKIE", "CSRF_FIELD", "CSRF_HEADER", "Authenticator", "Identity",
           "TokenFile", "hostIsLoopback"]

CSRF_COOKIE = b"golb_admin_csrf"
CSRF_FIELD = b"csrf_token"
CSRF_HEADER = b"x-csrf-token"


@attr.s(frozen=True, slots=True)
class Identity:
    """
    Who made a request.

    @ivar kind: C{user} (Basic), C{token} (Bearer) or C{anonymous} (open site).
    @ivar name: the user name, the token's fingerprint, or the client address.
    """

    kind: str = attr.ib()
    name: str = attr.ib()

    def __str__(self) -> str:
        if self.kind == "token":
            return f"token:{self.name}"
        if self.kind == "anonymous":
            return f"anonymous@{self.name}"
        return self.name

    @property
    def ambient(self) -> bool:
        """
        Whether a browser could have sent these credentials on its own (so
        changes need CSRF proof): everything but a bearer token.
        """
        return self.kind != "token"


def tokenFingerprint(token: bytes) -> str:
    """
    A short, non-secret name for a token in audit entries and logs.
    """
    return hashlib.sha256(token).hexdigest()[:12]


class TokenFile:
    """
    The bearer tokens of C{admin.auth.token_file}: one per line, blank lines
    and C{#} comments skipped; re-read when the file changes (checked at most
    once per C{interval}).

    @ivar digests: the SHA-256 digests of the tokens, or L{None} while the
        file cannot be read (then no token is accepted).
    """

    log = Logger()

    def __init__(self, path: str, clock, interval: float = 1.0):
        self.path = path
        self.digests: Optional[List[bytes]] = None
        self._clock = clock
        self._interval = interval
        self._checked: Optional[float] = None
        self._signature: Optional[tuple] = None
        self._error: Optional[str] = None

    def current(self) -> Optional[List[bytes]]:
        now = self._clock.seconds()
        checked = self._checked
        if checked is None or not checked <= now < checked + self._interval:
            self._checked = now
            self._refresh()
        return self.digests

    def _refresh(self) -> None:
        try:
            status = os.stat(self.path)
            signature = (status.st_mtime_ns, status.st_size, status.st_ino, status.st_dev)
            if signature == self._signature:
                return
            with open(self.path, "rb") as f:
                data = f.read()
        except OSError as e:
            error = e.strerror or str(e)
            if error != self._error:
                self.log.error("admin token_file {path} cannot be read ({error}): no token"
                               " is accepted until it can", path=self.path, error=error)
            self._error = error
            self._signature = None
            self.digests = None
            return
        tokens = [line.strip() for line in data.splitlines()]
        tokens = [token for token in tokens if token and not token.startswith(b"#")]
        if not tokens:
            self.log.warn("admin token_file {path} holds no token", path=self.path)
        self._signature = signature
        self._error = None
        self.digests = [hashlib.sha256(token).digest() for token in tokens]

    def match(self, token: bytes) -> Optional[str]:
        """
        The fingerprint of C{token} when it is one of the file's, else
        L{None}.  Every token is compared (in constant time), whichever
        matches.
        """
        digests = self.current()
        if not digests or not token:
            return None
        candidate = hashlib.sha256(token).digest()
        found = False
        for digest in digests:
            found |= hmac.compare_digest(candidate, digest)
        return tokenFingerprint(token) if found else None


class Authenticator:
    """
    Checks the credentials of admin requests.

    @ivar open: whether no authentication is configured (everyone is
        C{anonymous@<ip>}).
    @ivar passwords: the htpasswd state (shared code with the C{basic_auth}
        policy), or L{None}.
    @ivar tokens: the L{TokenFile}, or L{None}.
    @ivar challenges: the C{WWW-Authenticate} values sent with a 401.
    """

    REALM = b"golb admin"

    def __init__(self, authConfig, reactor):
        self.passwords = None
        self.tokens = None
        self.challenges: List[bytes] = []
        if authConfig is not None and authConfig.users_file:
            self.passwords = _PasswordState(authConfig.users_file, reactor)
            self.passwords.htpasswd.current()
            self.challenges.append(b'Basic realm="' + self.REALM + b'", charset="UTF-8"')
        if authConfig is not None and authConfig.token_file:
            self.tokens = TokenFile(authConfig.token_file, reactor)
            self.tokens.current()
            self.challenges.append(b'Bearer realm="' + self.REALM + b'"')
        self.open = self.passwords is None and self.tokens is None

    def identify(self, request, client: str):
        """
        Who sent C{request}.

        @param client: the client's address, for anonymous identities.
        @return: an L{Identity}, L{None} (refused: answer 401), or a
            L{Deferred} firing with one of those (a bcrypt check).
        """
        if self.open:
            return Identity("anonymous", client)
        values = request.requestHeaders.getRawHeaders(b"authorization")
        if not values or len(values) != 1:
            return None
        authScheme, _, credentials = values[0].strip().partition(b" ")
        if authScheme.lower() == b"bearer":
            if self.tokens is None:
                return None
            fingerprint = self.tokens.match(credentials.strip())
            return Identity("token", fingerprint) if fingerprint else None
        if authScheme.lower() == b"basic" and self.passwords is not None:
            return self._basic(values)
        return None

    def _basic(self, values):
        parsed = parseAuthorization(values)
        if parsed is None:
            return None
        user, password = parsed
        state = self.passwords
        users = state.htpasswd.current()
        if users is None:
            return None
        name = user.decode("utf-8", "replace")
        hashed = users.get(user)
        if hashed is None:
            # as much work for an unknown user as for a known one
            decoy = state.htpasswd.decoy
            if decoy is not None and scheme(decoy) == "bcrypt":
                d = state.verifyInThread(state.key(user, password, decoy), password, decoy,
                                         remember=False)
                return d.addCallback(lambda _: None)
            if decoy is not None:
                verifyPassword(password, decoy)
            return None
        key = state.key(user, password, hashed)
        if state.isVerified(key):
            return Identity("user", name)
        kind = scheme(hashed)
        if kind == "bcrypt":
            d: Deferred = state.verifyInThread(key, password, hashed)
            return d.addCallback(lambda ok: Identity("user", name) if ok else None)
        if kind is not None and verifyPassword(password, hashed):
            state.remember(key)
            return Identity("user", name)
        return None


def hostIsLoopback(hostHeader: Optional[bytes]) -> bool:
    """
    Whether a C{Host} header names this machine (C{localhost}, 127.0.0.0/8
    or C{::1}): an open admin site answers nothing else, so that a web page
    cannot reach it through DNS rebinding.
    """
    if not hostHeader:
        return False
    try:
        text = hostHeader.decode("ascii")
    except UnicodeDecodeError:
        return False
    if text.startswith("["):
        host = text[1:text.find("]")] if "]" in text else ""
    else:
        host = text.rsplit(":", 1)[0] if ":" in text else text
    return Address(host, 0).isLoopback()


class CSRF:
    """
    Double-submit tokens: a random nonce signed with a secret of this
    process, set as the C{golb_admin_csrf} cookie (C{SameSite=Strict},
    C{HttpOnly}) and repeated in each form of the admin pages.  A change
    is accepted when the submitted token is a signed one and equals the
    cookie.
    """

    def __init__(self, secret: Optional[bytes] = None):
        self._secret = secret or os.urandom(32)

    def _sign(self, nonce: bytes) -> bytes:
        return hmac.new(self._secret, nonce, hashlib.sha256).hexdigest()[:32].encode("ascii")

    def newToken(self) -> bytes:
        nonce = os.urandom(16).hex().encode("ascii")
        return nonce + b"." + self._sign(nonce)

    def valid(self, token: Optional[bytes]) -> bool:
        """
        Whether C{token} was made by L{newToken} (of this process).
        """
        if not token or token.count(b".") != 1:
            return False
        nonce, signature = token.split(b".")
        return hmac.compare_digest(self._sign(nonce), signature)

    def tokenFor(self, request) -> Tuple[bytes, bool]:
        """
        The token for the forms of a page answering C{request}: the one of
        its cookie when valid, else a new one.

        @return: C{(token, isNew)}; a new token must be set as the cookie.
        """
        cookie = request.getCookie(CSRF_COOKIE)
        if self.valid(cookie):
            return cookie, False
        return self.newToken(), True

    def setCookie(self, request, token: bytes) -> None:
        request.addCookie(CSRF_COOKIE, token, path=b"/", httpOnly=True, sameSite="strict")

    def submitted(self, request) -> Optional[bytes]:
        """
        The token a change request carries: the C{csrf_token} form field or
        the C{X-CSRF-Token} header.
        """
        values = request.args.get(CSRF_FIELD) if request.args else None
        if values:
            return values[0]
        header = request.requestHeaders.getRawHeaders(CSRF_HEADER)
        return header[0] if header else None

    def check(self, request, identity: Identity) -> Optional[str]:
        """
        Whether a change request is allowed.

        @return: L{None} when it is, else why not (answered with 403).
        """
        problem = _originProblem(request)
        if problem is not None:
            return problem
        if not identity.ambient:
            return None
        contentType = request.requestHeaders.getRawHeaders(b"content-type", [b""])[0]
        if contentType.split(b";")[0].strip().lower() == b"application/json":
            # a cross-site form cannot send this, and a cross-site script
            # would need a CORS preflight, which the admin site never grants
            return None
        cookie = request.getCookie(CSRF_COOKIE)
        submitted = self.submitted(request)
        if not self.valid(cookie) or submitted is None:
            return ("CSRF check failed: send the form from the admin pages (csrf_token and its"
                    " cookie), or Content-Type: application/json from a script")
        if not hmac.compare_digest(cookie, submitted):
            return "CSRF check failed: the csrf_token does not match its cookie"
        return None


def _originProblem(request) -> Optional[str]:
    """
    Why the C{Origin} (else C{Referer}) of a change request is not the admin
    site itself, or L{None} when it is (or neither header is sent).
    """
    host = request.requestHeaders.getRawHeaders(b"host", [b""])[0].decode("latin-1").lower()
    origin = request.requestHeaders.getRawHeaders(b"origin")
    if origin:
        value = origin[0].decode("latin-1").strip().lower()
        if value == "null":
            return "cross-origin request refused (Origin: null)"
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or parts.netloc != host:
            return f"cross-origin request refused (Origin {value} is not this site)"
        return None
    referer = request.requestHeaders.getRawHeaders(b"referer")
    if referer:
        parts = urlsplit(referer[0].decode("latin-1").strip())
        if parts.netloc.lower() != host:
            return "cross-origin request refused (Referer is not this site)"
    return None
