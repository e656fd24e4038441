"""Readiness, graceful shutdown and the API key, shared by the HTTP and websocket front ends."""

import hmac


class CannotListen(Exception):
    """A front end's port cannot be bound (taken, or privileged): start-up stops with this one line."""


class Lifecycle:
    """Whether the service takes new work, and how much work is in flight.

    `draining` is set by SIGTERM: from then on new work is refused (readiness 503, new requests 503, new
    streams 1013) while what is in flight finishes, within SHUTDOWN_GRACE_SECONDS.
    """

    def __init__(self) -> None:
        self.draining = False
        self.in_flight = 0

    @property
    def ready(self) -> bool:
        return not self.draining


def key_matches(expected: str | None, given: str | None) -> bool:
    """Whether `given` is the API key (always, when none is set); in constant time, so that the time of a
    refusal tells nothing about the key."""
    if expected is None:
        return True
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def bearer(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer TOKEN` header, or None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None
