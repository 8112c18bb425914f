"""
Demo backends, for trying golb out: C{demo.backends: N} starts N small web
servers on 127.0.0.1:3001.. whose page names the backend and echoes the
request it received, so a user can watch the balancing happen.
"""

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.web.resource import Resource
from twisted.web.server import Site

__all__ = ["DemoBackend", "DemoService"]


class DemoBackend(Resource):
    """
    A page that names its backend and echoes the request: method, target,
    version, headers and body.  C{/health} answers C{200 ok}.

    @ivar name: the backend's name, e.g. C{demo-1}.
    @ivar requests: how many requests it has answered.
    """

    isLeaf = True

    def __init__(self, name: str, address: str):
        Resource.__init__(self)
        self.name = name
        self.address = address
        self.requests = 0

    def render(self, request):
        self.requests += 1
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"x-demo-backend", self.name.encode("ascii"))
        if request.path == b"/health":
            return b"ok\n"
        lines = [
            f"golb demo backend {self.name} ({self.address}), request #{self.requests}",
            "",
            "{} {} {}".format(
                request.method.decode("latin-1"),
                request.uri.decode("latin-1"),
                request.clientproto.decode("latin-1"),
            ),
        ]
        for name, values in request.requestHeaders.getAllRawHeaders():
            for value in values:
                lines.append(f"{name.decode('latin-1')}: {value.decode('latin-1')}")
        body = request.content.read() if request.content is not None else b""
        text = "\n".join(lines).encode("utf-8") + b"\n\n"
        if request.method == b"HEAD":
            return text
        return text + body


class DemoService(MultiService):
    """
    The demo backends: one listening service per backend.

    @ivar backends: the L{DemoBackend} resources, in port order.
    """

    def __init__(self, count: int, basePort: int = 3001, reactor=None,
                 interface: str = "127.0.0.1"):
        MultiService.__init__(self)
        if reactor is None:
            from twisted.internet import reactor
        self.backends = []
        for index in range(count):
            port = basePort + index
            name = f"demo-{index + 1}"
            resource = DemoBackend(name, f"{interface}:{port}")
            site = Site(resource)
            site.log = lambda request: None
            self.backends.append(resource)
            service = StreamServerEndpointService(
                TCP4ServerEndpoint(reactor, port, interface=interface), site
            )
            service._raiseSynchronously = True
            service.setName(name)
            service.setServiceParent(self)
