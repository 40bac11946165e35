"""A conflict rule in Python, built with componentize-py in its default settings:

    componentize-py -d wit -w resolver-plugin componentize app -o shorter-wins.wasm

Of two texts the shorter wins (a tie goes left); anything else is left to a person. A field
named "boom" makes it raise, to show that a rule that raises decides nothing: its conflicts wait
for a person, with the traceback's message.
"""

from typing import List

from wit_world import exports
from wit_world.exports import resolver
from wit_world.imports import types


class Resolver(exports.Resolver):
    def resolve(self, conflicts: List[resolver.Conflict]) -> List[resolver.Resolution]:
        out: List[resolver.Resolution] = []
        for c in conflicts:
            if c.field == "boom":
                raise ValueError(f"no rule for {c.field} (raised on purpose)")
            left, right = c.left.value, c.right.value
            if isinstance(left, types.Value_Text) and isinstance(right, types.Value_Text):
                if len(left.value) <= len(right.value):
                    out.append(resolver.Resolution_TakeLeft())
                else:
                    out.append(resolver.Resolution_TakeRight())
            else:
                out.append(
                    resolver.Resolution_Manual(
                        f"cannot compare {type(left).__name__} with {type(right).__name__}"
                    )
                )
        return out
