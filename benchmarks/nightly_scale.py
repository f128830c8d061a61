"""What a night costs as the catalogue grows, and what the next night costs after a few percent changed.

From a sample marketplace of ``--base`` listings, catalogues of N listings are synthesised: each
listing copied with a new item_id and its photo written again with a few unique bytes after the
JPEG's end (so no two photos are byte-identical, yet each decodes like the original), and the
event log copied with the items. For each N the stages run as the nightly DAG runs them, each as
its own ``lookalike <stage>`` process (extract → embed → neighbors → publish; no model is
trained: the serving rule serves the image baseline), and then a second night after
``--changed`` of the listings got a new photo and title and ``--new`` new listings appeared.
Per stage and night: wall time, peak RSS of the process tree, and rows per second.

With ``--update-nights``, more nights follow, one per share c: c/3 of the listings get a new photo,
c/3 new listings appear and c/3 are sold. Each night's neighbours stage runs as the night runs it
(an update of the previous night's lists) and then again with ``--full``; both are reported by
their compute time (the stage's own, process start and writing the same outputs excluded, reading
the previous night's lists included), wall time and peak RSS, with their recall estimate.

    .venv/bin/python benchmarks/nightly_scale.py --sizes 20000 80000 320000 --json scale.json
    .venv/bin/python benchmarks/nightly_scale.py --sizes 20000 80000 --stages extract
    .venv/bin/python benchmarks/nightly_scale.py --sizes 20000 80000 --stages extract --set extract.decode_processes=0
    .venv/bin/python benchmarks/nightly_scale.py --sizes 320000 --update-nights 0.001 0.02 0.1 \
        --set neighbors.incremental_max_change=0.15
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]

DS = "2026-11-21"
NEXT = (date.fromisoformat(DS) + timedelta(days=1)).isoformat()
STAGES = ("extract", "embed", "neighbors", "publish")


def synthesise(base: Path, out: Path, n: int) -> dict:
    """A source of ``n`` listings copied from the sample at ``base`` (see the module docstring)."""
    src = sqlite3.connect(base / "marketplace.db")
    listings = src.execute("select * from listings order by item_id").fetchall()
    events = src.execute("select * from interactions").fetchall()
    src.close()
    images = out / "images"
    photos = {}
    for row in listings:
        if row[8] and (base / "images" / row[8]).is_file():
            photos[row[8]] = (base / "images" / row[8]).read_bytes()
    con = sqlite3.connect(out / "source.db")
    from lookalike.sample.marketplace import SCHEMA_SQL

    con.executescript(SCHEMA_SQL)
    copies = -(-n // len(listings))
    rows = []
    for c in range(copies):
        for row in listings[: n - c * len(listings)]:
            key = f"c{c}/{row[8]}" if row[8] in photos else row[8]
            if row[8] in photos:
                path = images / key
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(photos[row[8]] + f"copy {c}".encode())
            rows.append((f"{row[0]}-c{c}", *row[1:8], key, *row[9:]))
    con.executemany("insert into listings values (?,?,?,?,?,?,?,?,?,?,?)", rows)
    for c in range(copies):
        con.executemany("insert into interactions values (?,?,?,?,?,?)",
                        [(f"{e[0]}-c{c}", e[1] and f"{e[1]}-c{c}", e[2], f"{e[3]}-c{c}",
                          e[4] and f"{e[4]}-c{c}", e[5]) for e in events])
    con.commit()
    total_events = con.execute("select count(*) from interactions").fetchone()[0]
    con.close()
    return {"listings": len(rows), "events": total_events}


def change(out: Path, changed: float, new: float) -> dict:
    """The next night's source: ``changed`` of the listings with a new photo and title, ``new`` new ones."""
    con = sqlite3.connect(out / "source.db")
    rows = con.execute("select * from listings where image_key like 'c%' order by item_id").fetchall()
    stamp = f"{DS}T12:00:00"
    k_changed, k_new = round(len(rows) * changed), round(len(rows) * new)
    step = max(1, len(rows) // max(1, k_changed))
    picked = rows[::step][:k_changed]
    images = out / "images"
    for row in picked:
        path = images / row[8]
        path.write_bytes(path.read_bytes() + b" changed")
    con.executemany("update listings set title = title || ' (new photo)', updated_at = ? where item_id = ?",
                    [(stamp, row[0]) for row in picked])
    fresh = []
    for i, row in enumerate(rows[1::step][:k_new]):
        key = f"new/{i}.jpg"
        (images / "new").mkdir(exist_ok=True)
        (images / key).write_bytes((images / row[8]).read_bytes() + f"new {i}".encode())
        fresh.append((f"new-{i:07d}", row[1], row[2], row[3], row[4], row[5], "on_sale", row[7], key, stamp, stamp))
    con.executemany("insert into listings values (?,?,?,?,?,?,?,?,?,?,?)", fresh)
    con.commit()
    con.close()
    return {"changed": len(picked), "new": len(fresh)}


def turnover(out: Path, share: float, serial: int, ds: str) -> dict:
    """Night ``serial``'s source: share/3 of the listings with a new photo, share/3 new, share/3 sold."""
    con = sqlite3.connect(out / "source.db")
    rows = con.execute("select * from listings where status = 'on_sale' and image_key like 'c%' "
                       "order by item_id").fetchall()
    stamp = f"{ds}T06:00:00"
    part = max(1, round(len(rows) * share / 3))
    picked = [rows[i] for i in np.random.default_rng(serial).choice(len(rows), 3 * part, replace=False)]
    images = out / "images"
    for row in picked[:part]:
        path = images / row[8]
        path.write_bytes(path.read_bytes() + f" changed {serial}".encode())
    con.executemany("update listings set title = title || ' (new photo)', updated_at = ? where item_id = ?",
                    [(stamp, row[0]) for row in picked[:part]])
    fresh = []
    (images / "new").mkdir(exist_ok=True)
    for i, row in enumerate(picked[part:2 * part]):
        key = f"new/{serial}-{i}.jpg"
        (images / key).write_bytes((images / row[8]).read_bytes() + f"new {serial} {i}".encode())
        fresh.append((f"new-{serial}-{i:07d}", row[1], row[2], row[3], row[4], row[5], "on_sale", row[7], key, stamp,
                      stamp))
    con.executemany("insert into listings values (?,?,?,?,?,?,?,?,?,?,?)", fresh)
    con.executemany("update listings set status = 'sold', updated_at = ? where item_id = ?",
                    [(stamp, row[0]) for row in picked[2 * part:]])
    con.commit()
    con.close()
    return {"changed": part, "new": part, "sold": part}


def neighbours_both_ways(config: Path, ds: str) -> dict:
    """The night's neighbours stage as the night runs it, then in full: time, RSS and what it did."""
    from lookalike.config import load_config
    from lookalike.storage import Warehouse

    result = {}
    for how, extra in (("night", ()), ("full", ("--full",))):
        run = run_stage("neighbors", config, ds, extra)
        stats = json.loads(Warehouse.of(load_config(config)).work(ds, "neighbors_stats.json").read_text())
        writing = sum(g.get("write_seconds") or 0.0 for g in stats["groups"])
        result[how] = {**run, "mode": stats["mode"], "compute_seconds": round(
            stats["seconds"] + stats.get("previous_seconds", 0.0) - writing, 2), "write_seconds": round(writing, 2),
            "fresh": stats.get("fresh"), "recall": stats.get("recall_at_k"), "why": stats["why"],
            "previous_seconds": stats.get("previous_seconds", 0.0)}
        print(f"  {ds} neighbors ({how}): {result[how]['mode']}, compute {result[how]['compute_seconds']} s "
              f"(reading the previous night {result[how]['previous_seconds']} s), "
              f"{run['seconds']} s, {run['peak_rss_mb']} MB: {stats['why']}", flush=True)
    return result


def run_stage(stage: str, config: Path, ds: str, extra: tuple = ()) -> dict:
    """One ``lookalike <stage>`` process: its wall time and the peak RSS of its process tree (MB)."""
    run = measured(["-m", "lookalike.tools.cli", stage, "--config", str(config), "--ds", ds, *extra])
    if run["returncode"] != 0:
        raise SystemExit(f"{stage} --ds {ds} failed ({run['returncode']}):\n{run['stderr'][-3000:]}")
    return {"seconds": round(run["seconds"], 1), "peak_rss_mb": run["peak_rss_mb"]}


def measured(args: list[str], every: float = 0.1) -> dict:
    """``python ARGS`` in its own process, without LOOKALIKE_* overrides: its wall time, the peak RSS of its
    process tree (MB, sampled every ``every`` s), return code, stdout and stderr."""
    import psutil

    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOKALIKE_")}
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    peak, stop = [0.0], threading.Event()

    def sample():
        root = psutil.Process(proc.pid)
        while not stop.is_set():
            try:
                total = root.memory_info().rss
                for child in root.children(recursive=True):
                    try:
                        total += child.memory_info().rss
                    except psutil.Error:
                        pass
                peak[0] = max(peak[0], total / 2**20)
            except psutil.Error:
                pass
            stop.wait(every)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    out, err = proc.communicate()
    stop.set()
    thread.join()
    return {"seconds": time.monotonic() - started, "peak_rss_mb": round(peak[0]), "returncode": proc.returncode,
            "stdout": out, "stderr": err}


def night(config: Path, ds: str, stages: list[str], rows: int) -> dict:
    result = {}
    for stage in stages:
        result[stage] = run_stage(stage, config, ds)
        result[stage]["rows_per_s"] = round(rows / max(result[stage]["seconds"], 1e-9))
        if stage == "neighbors":  # what the tuning chose tonight: the index, its knob, the recall
            result[stage]["search"] = search_choice(config, ds)
        print(f"  {ds} {stage:<10} {result[stage]['seconds']:>8.1f} s  {result[stage]['peak_rss_mb']:>6} MB"
              f"  {result[stage].get('search', '')}", flush=True)
    return result


def knob(group: dict) -> str:
    if not group.get("knob"):
        return ""
    setting = f"{group['knob']}={group['value']}"
    return f" (the index at {setting} did not pay: exact)" if group.get("exact") else f" {setting}"


def search_choice(config: Path, ds: str) -> str:
    from lookalike.config import load_config
    from lookalike.storage import Warehouse

    from lookalike.neighbors.stage import describe_mode

    stats = json.loads(Warehouse.of(load_config(config)).work(ds, "neighbors_stats.json").read_text())
    if stats.get("mode") == "incremental":
        return describe_mode(stats)
    return "; ".join(f"{g['index']}{knob(g)} "
                     f"recall {g['recall_at_k']:.3f}, tuned in {g['tune_seconds']} s, searched in {g['search_seconds']} s"
                     for g in stats["groups"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[20_000, 80_000, 320_000], help="listings per catalogue")
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES),
                        help="a prefix of the night, in order (each needs the ones before it)")
    parser.add_argument("--base", type=int, default=1500, help="listings of the sample marketplace copied")
    parser.add_argument("--changed", type=float, default=0.02, help="share of listings with a new photo next night")
    parser.add_argument("--new", type=float, default=0.01, help="share of new listings next night")
    parser.add_argument("--update-nights", type=float, nargs="*", default=[], metavar="SHARE",
                        help="after the second night, one night per share (a third new photos, a third new "
                             "listings, a third sold), its neighbours stage run as the night runs it and in full")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="a config key for every stage (repeatable), e.g. extract.decode_processes=0")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if list(args.stages) != list(STAGES[:len(args.stages)]):
        parser.error(f"--stages must be a prefix of {' '.join(STAGES)}")
    from lookalike.sample.marketplace import SampleSpec, generate

    results = []
    with tempfile.TemporaryDirectory(prefix="lookalike-scale-") as tmp:
        root = Path(tmp)
        generate(root / "base", SampleSpec(items=args.base, users=max(100, args.base // 5),
                                           end=date.fromisoformat(DS)), progress=lambda *_: None)
        for n in args.sizes:
            folder = root / f"n{n}"
            folder.mkdir()
            made = synthesise(root / "base", folder, n)
            config = folder / "lookalike.yaml"
            settings = {"source": {"url": f"sqlite:///{folder / 'source.db'}", "images": str(folder / "images")},
                        "warehouse": str(folder / "warehouse"), "models": str(folder / "models")}
            for item in args.set:
                key, _, value = item.partition("=")
                section, name = key.split(".")
                settings.setdefault(section, {})[name] = yaml.safe_load(value)
            config.write_text(json.dumps(settings))
            print(f"N = {made['listings']} listings, {made['events']} events", flush=True)
            first = night(config, DS, args.stages, made["listings"])
            delta = change(folder, args.changed, args.new)
            second = night(config, NEXT, args.stages, made["listings"] + delta["new"])
            updates = []
            for serial, share in enumerate(args.update_nights, start=2):
                ds = (date.fromisoformat(DS) + timedelta(days=serial)).isoformat()
                moved = turnover(folder, share, serial, ds)
                for stage in ("extract", "embed"):
                    run_stage(stage, config, ds)
                updates.append({"share": share, **moved, **neighbours_both_ways(config, ds)})
            results.append({"listings": made["listings"], "events": made["events"], **delta,
                            "first": first, "second": second, "updates": updates})
            shutil.rmtree(folder)
    print(f"\nA night by catalogue size; the second night after {args.changed:.0%} of the listings got a new photo "
          f"and {args.new:.0%} were added")
    print(f"{'listings':>9} {'stage':<10}{'night 1 s':>10}{'RSS MB':>8}{'rows/s':>9}{'night 2 s':>11}{'RSS MB':>8}"
          f"{'2nd / 1st':>10}")
    for r in results:
        for stage in args.stages:
            a, b = r["first"][stage], r["second"][stage]
            print(f"{r['listings']:>9} {stage:<10}{a['seconds']:>10.1f}{a['peak_rss_mb']:>8}{a['rows_per_s']:>9}"
                  f"{b['seconds']:>11.1f}{b['peak_rss_mb']:>8}{b['seconds'] / a['seconds']:>10.2f}")
        one = sum(r["first"][s]["seconds"] for s in args.stages)
        two = sum(r["second"][s]["seconds"] for s in args.stages)
        print(f"{r['listings']:>9} {'night':<10}{one:>10.1f}{'':>8}{'':>9}{two:>11.1f}{'':>8}{two / one:>10.2f}")
    if args.update_nights:
        print("\nThe neighbours stage on nights after the second: as the night ran it, and in full")
        print(f"{'listings':>9}{'changed':>9}{'mode':>13}{'compute s':>11}{'full s':>8}{'ratio':>7}"
              f"{'wall s':>8}{'full':>7}{'RSS MB':>8}{'full':>7}")
        for r in results:
            for u in r["updates"]:
                a, b = u["night"], u["full"]
                print(f"{r['listings']:>9}{u['share']:>9.1%}{a['mode']:>13}{a['compute_seconds']:>11.2f}"
                      f"{b['compute_seconds']:>8.2f}{a['compute_seconds'] / b['compute_seconds']:>7.3f}"
                      f"{a['seconds']:>8.1f}{b['seconds']:>7.1f}{a['peak_rss_mb']:>8}{b['peak_rss_mb']:>7}")
    if len(results) > 1:
        small, large = results[0]["first"]["extract"], results[-1]["first"]["extract"]
        print(f"\nextract peak RSS at {results[-1]['listings']} listings: {large['peak_rss_mb'] / small['peak_rss_mb']:.2f}x "
              f"its peak at {results[0]['listings']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
