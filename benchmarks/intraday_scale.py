"""What an intraday hour costs as the catalogue grows, against the night it builds on, in one run.

For each N, a source of N listings is synthesised as ``nightly_scale.py`` does, and the night runs as the
nightly DAG runs it (extract → embed → neighbors → publish → handoff, each its own ``lookalike`` process;
the image baseline is served), handing off to a PostgreSQL and a Redis started here on loopback. Then
``--hours`` hours follow: in each, ``--changed`` of the listings are new or get a new photo (half each) and
``--sold`` are sold, stamped inside the hour, and the hour runs as lookalike_intraday runs it: ``lookalike
intraday --step update``, ``--step publish``, ``--step handoff``, each its own process. Per step: wall time
(process start included) and the peak RSS of its process tree; the update's own stages from its
``hour.json`` (reading the night, extract, photos, embed, lists, write). The hour's total is compared with
the night's (all five stages).

    .venv/bin/python benchmarks/intraday_scale.py --sizes 20000 80000 320000 --json intraday.json
"""
from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import sys
import tempfile
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from handoff import start_postgres, start_redis
from nightly_scale import DS, measured, run_stage, synthesise

NIGHT = ("extract", "embed", "neighbors", "publish", "handoff")
STEPS = ("update", "publish", "handoff")
PARTS = ("read_night", "extract", "photos", "embed", "lists", "write")


def an_hour(folder: Path, changed: float, sold: float, serial: int, stamp: str) -> dict:
    """The hour's changes in the source: changed/2 new listings, changed/2 new photos, ``sold`` sold."""
    con = sqlite3.connect(folder / "source.db")
    rows = con.execute("select * from listings where status = 'on_sale' and image_key like 'c%' "
                       "order by item_id").fetchall()
    half, gone = max(1, round(len(rows) * changed / 2)), max(1, round(len(rows) * sold))
    picked = [rows[i] for i in np.random.default_rng(serial).choice(len(rows), 2 * half + gone, replace=False)]
    images = folder / "images"
    for row in picked[:half]:
        path = images / row[8]
        path.write_bytes(path.read_bytes() + f" hour {serial}".encode())
    con.executemany("update listings set title = title || ' (new photo)', updated_at = ? where item_id = ?",
                    [(stamp, row[0]) for row in picked[:half]])
    (images / "hour").mkdir(exist_ok=True)
    fresh = []
    for i, row in enumerate(picked[half:2 * half]):
        key = f"hour/{serial}-{i}.jpg"
        (images / key).write_bytes((images / row[8]).read_bytes() + f"hour {serial} {i}".encode())
        fresh.append((f"hour-{serial}-{i:06d}", row[1], row[2], row[3], row[4], row[5], "on_sale", row[7], key, stamp,
                      stamp))
    con.executemany("insert into listings values (?,?,?,?,?,?,?,?,?,?,?)", fresh)
    con.executemany("update listings set status = 'sold', updated_at = ? where item_id = ?",
                    [(stamp, row[0]) for row in picked[2 * half:]])
    con.commit()
    con.close()
    return {"new": half, "new_photo": half, "sold": gone}


def step(config: Path, name: str, as_of: str) -> dict:
    """One ``lookalike intraday --step`` process: wall time, peak RSS of its tree, its result."""
    run = measured(["-m", "lookalike.tools.cli", "intraday", "--config", str(config), "--as-of", as_of, "--step", name],
                   every=0.05)
    if run["returncode"] != 0:
        raise SystemExit(f"intraday --step {name} --as-of {as_of} failed ({run['returncode']}):\n"
                         f"{run['stderr'][-3000:]}")
    return {"seconds": round(run["seconds"], 2), "peak_rss_mb": run["peak_rss_mb"],
            "result": json.loads(run["stdout"])[name]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[20_000, 80_000, 320_000])
    parser.add_argument("--hours", type=int, default=3, help="hours after the night, each measured")
    parser.add_argument("--changed", type=float, default=0.001, help="share of listings new or with a new photo "
                                                                     "per hour (half each)")
    parser.add_argument("--sold", type=float, default=0.001, help="share of listings sold per hour")
    parser.add_argument("--base", type=int, default=1500, help="listings of the sample marketplace copied")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    from lookalike.sample.marketplace import SampleSpec, generate

    results = []
    with tempfile.TemporaryDirectory(prefix="lookalike-intraday-") as tmp:
        root = Path(tmp)
        root.chmod(0o755)  # PostgreSQL runs as its own user
        (root / "redis").mkdir()
        postgres, stop_postgres = start_postgres(root / "pg")
        redis, stop_redis = start_redis(root / "redis")
        try:
            generate(root / "base", SampleSpec(items=args.base, users=max(100, args.base // 5),
                                               end=date.fromisoformat(DS)), progress=lambda *_: None)
            for n in args.sizes:
                folder = root / f"n{n}"
                folder.mkdir()
                made = synthesise(root / "base", folder, n)
                config = folder / "lookalike.yaml"
                config.write_text(json.dumps({
                    "source": {"url": f"sqlite:///{folder / 'source.db'}", "images": str(folder / "images")},
                    "warehouse": str(folder / "warehouse"), "models": str(folder / "models"),
                    "intraday": {"schedule": ""},
                    "serving": {"sinks": "postgres,redis", "tables": "item_neighbors",
                                "postgres": {"url": postgres, "schema": f"n{n}"},
                                "redis": {"url": redis, "prefix": f"n{n}"}}}))
                print(f"N = {made['listings']} listings", flush=True)
                night = {}
                for stage in NIGHT:
                    night[stage] = run_stage(stage, config, DS)
                    print(f"  night {stage:<10}{night[stage]['seconds']:>8.1f} s {night[stage]['peak_rss_mb']:>6} MB",
                          flush=True)
                hours = []
                cutoff = datetime.fromisoformat(f"{DS}T00:00:00")
                for h in range(1, args.hours + 1):
                    stamp = (cutoff + timedelta(hours=h - 1, minutes=30)).isoformat()
                    moved = an_hour(folder, args.changed, args.sold, h, stamp)
                    as_of = (cutoff + timedelta(hours=h)).isoformat()
                    steps = {name: step(config, name, as_of) for name in STEPS}
                    record = steps["update"]["result"]
                    hours.append({"as_of": as_of, **moved, "steps": steps, "parts": record["seconds"],
                                  "lists_changed": record["lists_changed"], "rows": record["rows"]})
                    print(f"  hour {h}: " + ", ".join(f"{s} {steps[s]['seconds']} s {steps[s]['peak_rss_mb']} MB"
                                                      for s in STEPS)
                          + f"; {record['lists_changed']} lists changed", flush=True)
                results.append({"listings": made["listings"], "night": night, "hours": hours})
                shutil.rmtree(folder)
        finally:
            stop_redis()
            stop_postgres()

    print(f"\nAn hour after the night: {args.changed:.1%} of the listings new or with a new photo and {args.sold:.1%} "
          f"sold in the hour (mean of {args.hours} hours; process start included)")
    print(f"{'listings':>9}{'update s':>10}{'RSS MB':>8}{'publish s':>10}{'RSS MB':>8}{'handoff s':>10}{'RSS MB':>8}"
          f"{'hour s':>8}{'night s':>9}{'hour/night':>11}{'lists':>8}")
    for r in results:
        mean = {s: float(np.mean([h["steps"][s]["seconds"] for h in r["hours"]])) for s in STEPS}
        rss = {s: max(h["steps"][s]["peak_rss_mb"] for h in r["hours"]) for s in STEPS}
        hour, whole = sum(mean.values()), sum(r["night"][s]["seconds"] for s in NIGHT)
        lists = np.mean([h["lists_changed"] for h in r["hours"]])
        print(f"{r['listings']:>9}{mean['update']:>10.1f}{rss['update']:>8}{mean['publish']:>10.1f}{rss['publish']:>8}"
              f"{mean['handoff']:>10.1f}{rss['handoff']:>8}{hour:>8.1f}{whole:>9.1f}{hour / whole:>11.3f}{lists:>8.0f}")
    print("\nInside the update (seconds, mean of the hours): " + ", ".join(PARTS))
    print(f"{'listings':>9}" + "".join(f"{p:>12}" for p in PARTS))
    for r in results:
        print(f"{r['listings']:>9}" + "".join(f"{np.mean([h['parts'][p] for h in r['hours']]):>12.2f}" for p in PARTS))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
