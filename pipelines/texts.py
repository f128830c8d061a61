"""A listing's text as SigLIP reads it: the template that pairs a title (and category, brand …)
with its photo in training, and renders an item's text for its served vector (standard library only)."""
from __future__ import annotations

TEXT_FIELDS = ("title", "category", "brand", "description", "price")  # what a text template may use


def listing_text(template: str, row: dict) -> str:
    """The text paired with a listing's photo, e.g. "{title} | {category}"; missing fields are blank."""
    values = {k: ("" if row.get(k) is None else str(row.get(k))) for k in ("title", "category", "brand", "description")}
    values["price"] = "" if row.get("price") is None else f"{row['price']:.0f}"
    return template.format(**values).strip(" |")
