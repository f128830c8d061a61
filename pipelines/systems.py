"""The names of the systems Lookalike scores and serves, in one place. They are the ``system``
column of ``eval_metrics``, the kinds of the model registry's folders and what an experiment's
arm may serve (standard library only)."""
from __future__ import annotations

SIGLIP = "siglip"  # the fine-tuned model: a candidate until promoted
HYBRID = "hybrid"  # the model (its photo, or photo and title) blended with the image baseline at a chosen weight
MULTIMODAL = "multimodal"  # the model's photo and title embeddings blended at a chosen text weight
IMAGE_BASELINE = "image_baseline"  # hand-made image features (lookalike.features)
TEXT_BASELINE = "text_baseline"  # TF-IDF over titles (scored, never served)
PRODUCTION = "production"  # the promoted model, scored beside a candidate on the same queries
CANDIDATE = "candidate"  # the newest model not promoted (an experiment's arm)

SCORED = (SIGLIP, MULTIMODAL, HYBRID, IMAGE_BASELINE, TEXT_BASELINE)  # the offline evaluation's systems, in report order
BASELINES = (IMAGE_BASELINE, TEXT_BASELINE)
SERVE_NAMES = (PRODUCTION, CANDIDATE, IMAGE_BASELINE)  # what experiments.<name>.variants.<v>.serve names, besides a version

# What a shopper compares, as the summary and the report name each facet of the evaluation
FACET_LABELS = {"category": "type@5", "colour": "colour@5", "product_group": "variant@5", "co_purchase": "co-purchase@5"}
CHOSEN_COLUMNS = ("system", "version", "score", "gain vs served (95%)", "servable", "served")


def chosen_rows(decision: dict) -> list[tuple]:
    """The table the evaluation chose the served system from (``model_decision.json``'s ``chosen_from``),
    one row per system, best first: what the summary and the report show."""
    return [(row["system"], row.get("version") or "", f"{row['score']:.4f}",
             "" if row["served"] else f"[{row['gain_low']:+.4f}, {row['gain_high']:+.4f}]",
             "yes" if row["servable"] else f"no: {row.get('worst_facet')} {-row.get('facet_loss', 0):+.3f}",
             "SERVED" if row["served"] else "") for row in decision.get("chosen_from") or []]
