"""Presets: published settings, each a small overlay on one commented base (configs/presets/).

``configs/presets/base.yaml`` holds every params key once, with a comment saying what it is,
at segflow's defaults. A preset, ``configs/presets/NAME.yaml``, holds only the keys it changes,
each under a comment saying why (a measured figure, a paper's recipe). ``segflow init --preset
NAME --root DATA`` writes ONE flat, complete params.yaml: the base's text with the preset's lines
in place of the lines of the keys it names, the preset's opening comment in place of the base's,
and ``dataset.root`` set to ``DATA``. The result is checked against the params schema before it
is written. Nothing is inherited at run time: the stages read the written file, which is what
runs (mmsegmentation's config chains are what this avoids); the base only spares six presets
from repeating two hundred lines.

Why a base.yaml and not the repository's params.yaml: params.yaml is a working file. ``segflow
init --force`` replaces it in place (README's CamVid example does exactly that in this checkout),
experiments edit it, and its comments explain the synthetic run's values; a preset built on it
would carry whatever preset or experiment was written there last. base.yaml changes only by a
commit, and its comments describe keys, not one run.

The merge works on lines rather than through a round-trip YAML library (ruamel.yaml keeps a
comment on the key *before* the one it describes, and may re-render values): the files have one
shape, sections of ``key: value`` lines with the comment lines directly above a key, so splicing
lines keeps the base's text byte for byte. The merged text is then loaded and must equal the
base's values updated by the overlay's, so a line the splice misread cannot be written silently.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, replace
from pathlib import Path

import yaml

from segflow.config import parse_params
from segflow.errors import SegflowError
from segflow.io import atomic_path

PRESETS_DIR = Path(__file__).resolve().parent.parent / "configs" / "presets"
#: The base's stem in PRESETS_DIR; it is not itself a preset.
BASE = "base"

# A ``key: value`` or ``key:`` line (keys of the params schema are plain identifiers).
_KEY_LINE = re.compile(r"(?P<indent> *)(?P<key>[A-Za-z_][A-Za-z0-9_]*):(?P<rest>(?: .*)?)$")


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml") if p.stem != BASE)


def preset_text(name: str) -> str:
    """The params.yaml text of preset ``name`` (base + overlay), validated against the schema.

    An unknown name lists the known ones.
    """
    path = PRESETS_DIR / f"{name}.yaml"
    if name == BASE or not path.is_file():
        known = ", ".join(list_presets()) or f"none (no {PRESETS_DIR})"
        raise SegflowError(f"preset {name!r} is unknown; known presets: {known}")
    base = PRESETS_DIR / f"{BASE}.yaml"
    text = apply_overlay(base.read_text(), path.read_text(), str(base), str(path))
    parse_params(yaml.safe_load(text), source=str(path))
    return text


@dataclass(frozen=True)
class _Entry:
    """One key of a params file, as line ranges: its comment, then its own lines."""

    comment: range  # the comment lines directly above the key line (may be empty)
    lines: range  # the key line and the more deeply indented lines under it
    indent: int
    section: bool  # a top-level ``name:`` whose keys follow on their own lines


@dataclass(frozen=True)
class _Layout:
    header: range  # the opening comment lines, when a blank line ends them
    entries: dict[tuple[str, ...], _Entry]
    loose: list[int]  # first lines of comments that are neither the header nor above a key


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _layout(lines: list[str], source: str) -> _Layout:
    """Where each key of a params file is, by lines; a line of another shape is an error.

    The file's shape: top-level ``key: value`` lines and ``section:`` lines with their keys
    indented below; a key's value may go on over more deeply indented lines (a nested
    mapping); the comment lines directly above a key are its comment.
    """
    first = next((i for i, line in enumerate(lines) if not line.startswith("#")), len(lines))
    header = range(first) if first < len(lines) and not lines[first].strip() else range(0)
    entries: dict[tuple[str, ...], _Entry] = {}
    section: str | None = None
    field_indent = 0
    comment_start: int | None = None
    loose: list[int] = []
    open_key: tuple[str, ...] | None = None  # the key whose value may go on below it
    for i in range(header.stop, len(lines)):
        line = lines[i]
        indent = _indent(line)
        if not line.strip():
            if comment_start is not None:
                loose.append(comment_start)
            comment_start, open_key = None, None
            continue
        if line.lstrip().startswith("#"):
            comment_start = i if comment_start is None else comment_start
            continue
        if open_key is not None and indent > entries[open_key].indent:
            entry = entries[open_key]  # the value goes on, with any comment lines inside it
            entries[open_key] = replace(entry, lines=range(entry.lines.start, i + 1))
            comment_start = None
            continue
        match = _KEY_LINE.match(line)
        if match is None:
            raise SegflowError(f"{source}: line {i + 1}: expected `key: value` or a comment")
        key, rest = match["key"], match["rest"].strip()
        is_section = indent == 0 and (not rest or rest.startswith("#"))
        if indent == 0:
            path, section, field_indent = (key,), (key if is_section else None), 0
        elif section is None:
            raise SegflowError(f"{source}: line {i + 1}: {key} is indented outside a section")
        else:
            field_indent = field_indent or indent
            if indent != field_indent:
                raise SegflowError(
                    f"{source}: line {i + 1}: {section}.{key} is not indented like the keys "
                    f"above it ({field_indent} spaces)"
                )
            path = (section, key)
        if path in entries:
            raise SegflowError(f"{source}: line {i + 1}: {'.'.join(path)} appears twice")
        comment = range(i if comment_start is None else comment_start, i)
        entries[path] = _Entry(comment, range(i, i + 1), indent, is_section)
        comment_start, open_key = None, (None if is_section else path)
    if comment_start is not None:
        loose.append(comment_start)
    return _Layout(header, entries, loose)


def _reindent(lines: list[str], by: int) -> list[str]:
    if by >= 0:
        return [" " * by + line if line.strip() else line for line in lines]
    return [line[min(-by, _indent(line)) :] for line in lines]


def _expected_values(base: dict, overlay: dict) -> dict:
    """The base's values with the overlay's keys replaced (a key's whole value, never merged)."""
    values = copy.deepcopy(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(values.get(key), dict):
            values[key].update(value)
        else:
            values[key] = value
    return values


def _load(text: str, source: str) -> dict:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "cannot be parsed"
        raise SegflowError(f"{source}: not valid YAML{where}: {problem}") from None
    if not isinstance(data, dict):
        raise SegflowError(f"{source}: top level must be a mapping of sections")
    return data


def apply_overlay(base_text: str, overlay_text: str, base_source: str, overlay_source: str) -> str:
    """``base_text`` with ``overlay_text``'s keys put in; comments kept, nothing else moved.

    For each key of the overlay, the overlay's lines for it replace the base's (a key's whole
    value: a mapping such as ``model_options`` is replaced, not merged); its comment lines
    replace the base's comment of that key when it has some, else the base's stay. The
    overlay's opening comment (ended by a blank line) replaces the base's. A key the base does
    not have is an error naming the overlay file and the key.
    """
    base_lines, overlay_lines = base_text.splitlines(), overlay_text.splitlines()
    base, overlay = _layout(base_lines, base_source), _layout(overlay_lines, overlay_source)
    base_values, overlay_values = _load(base_text, base_source), _load(overlay_text, overlay_source)
    if not overlay.header:
        raise SegflowError(
            f"{overlay_source}: no opening comment (what the preset is for, then a blank line)"
        )
    if overlay.loose:  # it would not be written: only a key's comment and the header are
        raise SegflowError(
            f"{overlay_source}: line {overlay.loose[0] + 1}: a comment must sit directly above "
            "the key it explains (or open the file, ended by a blank line)"
        )
    replaced: dict[int, tuple[int, list[str]]] = {}  # first line -> (line after, new lines)
    for path, entry in overlay.entries.items():
        name = ".".join(path)
        into = base.entries.get(path)
        if into is None:
            raise SegflowError(f"{overlay_source}: {name}: not a key of {base_source}")
        if entry.section != into.section:
            shape = "a section" if into.section else "a single key"
            raise SegflowError(f"{overlay_source}: {name}: is {shape} in {base_source}")
        if entry.section and not any(p[0] == name and len(p) == 2 for p in overlay.entries):
            raise SegflowError(f"{overlay_source}: {name}: a section with no keys under it")
        comment = [" " * into.indent + overlay_lines[i].strip() for i in entry.comment]
        comment = comment or base_lines[into.comment.start : into.comment.stop]
        own = base_lines[into.lines.start : into.lines.stop]
        if not entry.section:
            own = _reindent(
                overlay_lines[entry.lines.start : entry.lines.stop], into.indent - entry.indent
            )
        start = into.comment.start if into.comment else into.lines.start
        replaced[start] = (into.lines.stop, comment + own)
    out = overlay_lines[overlay.header.start : overlay.header.stop]
    if not base.header:
        out.append("")  # the base's own blank line after its header, had it one
    i = base.header.stop
    while i < len(base_lines):
        stop, new = replaced.get(i, (i + 1, [base_lines[i]]))
        out.extend(new)
        i = stop
    text = "\n".join(out) + "\n"
    if _load(text, overlay_source) != _expected_values(base_values, overlay_values):
        raise SegflowError(
            f"{overlay_source}: its lines do not merge into {base_source} as its values say; "
            "write each key on its own line under its section, as the base does"
        )
    return text


def _dataset_line(key: str) -> re.Pattern[str]:
    """The ``key:`` line of the ``dataset:`` section (the first indented one after it)."""
    return re.compile(rf"(^dataset:\n(?:(?:[ \t]+.*|[ \t]*)\n)*?[ \t]+{key}:)[^\n]*", re.M)


def with_dataset_value(text: str, key: str, value: str | Path) -> str:
    """``text`` with its ``dataset.<key>`` value replaced by ``value`` (comments kept)."""
    # A JSON string is a YAML string: quoted, so any path reads back unchanged.
    quoted = json.dumps(str(value))
    new, count = _dataset_line(key).subn(lambda m: f"{m.group(1)} {quoted}", text, count=1)
    if count != 1:
        raise SegflowError(f"preset has no dataset.{key} line to set")
    return new


def with_dataset_root(text: str, root: str | Path) -> str:
    """``text`` with its ``dataset.root`` value replaced by ``root``; a ``dataset.classes_file``
    inside the preset's own root moves with it (``data/raw/classes.yaml`` under ``data/raw``
    becomes ``<root>/classes.yaml``): the class table belongs beside the data it describes,
    inside the root that DVC watches, whatever directory the user's data is in."""
    dataset = yaml.safe_load(text).get("dataset") or {}
    classes_file = dataset.get("classes_file")
    text = with_dataset_value(text, "root", root)
    if classes_file is None or dataset.get("root") is None:
        return text
    placeholder = Path(dataset["root"])
    if not Path(classes_file).is_relative_to(placeholder):
        return text  # a table kept elsewhere on purpose (configs/) stays where it is
    return with_dataset_value(
        text, "classes_file", Path(root) / Path(classes_file).relative_to(placeholder)
    )


def write_preset(
    name: str,
    project_dir: str | Path = ".",
    force: bool = False,
    dataset_root: str | Path | None = None,
) -> Path:
    """Write preset ``name`` to ``project_dir/params.yaml``; an existing file needs ``force``.

    ``dataset_root`` (made absolute, so the stages find it whatever their working directory)
    replaces the preset's placeholder ``dataset.root``.
    """
    text = preset_text(name)
    if dataset_root is not None:
        text = with_dataset_root(text, Path(dataset_root).expanduser().resolve())
        parse_params(yaml.safe_load(text), source=f"preset {name}")
    out = Path(project_dir) / "params.yaml"
    if out.exists() and not force:
        raise SegflowError(f"{out}: already exists; pass --force to overwrite it")
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        tmp.write_text(text)
    return out
