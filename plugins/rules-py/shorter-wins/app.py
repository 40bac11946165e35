"""A conflict rule in Python, built with componentize-py in its default settings:

    componentize-py -d wit -w resolver-plugin componentize app -o shorter-wins.wasm

Of the sides' texts the shortest wins, over every side of the sync (a tie goes to the side named
first); anything else is left to a person. A field
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
            # Every side in the sync's order: left, right, then the third side and on.
            values = [s.value for s in [c.left, c.right, *c.others]]
            other = next((v for v in values if not isinstance(v, types.Value_Text)), None)
            if other is not None:
                out.append(
                    resolver.Resolution_Manual(f"cannot compare {type(other).__name__} with text")
                )
                continue
            best = 0
            for i, v in enumerate(values):
                if len(v.value) < len(values[best].value):
                    best = i
            if best == 0:
                out.append(resolver.Resolution_TakeLeft())
            elif best == 1:
                out.append(resolver.Resolution_TakeRight())
            else:
                out.append(resolver.Resolution_TakeOther(best - 2))
        return out
