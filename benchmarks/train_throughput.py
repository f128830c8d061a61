"""Training throughput: the real input pipeline against one pre-loaded batch reused.

Both sides run the same training loop (``lookalike.train.loop.train_siglip``: augmentation,
forward, global sigmoid loss, backward, clipping, AdamW) on the same model and batch size:

- loaded:     batches come from ``PairStream`` over a listings snapshot in Parquet — row groups
              read, photos decoded and resized, titles tokenised in DataLoader worker processes;
- preloaded:  the first of those batches, reused every step — the compute-only limit.

The loaded side runs twice: as the train stage runs the CPU default (the snapshot fits in
``train.decoded_cache_mb``, so photos are decoded by the workers in the first epoch and served
from shared memory in-process after it; the first epoch's rate is reported on its own), and
streamed (every visit decodes again in the workers, as for a catalogue too large for the cache).

Their ratio says whether the input pipeline keeps the model fed (1.0 = it is never waited on).
The snapshot is synthetic but realistic: procedural sample-marketplace photos stored as 96 px
JPEG the way extract stores them, titles naming category and colour, row groups of 2,000.
Each side runs ``--repeats`` times, alternating, after a warm-up; the medians are reported.

On a CUDA machine it also measures ``siglip-base-patch16-224`` at ``--gpu-batch`` (≥ 256) in bf16
and its model FLOPs utilisation (6 x parameters x tokens per pair, attention's quadratic term
left out; ``--peak-tflops`` is the device's dense bf16 peak).

    .venv/bin/python benchmarks/train_throughput.py --json out.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


DISTINCT_IMAGES = 1500


def make_snapshot(folder: Path, items: int) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lookalike.extract.images import prepare_image
    from lookalike.sample.images import CATEGORIES, COLOURS, PATTERNS, STYLES, encode, render_product

    rng = np.random.default_rng(0)
    colours = list(COLOURS)
    photos = []
    for i in range(DISTINCT_IMAGES):
        cat, col = CATEGORIES[i % len(CATEGORIES)], colours[(i // 3) % len(colours)]
        img = render_product(rng, category=cat, colour=col, pattern=PATTERNS[i % len(PATTERNS)],
                             style=STYLES[(i // 7) % len(STYLES)])
        photos.append((prepare_image(encode(img, "JPEG"), size=96, max_pixels=10**8, min_side=8).jpeg, cat, col))
    folder.mkdir(parents=True)
    schema = pa.schema([("item_id", pa.string()), ("image_sha256", pa.string()), ("title", pa.string()),
                        ("category", pa.string()), ("brand", pa.string()), ("description", pa.string()),
                        ("price", pa.float64()), ("image", pa.binary())])
    with pq.ParquetWriter(folder / "part-0.parquet", schema, compression="zstd") as writer:
        for start in range(0, items, 2000):
            rows = []
            for i in range(start, min(items, start + 2000)):
                data, cat, col = photos[i % DISTINCT_IMAGES]
                rows.append({"item_id": f"b{i:08d}", "image_sha256": f"sha{i}", "title": f"{col} {cat} no {i}",
                             "category": cat, "brand": None, "description": None, "price": 10.0, "image": data})
            writer.write_table(pa.Table.from_pylist(rows, schema=schema))
    return folder


class Bench:
    def __init__(self, snapshot: Path, model_name: str, batch: int, workers: int, precision: str, device: str,
                 cache_mb: int):
        import torch
        from transformers import SiglipModel

        from lookalike.siglip import ARCHITECTURES, Preprocess, build_config, init_siglip_head, train_tokenizer
        from lookalike.train.data import (DecodedCache, PairStream, StreamPlan, batch_loader, batches_from, fragments,
                                          group_ids, read_texts)
        from lookalike.train.distributed import World

        texts = read_texts(snapshot, "{title} | {category}")
        tok = train_tokenizer(texts.texts, 2000, 24)
        frags = fragments(snapshot)
        groups = group_ids(texts.shas, texts.texts)
        plan = StreamPlan(frags, np.ones(len(texts.texts), bool), seed=0)
        self.preprocess = Preprocess(ARCHITECTURES[model_name]["image_size"])
        torch.manual_seed(0)
        self.model = SiglipModel(build_config(model_name, vocab_size=len(tok), max_text_length=24))
        init_siglip_head(self.model)
        self.world = World(device=torch.device(device))
        self.batch, self.workers, self.precision = batch, workers, precision
        self.rows = len(texts.texts)
        cache = DecodedCache(self.rows, self.preprocess.size, 24, cache_mb)
        self.cached = cache.enabled
        self.stream = lambda start: PairStream(frags, texts.texts, groups, plan, batch_size=batch,
                                               preprocess=self.preprocess, tokenizer=tok, max_text_length=24,
                                               start=start, cache=cache)
        # exactly what the train stage iterates (workers decode; once cached, served in-process)
        self.loader = lambda start: batches_from(self.stream, start, workers, device == "cuda", cache)
        self.first = next(iter(batch_loader(self.stream(0), 0, pin_memory=False)))
        self.params = sum(p.numel() for p in self.model.parameters())
        vc = self.model.config.vision_config
        v_params = sum(p.numel() for p in self.model.vision_model.parameters())
        t_params = sum(p.numel() for p in self.model.text_model.parameters())
        self.flops_per_pair = 6.0 * (v_params * (vc.image_size // vc.patch_size) ** 2 + t_params * 24)

    def run(self, steps: int, preloaded: bool, **options) -> float:
        import torch

        from lookalike.config import TrainConfig
        from lookalike.train.loop import Budget, train_siglip

        def reused(start):
            while True:
                yield self.first

        cfg = TrainConfig(max_steps=steps, minutes=60, batch_size=self.batch, learning_rate=1e-4, weight_decay=0.05,
                          warmup_steps=1, seed=0, colour_augment=0.0, crop_scale=1.0, patch_dropout=0.0,
                          checkpoint_every=0, **{"precision": self.precision, **options})
        if self.world.device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        train_siglip(self.model, reused if preloaded else self.loader, self.preprocess, cfg,
                     Budget(steps, progress_every=10**9), self.world)
        if self.world.device.type == "cuda":
            torch.cuda.synchronize()
        return steps * self.batch / (time.perf_counter() - started)


def measure(bench: Bench, steps: int, repeats: int) -> dict:
    first_epoch = None
    if bench.cached:  # the first epoch decodes (into the cache): report it on its own
        first_epoch = bench.run(-(-bench.rows // bench.batch), preloaded=False)
    else:
        bench.run(max(3, steps // 10), preloaded=False)  # warm-up: allocator, kernels, page cache
    loaded, preloaded = [], []
    for _ in range(repeats):
        loaded.append(bench.run(steps, preloaded=False))
        preloaded.append(bench.run(steps, preloaded=True))
    lo, pre = statistics.median(loaded), statistics.median(preloaded)
    return {"loaded_samples_per_s": round(lo, 1), "preloaded_samples_per_s": round(pre, 1),
            "ratio": round(lo / pre, 3), "runs_loaded": [round(x, 1) for x in loaded],
            "runs_preloaded": [round(x, 1) for x in preloaded], "batch": bench.batch, "loader_workers": bench.workers,
            "steps": steps, "parameters_m": round(bench.params / 1e6, 2), "decoded_cache": bench.cached,
            "first_epoch_samples_per_s": round(first_epoch, 1) if first_epoch else None}


# Compute-side switches (train.* config keys), each measured alone against the fp32 baseline.
VARIANTS = {
    "fp32, unfused AdamW": {"precision": "fp32", "fused_optimizer": False},
    "fp32 (default)": {"precision": "fp32"},
    "bf16 autocast": {"precision": "bf16"},
    "channels-last": {"precision": "fp32", "channels_last": True},
    "torch.compile": {"precision": "fp32", "compile": True},
    "bf16 + torch.compile": {"precision": "bf16", "compile": True},
}


def measure_variants(bench: Bench, steps: int, repeats: int) -> dict:
    """Pre-loaded pairs/s of each variant: warm-up (and compile) first, then the median of repeats."""
    out = {}
    for name, options in VARIANTS.items():
        started = time.perf_counter()
        bench.run(max(3, steps // 10), preloaded=True, **options)
        warm = time.perf_counter() - started
        out[name] = {"options": options, "warmup_seconds": round(warm, 1),
                     "samples_per_s": round(statistics.median(bench.run(steps, preloaded=True, **options)
                                                              for _ in range(repeats)), 1)}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=8000, help="rows in the synthetic snapshot")
    parser.add_argument("--model", default="small", help="the CPU default is 'small'")
    parser.add_argument("--batch", type=int, default=128, help="the CPU default's batch size")
    parser.add_argument("--workers", type=int, default=-1, help="DataLoader workers (-1: as the train stage picks)")
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--gpu-batch", type=int, default=256)
    parser.add_argument("--gpu-steps", type=int, default=40)
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="GPU dense bf16 peak (H100 SXM: 989)")
    parser.add_argument("--decoded-cache-mb", type=int, default=2048, help="as train.decoded_cache_mb")
    parser.add_argument("--variants", action="store_true",
                        help="also measure compute-side switches (bf16, fused AdamW, channels-last, torch.compile)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()

    import torch

    from lookalike.orchestration.jobs import setup_logging
    from lookalike.train.stage import loader_workers

    setup_logging()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    workers = loader_workers(args.workers, 1)
    with tempfile.TemporaryDirectory() as tmp:
        snapshot = make_snapshot(Path(tmp) / "listings_snapshot", args.items)
        cpu = Bench(snapshot, args.model, args.batch, workers, "fp32", "cpu", args.decoded_cache_mb)
        result = {"device": "cpu", "model": args.model, "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
                  **measure(cpu, args.steps, args.repeats)}
        rows = [("cpu", args.model, result)]
        if cpu.cached:
            streamed = measure(Bench(snapshot, args.model, args.batch, workers, "fp32", "cpu", 0), args.steps,
                               args.repeats)
            result["streamed"] = streamed
            rows.append(("cpu", args.model + " (streamed)", streamed))
        if torch.cuda.is_available():
            gpu = Bench(snapshot, "siglip-base-patch16-224", args.gpu_batch, max(workers, 8), "bf16", "cuda", 0)
            g = measure(gpu, args.gpu_steps, args.repeats)
            g["mfu"] = round(g["loaded_samples_per_s"] * gpu.flops_per_pair / (args.peak_tflops * 1e12), 3)
            g["mfu_preloaded"] = round(g["preloaded_samples_per_s"] * gpu.flops_per_pair / (args.peak_tflops * 1e12), 3)
            result["cuda"] = {"device": torch.cuda.get_device_name(), "model": "siglip-base-patch16-224",
                              "precision": "bf16", **g}
            rows.append(("cuda", "siglip-base-patch16-224", g))
    print(f"\n{'device':<6} {'model':<28} {'batch':>5} {'workers':>7} {'1st epoch/s':>11} {'loaded/s':>9} "
          f"{'preloaded/s':>11} {'ratio':>6} {'MFU':>6}")
    for device, model, r in rows:
        first = r.get("first_epoch_samples_per_s") or float("nan")
        print(f"{device:<6} {model:<28} {r['batch']:>5} {r['loader_workers']:>7} {first:>11.1f} "
              f"{r['loaded_samples_per_s']:>9.1f} {r['preloaded_samples_per_s']:>11.1f} {r['ratio']:>6.3f} "
              f"{r.get('mfu', float('nan')):>6.3f}")
    if args.variants:
        with tempfile.TemporaryDirectory() as tmp:
            bench = Bench(make_snapshot(Path(tmp) / "s", 2000), args.model, args.batch, workers, "fp32", "cpu", 0)
            variants = measure_variants(bench, args.steps, args.repeats)
        result["variants"] = variants
        base = variants["fp32 (default)"]["samples_per_s"]
        print(f"\n{'variant (CPU, pre-loaded batch)':<32} {'pairs/s':>8} {'vs default':>10} {'warm-up s':>9}")
        for name, v in variants.items():
            print(f"{name:<32} {v['samples_per_s']:>8.1f} {v['samples_per_s'] / base:>10.2f} {v['warmup_seconds']:>9.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
