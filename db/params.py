"""Named parameters for SQL statements.

A statement with many parameters is written with names (`:campaign`, `:ids::bigint[]`) instead of positional
`$1..$24` matched to its argument list by comments. `Named.of` numbers the names `$1, $2, ...` in the order they
first appear (a name used twice is one parameter) and keeps the order; `args(**values)` builds the argument list
from keyword values and refuses a missing or an unknown name, so a statement and its call site cannot drift apart
silently. The numbering is done once, when the module defines the statement: the per-call cost is one dict lookup
per parameter.

A name is a colon, then a lower-case letter or `_`, then letters, digits and `_`, not preceded by a colon or a word
character: `::bigint[]` casts, `'08:00'` literals and `'outbox:' || ...` concatenations are left alone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

_NAME = re.compile(r"(?<![:\w]):([a-z_][a-z0-9_]*)")


@dataclass(frozen=True)
class Named:
    sql: str  # the statement with $1.. for asyncpg
    names: tuple[str, ...]  # the parameters' names, in $n order

    @classmethod
    def of(cls, text: str) -> Named:
        if re.search(r"\$\d", text):
            raise ValueError("a named statement uses names only, not $n")
        names: list[str] = []

        def number(match: re.Match) -> str:
            name = match.group(1)
            if name not in names:
                names.append(name)
            return f"${names.index(name) + 1}"

        return cls(_NAME.sub(number, text), tuple(names))

    def args(self, **values: Any) -> list:
        """The argument list in $n order; every name of the statement, and only those, must be given."""
        if len(values) != len(self.names) or any(n not in values for n in self.names):
            missing = [n for n in self.names if n not in values]
            unknown = sorted(set(values) - set(self.names))
            raise TypeError(f"statement parameters: missing {missing}, unknown {unknown}")
        return [values[n] for n in self.names]
