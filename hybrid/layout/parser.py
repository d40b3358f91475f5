"""Layout strings -> flat sequences of aliases, with the column of every token for error messages.

Grammar (whitespace separates tokens; parentheses need none):

    sequence := item*
    item     := atom repeat?
    atom     := ALIAS | "(" sequence ")"
    repeat   := "x" N | "*" N           N >= 1, e.g. "(M F) x4", "(M F)x4", "M *3"

ALIAS is a name of letters, digits, "_", "-" or "." that starts with a letter or "_" and is not
itself a repeat such as "x4". Every ALIAS becomes one residual sublayer (or, for a shared block,
the sublayers of its body).

Limits, checked before anything is expanded: at most MAX_SUBLAYERS sublayers in all (a repeat
that would pass it fails at the column of its count, so "M x99999999" costs nothing) and
parentheses nested at most MAX_DEPTH deep.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from hybrid.errors import ConfigError, shown

ALIAS_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")
REPEAT_RE = re.compile(r"[x*]([0-9]+)")
MAX_SUBLAYERS = 2048  # deeper than any published model by 10x; a typo'd count is caught before allocation
MAX_DEPTH = 32  # nesting of parentheses


def is_valid_alias(name: str) -> bool:
    return bool(ALIAS_RE.fullmatch(name)) and not REPEAT_RE.fullmatch(name)


@dataclass(frozen=True)
class Token:
    text: str
    column: int  # 1-based


@dataclass(frozen=True)
class Occurrence:
    """One alias of the expanded sequence and where it was written."""

    alias: str
    column: int


def tokenize(text: str, key: str) -> list[Token]:
    tokens, i = [], 0
    while i < len(text):
        ch = text[i]
        if ch.isspace():
            i += 1
        elif ch in "()":
            tokens.append(Token(ch, i + 1))
            i += 1
        else:
            j = i
            while j < len(text) and not text[j].isspace() and text[j] not in "()":
                j += 1
            word = text[i:j]
            # "M*3" is alias M then repeat *3; "x3" alone is a repeat
            star = word.find("*", 1)
            if star > 0:
                tokens.append(Token(word[:star], i + 1))
                tokens.append(Token(word[star:], i + star + 1))
            else:
                tokens.append(Token(word, i + 1))
            i = j
    return tokens


def parse_layout(text: str, key: str = "model.layout") -> list[Occurrence]:
    """Expand a layout string into its sequence of alias occurrences (repetitions unrolled)."""
    if not isinstance(text, str):
        raise ConfigError(f"a layout must be a string, got {text!r}", key=key)
    tokens = tokenize(text, key)

    def error(message: str, column: int) -> ConfigError:
        return ConfigError(message, key=key, column=column, text=text)

    pos = 0

    def parse_sequence(depth: int, open_col: int) -> list[Occurrence]:
        nonlocal pos
        out: list[Occurrence] = []
        last: list[Occurrence] | None = None  # the item a following repeat applies to
        while pos < len(tokens):
            tok = tokens[pos]
            repeat = REPEAT_RE.fullmatch(tok.text)
            if tok.text == "(":
                if depth >= MAX_DEPTH:
                    raise error(f"parentheses nested more than {MAX_DEPTH} deep", tok.column)
                pos += 1
                last = parse_sequence(depth + 1, tok.column)
                out.extend(last)
            elif tok.text == ")":
                if depth == 0:
                    raise error("unbalanced ')': no '(' opens it", tok.column)
                pos += 1
                return out
            elif repeat:
                if last is None:
                    raise error(f"repeat {shown(tok.text)} follows nothing: write it after an alias or a ')'",
                                tok.column)
                count = _count(repeat.group(1), len(out), len(last), lambda m: error(m, tok.column))
                out.extend(last * (count - 1))
                last = None  # "M x2 x3" is ambiguous: reject the second repeat
                pos += 1
            elif is_valid_alias(tok.text):
                last = [Occurrence(tok.text, tok.column)]
                out.extend(last)
                pos += 1
            else:
                raise error(f"{shown(tok.text)} is not an alias: aliases are letters, digits, '_', '-' and '.', "
                            f"starting with a letter; repeats are written 'x4' or '*4'", tok.column)
        if depth > 0:
            raise error("unbalanced '(': no ')' closes it", open_col)
        return out

    result = parse_sequence(0, 0)
    if not result:
        raise ConfigError("the layout is empty: write at least one alias, e.g. \"(M F) x4\"", key=key)
    return result


def _count(digits: str, before: int, item: int, error) -> int:
    """The count of a repeat of an `item`-sublayer group after `before` sublayers, within MAX_SUBLAYERS."""
    too_many = (f"is more than the {MAX_SUBLAYERS} sublayers a layout may have "
                f"(hybrid.layout.parser.MAX_SUBLAYERS); write the count you meant")
    if len(digits) > 9:  # int() of a 5000-digit string would itself fail; no count that long is meant
        raise error(f"repeat count {shown(digits, 30)} {too_many}")
    count = int(digits)
    if count == 0:
        raise error(f"repeat x{count} would remove the item: counts start at 1")
    total = before + item * (count - 1)
    if total > MAX_SUBLAYERS:
        raise error(f"repeat x{count} makes {total:,} sublayers, which {too_many}")
    return count
