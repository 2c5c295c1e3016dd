"""`python -m tessera.api --nsdb URL --listen ADDR:PORT`: the API server without the CLI."""

from __future__ import annotations

import argparse
import sys

from tessera.api.server import DEFAULT_LISTEN, DEFAULT_NSDB, ServeError, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tessera.api", description=__doc__)
    parser.add_argument("--nsdb", default=DEFAULT_NSDB, help="zk://HOST:PORT/ROOT or memory")
    parser.add_argument("--listen", default=DEFAULT_LISTEN, help="ADDR:PORT")
    args = parser.parse_args(argv)
    try:
        run(args.nsdb, args.listen)
    except ServeError as exc:
        print(f"tessera api: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
