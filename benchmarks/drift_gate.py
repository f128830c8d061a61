"""The publish gate's figures for four nights: what its bounds separate.

On a sample marketplace, night 1 serves a fine-tuned model, night 2 the same model (the catalogue
moved a little), night 3 a model retrained with another seed, night 4 an untrained model with
random weights. Each night is extracted, embedded, searched and published with the gate in record
mode (``publish.accept_drift``), and the figures it compares with the previous night are printed
side by side with the default bounds: which nights the gate would refuse.

    .venv/bin/python benchmarks/drift_gate.py [--items 400] [--steps 1000] [--out DIR]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from datetime import date
from pathlib import Path


NIGHTS = ("2026-11-21", "2026-11-22", "2026-11-23", "2026-11-24")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=400)
    parser.add_argument("--steps", type=int, default=1000, help="training steps of the fine-tuned models")
    parser.add_argument("--out", type=Path, help="work folder (default: a temporary one)")
    args = parser.parse_args()

    from lookalike.config import PublishConfig, load_config
    from lookalike.embed.stage import run_embed
    from lookalike.extract.stage import run_extract
    from lookalike.neighbors.stage import run_neighbors
    from lookalike.publish.stage import run_publish
    from lookalike.sample.marketplace import SampleSpec, generate
    from lookalike.storage import Warehouse
    from lookalike.tools.summary import format_table
    from lookalike.train.stage import run_train
    from tests.conftest import tiny_model, write_config

    root = args.out or Path(tempfile.mkdtemp(prefix="lookalike-drift-"))
    sample = root / "sample"
    generate(sample, SampleSpec(items=args.items, users=max(30, args.items // 3), days=120, seed=1,
                                end=date.fromisoformat(NIGHTS[-1])), progress=lambda *_: None)
    config = write_config(root, sample, train={"max_steps": args.steps, "batch_size": 64, "warmup_steps": 10},
                          neighbors={"k": 10}, publish={"accept_drift": True})
    cfg = load_config(config, environ={})
    wh = Warehouse.of(cfg)

    def trained(seed: int, ds: str) -> str:
        run_extract(cfg, ds)
        return run_train(load_config(config, environ={"LOOKALIKE_TRAIN__SEED": str(seed)}), ds)["model_uri"]

    good = trained(0, NIGHTS[0])
    models = {NIGHTS[0]: ("fine-tuned", good), NIGHTS[1]: ("same model", good),
              NIGHTS[2]: ("retrained (seed 7)", trained(7, NIGHTS[2])),
              NIGHTS[3]: ("random weights", tiny_model(root / "random", seed=3, version="random-weights"))}
    bounds, rows = PublishConfig(), []
    for ds, (label, model) in models.items():
        run_extract(cfg, ds)
        run_embed(cfg, ds, model_uri=model)
        run_neighbors(cfg, ds)
        run_publish(cfg, ds)
        gate = wh.run_record(ds)["drift"]
        q = gate["profile"]["score_quantiles"]
        before = (gate["previous_profile"] or {}).get("score_quantiles")
        shift = max(abs(q[p] - before[p]) for p in q) if before else None
        overlap = (gate["overlap"] or {}).get("mean")
        rows.append((ds, label, gate["profile"]["coverage"], q["0.1"], q["0.5"], q["0.9"], shift, overlap,
                     "refuse" if gate["breaches"] else "publish"))
    print(format_table(["ds", "model", "coverage", "p10 score", "p50 score", "p90 score",
                        "quantile shift", "overlap kept", "gate"], rows))
    print(f"\nbounds: max_score_shift {bounds.max_score_shift}, min_neighbor_overlap {bounds.min_neighbor_overlap}, "
          f"max_coverage_drop {bounds.max_coverage_drop}, max_rows_change {bounds.max_rows_change}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
