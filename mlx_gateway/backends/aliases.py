"""Which backend model serves a client's model name.

The name a client sends is never trusted to pick a backend model (a wrong name makes
mlx_lm.server answer 404 or load another model); it is looked up in the alias table instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase

_GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True, slots=True)
class ModelRouter:
    default_model: str
    aliases: tuple[tuple[str, str], ...] = ()

    def resolve(self, client_model: str) -> str:
        name = client_model.lower()
        for pattern, model in self.aliases:
            if _matches(pattern.lower(), name):
                return model
        return self.default_model

    def served_models(self) -> list[str]:
        """Each backend model once, the default first."""
        models = [self.default_model]
        for _, model in self.aliases:
            if model not in models:
                models.append(model)
        return models

    def alias_names(self) -> list[str]:
        return [pattern for pattern, _ in self.aliases if not _GLOB_CHARS & set(pattern)]


def _matches(pattern: str, name: str) -> bool:
    """A pattern without wildcards matches as a substring, so `haiku` covers `claude-haiku-4-5`."""
    if _GLOB_CHARS & set(pattern):
        return fnmatchcase(name, pattern)
    return pattern in name
