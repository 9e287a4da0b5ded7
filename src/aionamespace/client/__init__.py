"""The client wing: the sync and async proxies, their shared base, and their transports."""
