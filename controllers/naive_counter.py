"""The naive Counter controller: the same steps as controllers.counter, but written last-write-wins
(a JSON merge patch of status without metadata.resourceVersion), so concurrent writers overwrite
each other's increments. It exists to be measured against the safe one:

    python -m controllers.naive_counter --kubeconfig PATH [--workers 4]
    python -m controllers.naive_counter --kubeconfig PATH --storm 8x25 --counter NS/NAME

The storm report's lost_updates is acknowledged writes minus the count they produced.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from controllers import counter


def main(argv: Sequence[str] | None = None) -> int:
    return counter.main(argv, naive=True)


if __name__ == "__main__":
    sys.exit(main())
