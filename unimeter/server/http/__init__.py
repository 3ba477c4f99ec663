"""The HTTP/JSON API of a node (``docs/http.md``): ``HttpServer`` and what it is made of."""

from unimeter.server.http.server import HttpServer

__all__ = ["HttpServer"]
