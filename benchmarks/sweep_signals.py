"""The long signal sweep over the launcher's close (tests/signal_sweep.py; CI runs a short one).

    python benchmarks/sweep_signals.py                    # 4 kinds x 31 offsets (0-300 ms), 220,000 rows
    python benchmarks/sweep_signals.py --offsets 61 --max-ms 300 --rows 500000

Prints one line per failing case and the totals per kind: how many cases ended with the file closed and every
row present.  Exit status 1 when any case lost data or hung.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from signal_sweep import SIGNALS, sweep  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=220_000)
    ap.add_argument("--offsets", type=int, default=31, help="offsets per kind, evenly from 0 to --max-ms")
    ap.add_argument("--max-ms", type=float, default=300.0)
    ap.add_argument("--kinds", default=",".join(SIGNALS), help=f"comma-separated, of {', '.join(SIGNALS)}")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    kinds = tuple(args.kinds.split(","))
    step = args.max_ms / max(1, args.offsets - 1)
    offsets = [i * step / 1000 for i in range(args.offsets)]
    t0 = time.monotonic()
    cases = sweep(kinds, offsets, args.rows, workers=args.workers)
    for c in cases:
        if not c.ok:
            print("LOST OR HUNG:", c)
    print(
        f"{len(cases)} cases, {args.rows:,} rows each, offsets 0-{args.max_ms:g} ms, {time.monotonic() - t0:.0f} s"
    )
    for kind in kinds:
        mine = [c for c in cases if c.kind == kind]
        ok = sum(c.ok for c in mine)
        by_signal = sum(c.returncode is not None and c.returncode < 0 for c in mine)
        print(f"  {kind:8} {ok}/{len(mine)} closed with every row ({by_signal} ended by the signal)")
    return 0 if all(c.ok for c in cases) else 1


if __name__ == "__main__":
    raise SystemExit(main())
