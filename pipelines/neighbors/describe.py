"""A night's neighbour statistics (``neighbors_stats.json``) in words: the stage's log line, the
summary and the report say the same."""
from __future__ import annotations


def describe_recall(stats: dict) -> str:
    """How a run's neighbours were found, in words (the log line, the summary, the report):
    "exact search", or the recall@k measured against exact search with its sample and knob."""
    approximate = [g for g in stats.get("groups", []) if not g.get("exact")]
    if not approximate:
        return "exact search"
    if "sample" not in approximate[0]:  # an update that searched nothing again: the kept lists' index
        return f"lists kept from {stats.get('previous_ds')}'s {approximate[0]['index']} search"
    group = approximate[0]
    return (f"recall@{stats['k']} {stats['recall_at_k']:.3f} against exact search on {group['sample']} sampled "
            f"queries ({group['knob']}={group['value']})")


def describe_mode(stats: dict) -> str:
    """Whether the night updated its lists or searched every item, and why, in words."""
    if stats.get("mode") == "incremental":
        return (f"updated from {stats['previous_ds']}'s lists: {stats['fresh']} items added or changed searched, "
                f"{stats['kept']} kept, {stats['ran_out']} whose margin ran out searched again; {stats['why']}")
    return f"every item searched: {stats.get('why', 'a full rebuild')}"
