"""
golb: an HTTP/S load balancer and reverse proxy built on Twisted.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
