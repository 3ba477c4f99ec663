"""The asyncio client library; ``unimeter`` re-exports ``AsyncClient`` from here."""

from unimeter.client.client import AsyncClient

__all__ = ["AsyncClient"]
