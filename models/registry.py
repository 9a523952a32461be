"""Name → builder registries, shared by backbones, heads and tasks.

A registry maps the names users type on the command line (``--backbone=resnet18``) to builder
callables. Unknown names raise :class:`ConfigError` listing every valid name, so a typo is a one
line message and not a traceback. A registry can also resolve a whole family of names by prefix
(``hub:<path or URL>``) without registering each one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A mistake in user input (flags, names, paths) that the user can fix; printed as one line."""


class Registry(Generic[T]):
    """A named collection of builders of one kind (``kind`` appears in error messages)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._builders: dict[str, Callable[..., T]] = {}
        # prefix → (factory: the rest of the name → builder, usage shown in errors)
        self._prefixes: dict[str, tuple[Callable[[str], Callable[..., T]], str]] = {}

    def register(self, name: str, builder: Callable[..., T] | None = None):
        """Registers ``builder`` under ``name``; usable as a decorator when ``builder`` is None."""

        def add(fn: Callable[..., T]) -> Callable[..., T]:
            if name in self._builders:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._builders[name] = fn
            return fn

        return add if builder is None else add(builder)

    def register_prefix(self, prefix: str, factory: Callable[[str], Callable[..., T]],
                        usage: str) -> None:
        """Resolves every name ``<prefix><rest>`` to ``factory(rest)`` (a builder).

        ``usage`` (e.g. ``"hub:<path or URL>"``) is listed after the valid names when a name is
        unknown. ``factory`` should be cheap: it runs on every ``get``.
        """
        if prefix in self._prefixes or any(name.startswith(prefix) for name in self._builders):
            raise ValueError(f"{self.kind} prefix {prefix!r} clashes with a registered name")
        self._prefixes[prefix] = (factory, usage)

    def get(self, name: str) -> Callable[..., T]:
        """Returns the builder for ``name`` or raises ConfigError naming the valid choices."""
        if name in self._builders:
            return self._builders[name]
        for prefix, (factory, _) in self._prefixes.items():
            if isinstance(name, str) and name.startswith(prefix):
                return factory(name[len(prefix):])
        usages = "".join(f"; or {usage}" for _, usage in self._prefixes.values())
        raise ConfigError(
            f"unknown {self.kind} {name!r}; valid names: {', '.join(self.names())}{usages}")

    def build(self, registered_name: str, **kwargs) -> T:
        return self.get(registered_name)(**kwargs)

    def names(self) -> list[str]:
        return sorted(self._builders)

    def __contains__(self, name: str) -> bool:
        return name in self._builders or (
            isinstance(name, str) and any(name.startswith(p) for p in self._prefixes))

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
