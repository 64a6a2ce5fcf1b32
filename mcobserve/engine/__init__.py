"""The pure protocol engine: group observations without sockets, clocks or asyncio (draft §4, §5)."""
