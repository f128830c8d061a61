"""Catalogue embedding throughput: the Spark job against the same work without Spark.

For the default model ("small", untrained weights: the compute is the same) over a synthetic
catalogue of N product photos (procedural sample-marketplace images, 96 px JPEG as extract
stores them, each row its own item and sha), measures side by side:

- (a)  bare: one process reads the catalogue Parquet, decodes, preprocesses and runs the model
       on all cores — the limit;
- (a0) the forward pass alone over pre-decoded tensors, for reference;
- (b)  the embed stage on Spark (local[*]) end to end, from a fresh warehouse;
- the ratio b/a, and the peak RSS of the driver (Python + JVM) and of the largest Python worker;
- with --incremental: a second night after 2% of the items changed (1% new photos, 1% new
  listings), its embed step time and its share of the full embedding time.

Every measurement runs in its own subprocess; RSS is sampled from its process tree.

    .venv/bin/python benchmarks/embed_throughput.py --items 100000 --incremental --json out.json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

DS, NEXT = "2026-11-21", "2026-11-22"
DISTINCT_IMAGES = 2000  # rendered once, then cycled: decoding cost is real, rendering is not measured


# ---------------------------------------------------------------- workers (run in subprocesses)
def _config(root: Path):
    from lookalike.config import load_config

    overrides = {k: v for k, v in os.environ.items() if k.startswith("LOOKALIKE_")}  # e.g. Spark memory
    return load_config(environ={**overrides, "LOOKALIKE_WAREHOUSE": str(root / "warehouse"),
                                "LOOKALIKE_MODELS": str(root / "models")})


def _device_and_model(root: Path):
    import torch

    from lookalike.siglip import load_model

    torch.set_num_threads(os.cpu_count())
    loaded = load_model(root / "model")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    loaded.model.to(device)
    return loaded, device


def vision_flops_per_image(root: Path) -> float:
    """Matmul FLOPs of one image through the vision tower: 2 x parameters x tokens (attention's
    quadratic term left out: it is a few percent at 196 tokens)."""
    from lookalike.siglip import load_model

    model = load_model(root / "model").model
    vc = model.config.vision_config
    tokens = (vc.image_size // vc.patch_size) ** 2
    return 2.0 * sum(p.numel() for p in model.vision_model.parameters()) * tokens


def make_inputs(root: Path, items: int, model_name: str) -> None:
    """The default model (saved) and a catalogue of ``items`` rows in the work area of DS."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch
    from transformers import SiglipModel

    from lookalike import schemas
    from lookalike.extract.images import prepare_image
    from lookalike.sample.images import CATEGORIES, COLOURS, PATTERNS, STYLES, encode, render_product
    from lookalike.siglip import ARCHITECTURES, Preprocess, build_config, save_model, train_tokenizer
    from lookalike.storage import Warehouse

    tok = train_tokenizer(["red striped tee", "blue vase", "green lamp"] * 20, 60, 24)
    torch.manual_seed(0)
    model = SiglipModel(build_config(model_name, vocab_size=len(tok), max_text_length=24))
    save_model(model, tok, Preprocess(ARCHITECTURES[model_name]["image_size"]), root / "model", {"version": "bench"})
    rng = np.random.default_rng(0)
    images = []
    for i in range(DISTINCT_IMAGES):
        img = render_product(rng, category=CATEGORIES[i % len(CATEGORIES)], colour=list(COLOURS)[i % len(COLOURS)],
                             pattern=PATTERNS[i % len(PATTERNS)], style=STYLES[i % len(STYLES)])
        images.append(prepare_image(encode(img, "JPEG"), size=96, max_pixels=10**8, min_side=8).jpeg)
    folder = Warehouse.at(root / "warehouse").fresh_work(DS, "catalog")
    listing = {f.name: None for f in schemas.LISTING_FIELDS}
    with pq.ParquetWriter(folder / "part-0.parquet", schemas.ITEMS, compression="zstd") as writer:
        for start in range(0, items, 2000):  # row groups of 2,000 rows, as extract writes them
            n = min(2000, items - start)
            rows = [dict(listing, ds=DS, item_id=f"b{start + i:08d}", title="t", status="on_sale",
                         image=images[(start + i) % DISTINCT_IMAGES], image_width=96, image_height=96,
                         image_sha256=f"sha{start + i}") for i in range(n)]
            writer.write_table(pa.Table.from_pylist(rows, schema=schemas.ITEMS))


def run_bare(root: Path) -> dict:
    """(a) one process, all cores (or the GPU, in bf16): read Parquet by batches, decode, preprocess, model."""
    import pyarrow.parquet as pq

    from lookalike.siglip import embed_pixels
    from lookalike.storage import Warehouse

    loaded, device = _device_and_model(root)
    path = Warehouse.at(root / "warehouse").work(DS, "catalog") / "part-0.parquet"
    started, n = time.perf_counter(), 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=1024, columns=["item_id", "image"]):
        pixels = loaded.preprocess.decode(batch.column("image").to_pylist())
        n += len(embed_pixels(loaded.model, pixels, loaded.preprocess, 256, bf16=device == "cuda"))
    return {"images": n, "seconds": time.perf_counter() - started, "device": device}


def run_forward(root: Path) -> dict:
    """(a0) the forward pass alone over pre-decoded tensors."""
    import pyarrow.parquet as pq

    from lookalike.siglip import embed_pixels
    from lookalike.storage import Warehouse

    loaded, device = _device_and_model(root)
    bf16 = device == "cuda"
    path = Warehouse.at(root / "warehouse").work(DS, "catalog") / "part-0.parquet"
    images = pq.ParquetFile(path).read_row_group(0, columns=["image"]).column(0).to_pylist()[:8192]
    pixels = loaded.preprocess.decode(images)
    embed_pixels(loaded.model, pixels[:512], loaded.preprocess, 256, bf16=bf16)  # warm-up
    started = time.perf_counter()
    n = len(embed_pixels(loaded.model, pixels, loaded.preprocess, 256, bf16=bf16))  # returns on the host: synced
    return {"images": n, "seconds": time.perf_counter() - started, "device": device,
            "flops_per_image": vision_flops_per_image(root)}


def run_stage(root: Path, ds: str) -> dict:
    """(b) the embed stage as the nightly DAG runs it."""
    from lookalike.embed.stage import run_embed

    started = time.perf_counter()
    out = run_embed(_config(root), ds, model_uri=str(root / "model"))
    return {**{k: out[k] for k in ("computed", "reused", "executor")}, "seconds": time.perf_counter() - started}


def publish_and_change(root: Path, share: float) -> dict:
    """Publish DS's embeddings, then make NEXT's catalogue: share/2 new photos, share/2 new items."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lookalike.storage import Warehouse

    wh = Warehouse.at(root / "warehouse")
    out = wh.work(DS, "item_embeddings")
    rows = sum(pq.read_metadata(f).num_rows for f in out.glob("*.parquet"))
    publication = wh.begin(DS)
    publication.add("item_embeddings", sorted(out.glob("*.parquet")), rows=rows)
    publication.commit(retain=3)
    table = pq.read_table(wh.work(DS, "catalog"))
    n = table.num_rows
    k = int(n * share / 2)
    sha = table.column("image_sha256").to_pylist()
    for i in range(0, n, max(1, n // k))[:k]:
        sha[i] = f"changed-{i}"  # a new photo (its bytes are re-decoded and re-embedded)
    table = table.set_column(table.schema.get_field_index("image_sha256"), "image_sha256", pa.array(sha))
    extra = table.slice(0, k)
    extra = extra.set_column(extra.schema.get_field_index("item_id"), "item_id",
                             pa.array([f"new{i:08d}" for i in range(k)]))
    folder = wh.fresh_work(NEXT, "catalog")
    pq.write_table(pa.concat_tables([table, extra.cast(table.schema)]), folder / "part-0.parquet")
    return {"changed": k, "new": k}


# ---------------------------------------------------------------- the orchestrating parent
def _measure(args: list[str]) -> tuple[dict, dict]:
    """Run this script's worker ``args`` in a subprocess; returns (its JSON result, peak RSS in MB)."""
    import psutil

    proc = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    peaks = {"driver": 0.0, "jvm": 0.0, "worker": 0.0}
    stop = threading.Event()

    def sample():
        root = psutil.Process(proc.pid)
        while not stop.is_set():
            try:
                driver, jvm, worker = root.memory_info().rss, 0, 0
                for child in root.children(recursive=True):
                    try:
                        cmd, rss = " ".join(child.cmdline()), child.memory_info().rss
                    except psutil.Error:
                        continue
                    if "java" in child.name():
                        jvm += rss
                    elif "pyspark" in cmd or "python" in child.name():
                        worker = max(worker, rss)
                peaks["driver"] = max(peaks["driver"], (driver + jvm) / 2**20)
                peaks["jvm"] = max(peaks["jvm"], jvm / 2**20)
                peaks["worker"] = max(peaks["worker"], worker / 2**20)
            except psutil.Error:
                pass
            stop.wait(0.2)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    out, _ = proc.communicate()
    stop.set()
    thread.join()
    if proc.returncode != 0:
        raise SystemExit(f"worker {args} failed with exit status {proc.returncode}")
    return json.loads(out.strip().splitlines()[-1]), peaks


def benchmark(items: int, incremental: bool, model: str, peak_tflops: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="lookalike-embed-bench-") as tmp:
        root = str(tmp)
        _measure(["--worker", "inputs", root, str(items), model])
        bare, bare_rss = _measure(["--worker", "bare", root])
        forward, _ = _measure(["--worker", "forward", root])
        spark, spark_rss = _measure(["--worker", "stage", root, DS])
        result = {
            "items": items,
            "model": model,
            "device": bare["device"],
            "bare_images_per_s": round(bare["images"] / bare["seconds"], 1),
            "forward_only_images_per_s": round(forward["images"] / forward["seconds"], 1),
            "spark_images_per_s": round(spark["computed"] / spark["seconds"], 1),
            "spark_seconds": round(spark["seconds"], 1),
            "bare_seconds": round(bare["seconds"], 1),
            "driver_peak_rss_mb": round(spark_rss["driver"], 1),
            "jvm_peak_rss_mb": round(spark_rss["jvm"], 1),
            "worker_peak_rss_mb": round(spark_rss["worker"], 1),
            "bare_peak_rss_mb": round(bare_rss["driver"], 1),
            "executor": spark["executor"],
        }
        result["ratio"] = round(result["spark_images_per_s"] / result["bare_images_per_s"], 3)
        if forward["device"] == "cuda":  # model FLOPs utilisation of the forward pass, bf16 dense peak
            achieved = forward["images"] / forward["seconds"] * forward["flops_per_image"]
            result["forward_mfu"] = round(achieved / (peak_tflops * 1e12), 4)
        if incremental:
            change, _ = _measure(["--worker", "change", root, "0.02"])
            night, _ = _measure(["--worker", "stage", root, NEXT])
            result.update({
                "incremental_changed_items": change["changed"] + change["new"],
                "incremental_computed": night["computed"], "incremental_reused": night["reused"],
                "incremental_executor": night["executor"],
                "incremental_seconds": round(night["seconds"], 1),
                "incremental_share_of_full": round(night["seconds"] / spark["seconds"], 3),
            })
        return result


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--worker":
        kind, root, *rest = argv[1:]
        work = {"inputs": lambda: make_inputs(Path(root), int(rest[0]), rest[1]) or {},
                "bare": lambda: run_bare(Path(root)), "forward": lambda: run_forward(Path(root)),
                "stage": lambda: run_stage(Path(root), rest[0]),
                "change": lambda: publish_and_change(Path(root), float(rest[0]))}[kind]
        print(json.dumps(work()))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, nargs="+", default=[20000])
    parser.add_argument("--incremental", action="store_true", help="also time a night after 2%% changed")
    parser.add_argument("--model", default="small", help="named architecture, e.g. siglip-base-patch16-224")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="GPU bf16 dense peak for MFU (H100 SXM)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    results = [benchmark(n, args.incremental, args.model, args.peak_tflops) for n in args.items]
    keys = ["items", "bare_images_per_s", "forward_only_images_per_s", "spark_images_per_s", "ratio",
            "driver_peak_rss_mb", "worker_peak_rss_mb"]
    if args.incremental:
        keys += ["incremental_computed", "incremental_seconds", "spark_seconds", "incremental_share_of_full"]
    print("  ".join(f"{k:>24}" for k in keys))
    for r in results:
        print("  ".join(f"{r[k]:>24}" for k in keys))
    if args.json:
        args.json.write_text(json.dumps(results if len(results) > 1 else results[0], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
