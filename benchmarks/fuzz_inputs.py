"""Hostile input, fuzzed: property-based cases against extract's validators, with a summary table.

Runs the properties of ``tests/hostile.py`` (images: random, truncated, lying and animated files of
every mode; image keys: NUL bytes, ``..``, absolute paths, symlinks leaving the store, directories,
FIFOs, over-long names; listings and events: control characters, 100k-character titles, RTL marks,
emoji, prices that are text or out of range, NULLs where the contract says NOT NULL, duplicate ids)
for ``--cases`` generated cases each, and prints per target how many were kept, how many rejected
(by reason) and how many crashed. ``make test`` runs the same properties with a few hundred cases.

    .venv/bin/python benchmarks/fuzz_inputs.py [--cases 2500] [--seed 0] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path



def run_target(name: str, strategy, check, cases: int, seed: int) -> dict:
    from hypothesis import HealthCheck, given, seed as hypothesis_seed, settings

    outcomes: Counter = Counter()
    calls = [0]

    @hypothesis_seed(seed)
    @settings(max_examples=cases, database=None, deadline=None, suppress_health_check=list(HealthCheck))
    @given(strategy)
    def prop(value):
        calls[0] += 1
        result = check(value)
        outcomes.update(result if isinstance(result, Counter) else [result])

    started = time.perf_counter()
    crash = None
    try:
        prop()
    except Exception as exc:  # noqa: BLE001 - a crash is what this script reports
        found = list(exc.exceptions) if isinstance(exc, BaseExceptionGroup) else [exc]
        crash = "\n\n".join("".join(traceback.format_exception(e)).strip()[-3000:] for e in found)
    return {"target": name, "cases": calls[0], "crashes": int(crash is not None), "crash": crash,
            "seconds": round(time.perf_counter() - started, 1), "outcomes": dict(outcomes.most_common())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=2500, help="generated cases per target (4 targets)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    from tests import hostile

    with tempfile.TemporaryDirectory(prefix="lookalike-fuzz-") as tmp:
        store = hostile.make_store(Path(tmp))
        targets = [("image bytes", hostile.image_bytes(), hostile.check_image),
                   ("image keys", hostile.image_keys(), lambda key: hostile.check_key(store, key)),
                   ("listings", hostile.listing_rows(), hostile.check_listings),
                   ("events", hostile.event_rows(), hostile.check_events)]
        results = [run_target(name, strategy, check, args.cases, args.seed) for name, strategy, check in targets]

    print(f"{'target':<12} {'cases':>7} {'crashes':>8} {'seconds':>8}  outcomes (rows for listings/events)")
    for r in results:
        top = ", ".join(f"{k} {v}" for k, v in list(r["outcomes"].items())[:6])
        print(f"{r['target']:<12} {r['cases']:>7} {r['crashes']:>8} {r['seconds']:>8}  {top}")
    total, crashes = sum(r["cases"] for r in results), sum(r["crashes"] for r in results)
    print(f"{'total':<12} {total:>7} {crashes:>8}")
    for r in results:
        if r["crash"]:
            print(f"\n{r['target']} crashed:\n{r['crash']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 1 if crashes else 0


if __name__ == "__main__":
    sys.exit(main())
