"""The server wing: listeners and connection shells around the protocol, and what they apply.

``server`` listens and runs the shells (``shells``: asyncio protocol callbacks, or anyio
streams); ``dispatch`` applies a connection's requests to a store, the watches, the client
caches' tracking and the locks (``locks``), with no I/O at all; ``stores`` holds the stores.
"""
