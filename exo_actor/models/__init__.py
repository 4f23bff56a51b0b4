"""Model architectures: pure array compute, no sockets, no asyncio."""
