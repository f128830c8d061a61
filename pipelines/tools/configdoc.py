"""``docs/configuration.md``, written from ``pipelines/config.py`` itself: one fact, one place.

Every key's meaning is the comment beside it in ``config.py`` (on its line, or the comment lines
just above it), its default the dataclass default, its allowed names and bounds what its field
declares (``key(default, choices=…, within=…)``). ``python -m lookalike.tools.configdoc`` rewrites
the page; a test fails when the page and the code differ, or when a key has no comment.

    .venv/bin/python -m lookalike.tools.configdoc            # rewrite docs/configuration.md
    .venv/bin/python -m lookalike.tools.configdoc --check    # exit 1 when it is out of date
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import io
import sys
import tokenize
import typing
from pathlib import Path

from lookalike import config as config_module

PAGE = Path("docs") / "configuration.md"  # run from the repository root, where the docs are

INTRO = """\
# Configuration

<!-- Written by `python -m lookalike.tools.configdoc` from lookalike/config.py; edit the comments there. -->

One YAML file (`--config`, or the `LOOKALIKE_CONFIG` variable), one section per stage. Every key
can be overridden by an environment variable `LOOKALIKE_<SECTION>__<KEY>`
(`LOOKALIKE_NEIGHBORS__K=10`), or `LOOKALIKE_<KEY>` for a top-level key
(`LOOKALIKE_WAREHOUSE=/data/wh`). An unknown key is an error, and so is a value outside the names
or the bounds a key allows, when the config loads, with the key named. Relative paths are resolved
against the config file's folder (the working directory for the embedded default). Without a file
the embedded default runs: the sample marketplace under `var/sample`, the warehouse under
`var/warehouse`, Spark in local mode, CPU.
"""


@dataclasses.dataclass(frozen=True)
class Key:
    name: str  # "extract.image_size", or "warehouse" at the top level
    default: str
    meaning: str


def _comments(source: str) -> dict[int, str]:
    """Line number → the text of the comment on that line."""
    return {tok.start[0]: tok.string.lstrip("#").strip()
            for tok in tokenize.generate_tokens(io.StringIO(source).readline) if tok.type == tokenize.COMMENT}


def _meaning(node: ast.AnnAssign, comments: dict[int, str], lines: list[str]) -> str:
    """The comment on the field's line, else the comment lines right above it."""
    if node.lineno in comments and not lines[node.lineno - 1].lstrip().startswith("#"):
        return comments[node.lineno]
    above, line = [], node.lineno - 1
    while line in comments and lines[line - 1].lstrip().startswith("#"):
        above.insert(0, comments[line])
        line -= 1
    return " ".join(above)


def _default(value) -> str:
    if isinstance(value, str):
        return f"`{value}`" if value else "(empty)"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, int):
        return f"`{value:,}`".replace(",", "_") if abs(value) >= 10_000 else f"`{value}`"
    return f"`{value:g}`" if isinstance(value, float) else f"`{value}`"


def _cell(text: str) -> str:
    """Text for a table cell: a pipe would end the cell, a <placeholder> would vanish as HTML."""
    return text.replace("|", "&#124;").replace("<", "&lt;")


def _allowed(name: str) -> str:
    if name in config_module.CHOICES:
        return " One of " + ", ".join(f"`{c}`" for c in config_module.CHOICES[name]) + "."
    if name in config_module.INTERVALS:
        low, high, low_in, high_in = config_module.INTERVALS[name]
        return f" In {'[' if low_in else '('}{low:g}, {high:g}{']' if high_in else ')'}."
    return ""


def sections() -> list[tuple[str, str, list[Key]]]:
    """(section, its docstring, its keys) in the order of ``Config``; the top level first."""
    source = Path(config_module.__file__).read_text()
    tree, comments, lines = ast.parse(source), _comments(source), source.splitlines()
    classes = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}
    defaults = config_module.Config()

    def keys(cls_name: str, prefix: str, instance) -> list[Key]:
        out = []
        for node in classes[cls_name].body:
            if not isinstance(node, ast.AnnAssign) or not isinstance(node.target, ast.Name):
                continue
            name = node.target.id
            value = getattr(instance, name)
            if dataclasses.is_dataclass(value):
                continue
            full = prefix + name
            meaning, allowed = _meaning(node, comments, lines), _allowed(full)
            if meaning and allowed and not meaning.endswith((".", ")")):
                meaning += "."
            out.append(Key(full, _default(value), (meaning + allowed).strip()))
        return out

    result = [("top level", "Where things are.", keys("Config", "", defaults))]

    def named_sections(cls, prefix: str) -> None:
        """The sections of a ``dict[str, <section>]`` key, documented once with <name> for the key."""
        for f in dataclasses.fields(cls):
            hint = typing.get_type_hints(cls)[f.name]
            if typing.get_origin(hint) is dict:
                section = typing.get_args(hint)[1]
                name = f"{prefix}{f.name}.<{f.name.rstrip('s')}>"
                result.append((name, ast.get_docstring(classes[section.__name__]) or "",
                               keys(section.__name__, name + ".", section())))
                named_sections(section, name + ".")

    def section(name: str, value) -> None:  # a section, then its own sections (serving.postgres)
        doc = ast.get_docstring(classes[type(value).__name__]) or ""
        result.append((name, doc, keys(type(value).__name__, name + ".", value)))
        for f in dataclasses.fields(value):
            if dataclasses.is_dataclass(getattr(value, f.name)):
                section(f"{name}.{f.name}", getattr(value, f.name))

    for f in dataclasses.fields(config_module.Config):
        if dataclasses.is_dataclass(getattr(defaults, f.name)):
            section(f.name, getattr(defaults, f.name))
    named_sections(config_module.Config, "")
    return result


def page() -> str:
    parts = [INTRO]
    for section, doc, keys in sections():
        parts.append(f"\n## `{section}`\n" if section != "top level" else "\n## Top level\n")
        if doc:
            parts.append("\n" + doc + "\n")
        parts.append("\n| key | default | meaning |\n|---|---|---|\n")
        parts.extend(f"| `{k.name}` | {k.default} | {_cell(k.meaning)} |\n" for k in keys)
    return "".join(parts)


def undocumented() -> list[str]:
    return [k.name for _, _, keys in sections() for k in keys if not k.meaning or k.meaning.startswith("One of")
            or k.meaning.startswith("In ")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write docs/configuration.md from lookalike/config.py.")
    parser.add_argument("--check", action="store_true", help="exit 1 when the page is out of date")
    parser.add_argument("--out", type=Path, default=PAGE)
    args = parser.parse_args(argv)
    missing = undocumented()
    if missing:
        print(f"keys without a comment in pipelines/config.py: {', '.join(missing)}", file=sys.stderr)
        return 1
    text = page()
    if args.check:
        if not args.out.is_file() or args.out.read_text() != text:
            print(f"{args.out} is out of date: run python -m lookalike.tools.configdoc", file=sys.stderr)
            return 1
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
