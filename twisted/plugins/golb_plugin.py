from twisted.application.service import ServiceMaker

golb = ServiceMaker(
    "golb", "golb.tap", "HTTP/S load balancer and reverse proxy", "golb"
)
