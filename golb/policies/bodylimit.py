"""
C{max_body}: a per-route limit on request bodies, below the listener's
C{max_body_bytes}.
"""

from golb._units import formatSize
from golb.errors import GolbError
from golb.policies import Policy

__all__ = ["MaxBody"]


class MaxBody(Policy):
    """
    Refuse a request whose body is larger than C{size} bytes with 413.  The
    declared C{Content-Length} is checked as well as the bytes received, so
    a lying client cannot slip through either way.
    """

    def __init__(self, config, env):
        Policy.__init__(self, config, env)
        self.limit = config.size
        limit = formatSize(config.size)
        if limit.isdigit():
            limit += " bytes"
        self.error = GolbError(
            "body-too-large", f"The request body is larger than this route's limit of {limit}."
        )

    def onRequest(self, request, context):
        if getattr(request, "bodyLength", 0) > self.limit:
            return self.error
        declared = request.requestHeaders.getRawHeaders(b"content-length")
        if declared:
            try:
                if int(declared[0]) > self.limit:
                    return self.error
            except ValueError:
                return self.error
        return None
