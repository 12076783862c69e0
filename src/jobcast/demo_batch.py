"""A stand-in for an existing batch program, run by the demo's ``batch`` command task.

It knows nothing of jobcast: it prints what it does and ``n/total`` as it goes, writes
warnings to stderr, and exits non-zero when told to fail, like any batch script.
"""

from __future__ import annotations

import argparse
import sys
import time


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--items", type=int, default=20)
    parser.add_argument("--delay", type=float, default=0.2)
    parser.add_argument("--fail-at", type=int, default=0, help="fail at this item (0: never)")
    args = parser.parse_args()
    for item in range(1, args.items + 1):
        time.sleep(args.delay)
        if item == args.fail_at:
            print(f"item {item}: checksum mismatch, giving up", file=sys.stderr)
            return 2
        if item % 7 == 0:
            print(f"item {item}: retried once", file=sys.stderr)
        print(f"processed item {item} {item}/{args.items}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
