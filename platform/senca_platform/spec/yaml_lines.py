"""YAML loading with the line of every key path: :func:`parse_yaml` (``yaml.safe_load`` semantics).

The YAML is parsed with safe semantics only (no ``!!python/...`` tags: refused with the line, nothing is
constructed), duplicate keys are refused, and a spec that nests too deeply, refers to itself or expands (through
aliases) to more than :data:`MAX_YAML_VALUES` values is refused. Every problem is a :class:`SpecError`."""

from __future__ import annotations

import re
from typing import Any

import yaml

from .schema import SpecError, SpecIssue

#: most values a spec may expand to (aliases included): a guard against "billion laughs" alias bombs
MAX_YAML_VALUES = 1_000_000

_MERGE_TAG = "tag:yaml.org,2002:merge"


class _LineLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` (same types, same semantics); lines are read from the composed node tree."""


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _check_graph(node: yaml.Node, name: str) -> None:
    """Refuse a node graph that refers to itself or expands to more than MAX_YAML_VALUES values (iterative:
    no recursion, each shared node visited once)."""
    size: dict[int, int] = {}
    state: dict[int, int] = {}  # 1: expanding, 2: done
    stack: list[tuple[yaml.Node, bool]] = [(node, False)]
    while stack:
        n, post = stack.pop()
        i = id(n)
        if post:
            size[i] = 1 + sum(size[id(c)] for c in _children(n))
            state[i] = 2
            if size[i] > MAX_YAML_VALUES:
                raise SpecError(name, [SpecIssue("<yaml>", n.start_mark.line + 1,
                                                 f"the YAML expands to more than {MAX_YAML_VALUES:,} values "
                                                 "(through anchors/aliases)")])
            continue
        if state.get(i) == 2:
            continue
        if state.get(i) == 1:
            raise SpecError(name, [SpecIssue("<yaml>", n.start_mark.line + 1,
                                             "an alias refers to a node that contains it (recursive YAML)")])
        state[i] = 1
        stack.append((n, True))
        stack.extend((c, False) for c in _children(n))


def _key_text(key_node: yaml.Node) -> str:
    return key_node.value if isinstance(key_node, yaml.ScalarNode) else f"<{key_node.id} key>"


def _node_lines(node: yaml.Node, prefix: tuple = (), out: dict | None = None, name: str = "<spec>",
                _seen: set | None = None) -> dict[tuple, int]:
    """Map every key path (tuple of str keys / int indices) to its 1-based line in the YAML text.

    Also refuses a mapping that repeats a key (plain ``yaml.safe_load`` keeps the last one silently). A node
    reached again through an alias is not walked again (its values keep the lines of their first path)."""
    out = {} if out is None else out
    seen = set() if _seen is None else _seen
    out.setdefault(prefix, node.start_mark.line + 1)
    if id(node) in seen:
        return out
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first: dict[tuple, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            key = _key_text(key_node)
            path = prefix + (key,)
            line = key_node.start_mark.line + 1
            ident = (key_node.tag, key) if isinstance(key_node, yaml.ScalarNode) else None
            if ident is not None and ident in first:
                raise SpecError(name, [SpecIssue(_format_loc(path), line,
                                                 f"duplicate key {key!r} (first at line {first[ident]})")])
            if ident is not None:
                first[ident] = line
            out[path] = line
            _node_lines(value_node, path, out, name, seen)
            out[path] = line  # the key's line wins over its value's
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _node_lines(item, prefix + (i,), out, name, seen)
    return out


def _line_of_offset(text: str, offset: int) -> int:
    return text.count("\n", 0, max(0, offset)) + 1


def _char(c: Any) -> str:
    code = c if isinstance(c, int) else (ord(c) if isinstance(c, str) and len(c) == 1 else None)
    return f"U+{code:04X}" if code is not None else repr(c)


def parse_yaml(text: str, name: str = "<spec>") -> tuple[Any, dict[tuple, int]]:
    """``yaml.safe_load(text)`` plus the line of every key path.

    Raises :class:`SpecError` (field ``<yaml>`` and the line) for a syntax error, a tag safe loading refuses
    (``!!python/object`` …: nothing is constructed), a character YAML does not allow, a duplicate key, a
    recursive alias, an alias bomb or a nesting too deep to parse."""
    if not isinstance(text, str):
        raise SpecError(name, [SpecIssue("<file>", None, f"expected text, got {type(text).__name__}")])
    loader = None
    try:
        loader = _LineLoader(text)  # the reader refuses control characters here already
        node = loader.get_single_node()
        if node is None:
            return None, {}
        _check_graph(node, name)
        lines = _node_lines(node, name=name)  # before construction: merge keys are still as written
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = mark.line + 1 if mark else None
        problem = err.problem or str(err)
        tag = re.search(r"for the tag '([^']*)'", problem)
        if isinstance(err, yaml.constructor.ConstructorError) and tag:
            shown = tag.group(1).replace("tag:yaml.org,2002:", "!!")
            problem = (f"tag {shown!r} is not allowed: the spec is read with safe YAML loading (plain values only; "
                       "nothing is constructed or executed)")
        elif err.context and isinstance(err, yaml.constructor.ConstructorError):
            problem = f"{err.context}: {problem}"
        elif err.context and err.context_mark is not None and err.context_mark.line + 1 != line:
            what = err.context.removeprefix("while parsing ")
            problem = f"{problem} (in {what} started at line {err.context_mark.line + 1})"
        raise SpecError(name, [SpecIssue("<yaml>", line, problem)]) from None
    except yaml.reader.ReaderError as err:
        raise SpecError(name, [SpecIssue("<yaml>", _line_of_offset(text, err.position),
                                         f"character {_char(err.character)} is not allowed in YAML "
                                         f"({err.reason})")]) from None
    except yaml.YAMLError as err:  # any other parser error: still one line, no traceback
        raise SpecError(name, [SpecIssue("<yaml>", None, str(err).replace("\n", " "))]) from None
    except RecursionError:
        raise SpecError(name, [SpecIssue("<yaml>", None, "the YAML nests too deeply to be a cohort spec")]) \
            from None
    finally:
        if loader is not None:
            loader.dispose()
    return data, lines


def _format_loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "<root>"

