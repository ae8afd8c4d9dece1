"""One entry point for the sample controllers (the container image's command):

    python -m controllers.main counter [flags]              # = python -m controllers.counter
    python -m controllers.main naive-counter [flags]        # = python -m controllers.naive_counter
    python -m controllers.main replicatedconfigmap [flags]  # = python -m controllers.replicator
                               (also: replicator)
    python -m controllers.main rollout-stepper [flags]      # = python -m controllers.rollout_stepper

`python -m controllers.main <controller> --help` lists the controller's flags.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from controllers import counter, naive_counter, replicator, rollout_stepper

CONTROLLERS: dict[str, Callable[[Sequence[str] | None], int]] = {
    "counter": counter.main,
    "naive-counter": naive_counter.main,
    "replicatedconfigmap": replicator.main,
    "replicator": replicator.main,
    "rollout-stepper": rollout_stepper.main,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in CONTROLLERS:
        names = ", ".join(CONTROLLERS)
        print(f"usage: python -m controllers.main {{{names}}} [flags]", file=sys.stderr)
        return 0 if args[:1] in (["-h"], ["--help"]) else 2
    return CONTROLLERS[args[0]](args[1:])


if __name__ == "__main__":
    sys.exit(main())
