"""Exception root of the gateway package.

Everything the gateway raises on purpose derives from :class:`GatewayError`, so a caller
can catch the package's failures without catching programming errors.
"""

from __future__ import annotations


class GatewayError(Exception):
    """Root of every error raised on purpose by ``gateway``."""


class ConfigError(GatewayError):
    """The twin config is invalid; ``problems`` holds every error found, each naming a key.

    A problem whose ``cause`` is set is a follow-on of another (a plant that failed its own
    check is then "missing" for the meters naming it): the message lists the root problems
    and counts the follow-ons, since fixing a root usually clears them.
    """

    def __init__(self, problems: list[ConfigProblem] | str) -> None:
        if isinstance(problems, str):
            problems = [ConfigProblem("", problems, "")]
        self.problems = problems
        lines = [str(p) for p in self.roots]
        if self.follow_ons:
            lines.append(f"(and {len(self.follow_ons)} follow-on problem(s) that fixing the "
                         "above should clear)")
        super().__init__("\n".join(lines))

    @property
    def roots(self) -> list[ConfigProblem]:
        """The problems not caused by another one."""
        return [p for p in self.problems if p.cause is None]

    @property
    def follow_ons(self) -> list[ConfigProblem]:
        return [p for p in self.problems if p.cause is not None]


class ConfigProblem:
    """One error in a config: the dotted key, what is wrong, and how to fix it.

    ``value`` is the offending value when there is one; ``cause`` is the root problem this
    one follows from (None for a root). :mod:`gateway.config.problems` has the typed
    subclasses the checker raises.
    """

    __slots__ = ("cause", "fix", "key", "message", "value")

    def __init__(self, key: str, message: str, fix: str = "", *, value: object = None,
                 cause: ConfigProblem | None = None) -> None:
        self.key = key
        self.message = message
        self.fix = fix
        self.value = value
        self.cause = cause

    def __str__(self) -> str:
        where = f"{self.key}: " if self.key else ""
        fix = f" (fix: {self.fix})" if self.fix else ""
        return f"{where}{self.message}{fix}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.key!r}, {self.message!r}, {self.fix!r})"


class FrameError(GatewayError):
    """A frame could not be decoded; ``offset`` is the byte offset where it went wrong."""

    def __init__(self, reason: str, offset: int = 0) -> None:
        self.reason = reason
        self.offset = offset
        super().__init__(f"{reason} (at byte offset {offset})")


class FrameTooShort(FrameError):
    """Fewer bytes than the frame's fixed part or its declared size."""


class FrameSizeMismatch(FrameError):
    """The declared size disagrees with the bytes received or the configured point list."""


class BadSync(FrameError):
    """A C37.118 frame does not start with the 0xAA sync byte or has an unknown version."""


class BadCrc(FrameError):
    """The CRC-CCITT of a C37.118 frame does not match its contents."""


class UnknownFrameType(FrameError):
    """A C37.118 frame type outside data, header, CFG-1/2/3 and command."""


class WrongPointCount(FrameError):
    """A GTNET-SKT frame whose word count is not the configured point count."""


class NonFiniteValue(FrameError):
    """A NaN or infinite value where the point list does not allow one."""


class HistorianError(GatewayError):
    """The twin database could not be opened, written or read."""


class TransportError(GatewayError):
    """A transport URL is unsupported or a socket could not be set up."""
