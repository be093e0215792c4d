"""Named implementations of one kind of method: samplers, combiners, regularisers, task kinds.

A method is a class with a `name`, registered with `@REGISTRY.register`; its options are
the keyword arguments of its constructor, so the config is checked against the class
itself. Run-wide values a method may use (the seed, the number of updates, the tasks) are
passed only to the constructors that ask for them by name: a method without randomness
takes no seed.
"""
from __future__ import annotations

import inspect


class Registry:
    def __init__(self, kind: str, key: str, attribute: str = "name"):
        self.kind = kind            # "combiner"
        self.key = key              # the config key that names one: "train.combiner"
        self.attribute = attribute  # the class attribute holding a method's name
        self.entries: dict[str, type] = {}

    def register(self, cls: type) -> type:
        name = getattr(cls, self.attribute)
        if name in self.entries:
            raise ValueError(f"two {self.kind}s are named {name!r}")
        self.entries[name] = cls
        return cls

    def __contains__(self, name) -> bool:
        return isinstance(name, str) and name in self.entries

    def names(self) -> list[str]:
        return sorted(self.entries)

    def get(self, name: str) -> type:
        if not isinstance(name, str) or name not in self.entries:
            raise ValueError(f"{self.key} = {name!r}; use one of {', '.join(self.names())}")
        return self.entries[name]

    def options(self, name: str) -> dict[str, object]:
        """The options `name` declares, with their defaults."""
        parameters = inspect.signature(self.get(name)).parameters
        return {n: p.default for n, p in parameters.items()
                if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}

    def build(self, name: str, options: dict | None = None, options_key: str = "",
              **context):
        """An instance of `name` with the user's `options` (checked against its signature)
        and those `context` values its constructor names."""
        cls, options = self.get(name), dict(options or {})
        declared = self.options(name)
        where = options_key or f"options of {self.key} = {name!r}"
        unknown = sorted(set(options) - set(declared) - set(context)
                         ) + sorted(set(options) & set(context))
        if unknown:
            accepted = sorted(set(declared) - set(context))
            raise ValueError(f"{where}: {name} takes no option {unknown[0]!r}; it takes "
                             f"{', '.join(accepted) or 'no options'}")
        given = {k: v for k, v in context.items() if k in declared}
        try:
            return cls(**options, **given)
        except TypeError as e:  # a missing required option, or a value of the wrong kind
            raise ValueError(f"{where} for {name!r}: {e}") from None
