"""Typed config problems and the collector the rules report into.

In the manner of power-grid-model's validation errors, a problem is an object, not a
string: its class says what kind of mistake it is, ``key`` names the dotted config key,
``value`` holds the offending value and ``fix`` says what to write instead. A rule that
finds a problem does not stop the check; :class:`Problems` collects every one so a user
fixes a file in one pass.

Follow-ons: when an entity (the network, a plant, a meter) fails its own check, the rules
that reference it later would report it as "missing". :meth:`Problems.broken` records the
entity with its root problem; :meth:`Problems.follow_on` reports the later problem with
``cause`` set, and the command line shows the root with only a count of the rest.
"""

from __future__ import annotations

from typing import Any

from gateway.errors import ConfigProblem


class MissingKey(ConfigProblem):
    """A required key is absent."""


class WrongType(ConfigProblem):
    """A key holds a value of the wrong TOML type (a string where a number belongs)."""


class UnknownKey(ConfigProblem):
    """A key the schema does not know (usually a typo)."""


class InvalidValue(ConfigProblem):
    """A value of the right type that is out of range, malformed or not one of the choices."""


class UnknownReference(ConfigProblem):
    """A value naming something that does not exist: a bus, branch, plant, meter, channel."""


class Duplicate(ConfigProblem):
    """A name, channel or port used twice where it must be unique."""


class Unreadable(ConfigProblem):
    """A file the config points at cannot be read or understood (the network case)."""


class Implausible(ConfigProblem):
    """A value that parses but is physically implausible (per-unit impedances in ohms, a
    load of thousands of MW on a 10 MVA base)."""


class NotObservable(ConfigProblem):
    """The meters cannot determine the network's state."""


class StreamTooLong(ConfigProblem):
    """A GTNET-SKT point list over the component's word limit."""


class Problems:
    """The problems found so far, and the entities that failed with their root problem."""

    def __init__(self) -> None:
        self.items: list[ConfigProblem] = []
        self.warnings: list[ConfigProblem] = []
        self._broken: dict[str, ConfigProblem] = {}
        self._seen: dict[tuple[type, str, str], ConfigProblem] = {}

    def add(self, problem: ConfigProblem) -> ConfigProblem:
        """Record ``problem`` once: a meter table that expands into 32 branch meters
        reports its missing accuracy once, not 32 times."""
        sig = (type(problem), problem.key, problem.message)
        if sig in self._seen:
            return self._seen[sig]
        self._seen[sig] = problem
        self.items.append(problem)
        return problem

    def warn(self, problem: ConfigProblem) -> None:
        """A doubt that does not stop the config (shown by ``config check``)."""
        self.warnings.append(problem)

    def __bool__(self) -> bool:
        return bool(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def mark(self) -> int:
        """A position to ask later whether problems were added since."""
        return len(self.items)

    def since(self, mark: int) -> ConfigProblem | None:
        """The first problem added after ``mark``, if any."""
        return self.items[mark] if len(self.items) > mark else None

    def broken(self, entity: str, root: ConfigProblem | None) -> None:
        """Record that ``entity`` (e.g. ``"plant:pv8"``, ``"network"``) failed with ``root``."""
        if root is not None:
            self._broken.setdefault(entity, root.cause or root)

    def root_of(self, *entities: str) -> ConfigProblem | None:
        """The root problem of the first broken entity among ``entities``."""
        for e in entities:
            if e in self._broken:
                return self._broken[e]
        return None

    def follow_on(self, problem: ConfigProblem, *entities: str) -> ConfigProblem:
        """Add ``problem``, as a follow-on if one of ``entities`` is broken."""
        problem.cause = self.root_of(*entities)
        return self.add(problem)

    # -- typed getters -----------------------------------------------------------------
    def get(self, table: dict[str, Any], key: str, path: str, typ: type | tuple[type, ...],
            default: Any = ..., fix: str = "") -> Any:
        """``table[key]`` checked against ``typ``; a missing required key or a wrong type
        is reported and gives None (or ``default`` when one is given)."""
        dotted = f"{path}.{key}".lstrip(".")
        if key not in table:
            if default is ...:
                self.add(MissingKey(dotted, "is required", fix or f"add {key} = ..."))
                return None
            return default
        val = table[key]
        types = typ if isinstance(typ, tuple) else (typ,)
        if not isinstance(val, types) or (isinstance(val, bool) and bool not in types):
            names = "/".join(t.__name__ for t in types)
            self.add(WrongType(dotted, f"must be {names}, got {val!r}",
                               fix or f"write {key} as a {names}", value=val))
            return None if default is ... else default
        return val

    def unknown_keys(self, table: dict[str, Any], path: str, known: set[str] | frozenset[str]
                     ) -> None:
        for k in table:
            if k not in known:
                self.add(UnknownKey(f"{path}.{k}".lstrip("."), "unknown key",
                                    f"remove it or use one of: {', '.join(sorted(known))}",
                                    value=k))

    def table(self, raw: dict[str, Any], key: str) -> dict[str, Any]:
        val = raw.get(key, {})
        if not isinstance(val, dict):
            self.add(WrongType(key, f"must be a table [{key}], got {type(val).__name__}",
                               f"write it as a [{key}] section", value=val))
            return {}
        return val

    def array(self, val: Any, key: str) -> list[dict[str, Any]]:
        if not isinstance(val, list) or not all(isinstance(x, dict) for x in val):
            self.add(WrongType(key, "must be an array of tables",
                               f"write each entry as [[{key}]]", value=val))
            return []
        return val
