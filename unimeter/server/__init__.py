"""The node's asyncio runtime around the actors; for now, its HTTP API (``server.http``)."""
