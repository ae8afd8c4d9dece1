"""The native byte relay of the shared client port (server/embed/_relay.c)."""

class Relay:
    """Copies bytes between pairs of sockets on a thread of its own, without the GIL."""

    def __init__(self) -> None: ...
    def start(self) -> None: ...
    def add(self, a: int, b: int, /) -> None:
        """Relay between two connected sockets, taking ownership of both descriptors."""

    def stop(self) -> None:
        """Close every pair and stop the thread."""

    @property
    def active(self) -> int:
        """Pairs being relayed."""
