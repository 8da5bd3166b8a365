"""The ``ringd`` console script: ``ringd health`` takes a light path, the rest is the CLI.

A container probe runs ``ringd health`` every few seconds; importing the whole CLI
(config, YAML, the client, OpenTelemetry via the server) for it would cost far more
than the check. Everything but ``health`` goes to :func:`ringd.server.cli.main`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ringd`` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["health"]:
        from ringd.server.health_cli import main as health

        return health(args[1:])
    from ringd.server.cli import main as cli

    return cli(args)


if __name__ == "__main__":
    sys.exit(main())
