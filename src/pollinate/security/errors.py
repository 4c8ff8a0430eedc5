"""``SecurityError``: what every module of ``pollinate.security`` raises when it refuses."""

from __future__ import annotations

from pollinate.errors import PollinateError

__all__ = ["SecurityError"]


class SecurityError(PollinateError):
    """A certificate, CSR, CA file or join token was refused; the message says why and what to do.

    It lives beside its concept; ``pollinate.errors`` draws it in the tree of all errors.
    """
