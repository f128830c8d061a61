"""The work area of a ds, in one place: every intermediate output a stage writes under
``<work_dir>/ds=<ds>/``, who writes it and who reads it. Stages find each other's outputs by these
names (``Warehouse.work(ds, name)``), not by passing paths through Airflow; a name that is not
listed here is refused, so the contract cannot drift from the code. Standard library only."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


def default_root(warehouse: str, base: Path) -> Path:
    """The work area when ``work_dir`` is empty: ``<warehouse>/_work`` beside a local warehouse,
    ``<base>/var/work`` for one on S3 (``base``: the config file's folder, or the working directory)."""
    return base.resolve() / "var" / "work" if "://" in warehouse else Path(warehouse) / "_work"


@dataclass(frozen=True)
class Output:
    name: str  # folder (Parquet parts) or file under <work_dir>/ds=<ds>/
    producer: str  # the stage that writes it
    readers: tuple[str, ...]  # the stages (and tools) that read it
    what: str


OUTPUTS = (
    Output("_staging", "extract", (), "normalised source rows before the dedup; removed when extract ends"),
    Output("listings_snapshot", "extract", ("train", "userrec", "publish", "extract"),
           "the window's listings with normalised photos (training pairs; photos reused the next night)"),
    Output("catalog", "extract", ("embed", "neighbors", "publish", "userrec", "report", "extract"),
           "every item on sale, with its photo"),
    Output("quarantine", "extract", ("publish",), "rejected listings, events and photos, each with its reason"),
    Output("interactions", "extract", ("evaluate", "userrec", "extract"), "the ds's event log"),
    Output("extract.json", "extract", ("extract",), "written last: the extract finished, its photos may be reused"),
    Output("eval_metrics", "evaluate", ("publish",), "the model's and the baselines' offline metrics"),
    Output("model_decision.json", "evaluate", ("summary",), "promoted or not, and why"),
    Output("item_embeddings", "embed", ("neighbors", "publish", "userrec"), "one vector per catalogue item"),
    Output("embed_quarantine", "embed", ("publish",), "photos the model could not decode"),
    Output("embed_todo", "embed", (), "the items to embed on Spark this night"),
    Output("embed_output", "embed", (), "what the Spark embedding wrote, before the merge"),
    Output("embed_stats.json", "embed", ("publish", "summary"), "reused and computed counts, timings"),
    Output("item_neighbors", "neighbors", ("publish",), "top-k neighbours per item"),
    Output("neighbor_lists", "neighbors", ("neighbors",),
           "each item's list with its margin and bar: the next night updates it from what changed"),
    Output("neighbor_index", "neighbors", ("neighbors",),
           "an approximate index keyed by item, carried forward night to night between full rebuilds"),
    Output("_neighbors_search", "neighbors", (), "the index, vectors and parts while the Spark search runs"),
    Output("neighbors_stats.json", "neighbors", ("publish", "summary"), "index, recall, timings"),
    Output("intraday", "intraday", ("intraday",),
           "the hours applied on top of this night: per hour the changes since the night (listings, photos, "
           "vectors), the changed lists, and hour.json, written last"),
    Output("item_neighbors_variants", "experiments", ("publish",), "each running experiment arm's top-k neighbours"),
    Output("experiment_variants", "experiments", ("publish",), "each running arm: what it serves, its buckets"),
    Output("ab_results", "experiments", ("publish",), "the running experiments' analysis of the logs"),
    Output("publish_staging", "publish", (), "the nightly tables being checked before the commit"),
    Output("report", "report", ("summary",), "the HTML report of the ds (index.html)"),
    Output("userrec_metrics", "userrec", ("publish",), "the user model's eval_metrics rows"),
    Output("user_recommendations", "userrec", ("publish",), "per-user recommendations"),
    Output("user_history", "userrec", ("publish",), "the histories the recommendations were made from"),
    Output("userrec_stats.json", "userrec", ("userrec", "summary"), "written last: the user model's outputs are complete"),
    Output("publish_userrec_staging", "publish", (), "the user tables being checked before the commit"),
)
BY_NAME = {output.name: output for output in OUTPUTS}


def checked(name: str) -> str:
    """``name`` if it is a work-area output; a clear error for one that is not listed here."""
    if name not in BY_NAME:
        raise KeyError(f"{name!r} is not a work-area output: name it in pipelines/workarea.py")
    return name
