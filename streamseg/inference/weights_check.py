"""`python -m streamseg.inference.weights_check < CONFIG_JSON`: judge a model config's weights.

The supervisor imports no torch, so its preflight (`streamseg.pipeline.preflight.check_weights`)
asks this process: it loads the checkpoint (weights_only, memory-mapped), builds the model on the
meta device and compares the two (`model.check_weights`). Exit 0: the weights fit; exit 2: the
one line on stdout says what is wrong and how to fix it. COCO weights missing from the cache are
downloaded here, once, before any stage starts.
"""

from __future__ import annotations

import json
import sys

from streamseg.config import ConfigError, from_dict


def main() -> int:
    try:
        cfg = from_dict(json.loads(sys.stdin.read()))
    except (ValueError, ConfigError) as e:
        print(f"unusable model config: {e}")
        return 2
    from streamseg.inference.model import check_weights

    problem = check_weights(cfg)
    if problem:
        print(" ".join(problem.split()))  # one line, whatever the message holds
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
