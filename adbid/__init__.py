"""adbid: a real-time bidding decision server."""

__version__ = "0.1.0"
