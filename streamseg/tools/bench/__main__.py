"""`python -m streamseg.tools.bench naive JSON_KWARGS`: the naive loop in a process of its own.

JSON_KWARGS are scenarios.naive_loop's keyword arguments; its result is the last stdout line.
"""

import json
import sys

from streamseg.tools.bench.scenarios import naive_loop

if len(sys.argv) != 3 or sys.argv[1] != "naive":
    raise SystemExit("usage: python -m streamseg.tools.bench naive JSON_KWARGS")
print(json.dumps(naive_loop(**json.loads(sys.argv[2]))))
