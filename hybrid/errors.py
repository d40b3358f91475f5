"""Errors for people: what was wrong, where (file, key path, column) and what would be right."""
from __future__ import annotations

import difflib
from typing import Iterable


def closest(name: str, candidates: Iterable[str]) -> str | None:
    """The candidate most like `name`, or None when nothing is close."""
    matches = difflib.get_close_matches(str(name), [str(c) for c in candidates], n=1, cutoff=0.5)
    return matches[0] if matches else None


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    if len(str(name)) > 200:  # nothing that long is a typo of a key; difflib would take its time
        return ""
    match = closest(name, candidates)
    return f" (did you mean {match!r}?)" if match else ""


def shown(value: object, limit: int = 60) -> str:
    """repr(value) for a message, cut to about `limit` characters (a 5000-character value stays readable)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit - 20]}...{text[-8:]} ({len(text)} characters)"


class ConfigError(ValueError):
    """A configuration mistake, located by file, key path and (for strings) column.

    `str(err)` reads like a compiler message:

        configs/layouts/jamba.yaml: model.layout: column 9: unknown alias 'Q' ...
          (M F Q F) x4
                ^
    """

    def __init__(self, message: str, *, key: str | None = None, file: str | None = None,
                 column: int | None = None, text: str | None = None):
        self.message = message
        self.key = key
        self.file = file
        self.column = column  # 1-based column inside `text`
        self.text = text
        super().__init__(self._render())

    def located(self, *, file: str | None = None, key: str | None = None) -> "ConfigError":
        """The same error (of the same class) with a file and/or key filled in where it had none."""
        return type(self)(self.message, key=self.key or key, file=self.file or file,
                           column=self.column, text=self.text)

    def _render(self) -> str:
        where = [p for p in (self.file, self.key) if p]
        if self.column is not None:
            where.append(f"column {self.column}")
        head = ": ".join(where + [self.message])
        if self.text is not None and self.column is not None:
            text, column = _window(self.text, self.column)
            head += f"\n  {text}\n  {' ' * (column - 1)}^"
        return head

    def __str__(self) -> str:  # ValueError keeps args[0]; re-render so located() copies stay right
        return self._render()


def _window(text: str, column: int, width: int = 100) -> tuple[str, int]:
    """At most `width` characters of one line of `text` around `column`, and the column in them."""
    text = text.replace("\n", " ").replace("\t", " ")
    if len(text) <= width:
        return text, column
    start = max(0, min(column - width // 2, len(text) - width))
    cut = text[start:start + width]
    prefix = "..." if start > 0 else ""
    return prefix + cut + ("..." if start + width < len(text) else ""), column - start + len(prefix)


class CheckpointError(ConfigError):
    """A checkpoint that cannot be read: truncated, corrupt, or not a checkpoint of `hybrid train`."""


class RunFileError(ConfigError):
    """A run or sweep file (status.json, results.json, metrics.jsonl, sweep.json) that cannot be read."""


class DataError(ConfigError):
    """A corpus that cannot be used: a shard of the wrong size or dtype, an empty or unreadable folder."""
