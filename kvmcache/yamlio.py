"""Reading small YAML files (config, sidecars) and text input with one-line errors.

Every problem a user can cause -- a missing or unreadable file, bytes that are not UTF-8
text, invalid YAML, a duplicate key -- becomes a :class:`KvmcacheError` naming the file,
never a traceback. Text is read in bounded blocks and refused at the first block that is
not text, so a device or pipe of binary data (``/dev/zero``) is never read into memory.
"""

from __future__ import annotations

import codecs
import re
from typing import IO, Any

import yaml

from kvmcache.errors import KvmcacheError, reading
from kvmcache.limits import MAX_ALIAS_NODES, MAX_NUMBER_CHARS, excerpt, read_small_file

#: The C loader when PyYAML was built with libyaml (same YAML 1.1 rules, much faster).
_BaseLoader: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

#: Bytes that never appear in YAML text (C0 controls except tab, LF, CR; DEL).
_BINARY = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
#: The first block of a text input, checked before anything else is read.
SNIFF = 4096
_BLOCK = 1 << 20
_MERGE_TAG = "tag:yaml.org,2002:merge"
BINARY_TEXT = "not a kvmcache trace (binary data without the KVMCTRC magic)"


class DuplicateKey(yaml.constructor.ConstructorError):
    """A key given twice in one YAML mapping (PyYAML would silently keep the last)."""

    def __init__(self, key: Any, mark: Any) -> None:
        super().__init__(None, None, f"duplicate key {excerpt(key)}", mark)
        self.key = key
        self.line = mark.line + 1 if mark is not None else 0


class UniqueKeyLoader(_BaseLoader):  # type: ignore[misc, valid-type]
    """``safe_load`` rules, but a key repeated in one mapping is an error."""

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if not isinstance(node, yaml.MappingNode):
            return super().construct_mapping(node, deep=deep)
        # Before the base class flattens merge keys (`<<`), which may legitimately repeat.
        explicit = [k for k, _ in node.value if k.tag != _MERGE_TAG]
        merged = len(explicit) != len(node.value)
        mapping = super().construct_mapping(node, deep=deep)
        if merged or len(mapping) < len(explicit):
            _check_unique(self, explicit)
        return mapping

    def construct_yaml_int(self, node: Any) -> Any:
        """A YAML integer; one over :data:`~kvmcache.limits.MAX_NUMBER_CHARS` characters is
        an error (Python refuses to convert 4,300 digits or more: a ValueError)."""
        value = node.value
        if isinstance(value, str) and len(value) > MAX_NUMBER_CHARS:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"a number of {len(value):,} characters is too long (at most {MAX_NUMBER_CHARS})",
                node.start_mark,
            )
        try:
            return super().construct_yaml_int(node)
        except ValueError:  # `0x_`, `0b_`: the resolver's pattern allows them, int() not
            raise yaml.constructor.ConstructorError(
                None, None, f"{excerpt(value)} is not a number", node.start_mark
            ) from None


UniqueKeyLoader.add_constructor("tag:yaml.org,2002:int", UniqueKeyLoader.construct_yaml_int)


class AliasBomb(yaml.composer.ComposerError):
    """Aliases that expand beyond the limit (a "billion laughs"), or refer to themselves."""

    def __init__(self, problem: str, mark: Any) -> None:
        super().__init__(None, None, problem, mark)


def alias_bomb(mark: Any, recursive: bool = False) -> AliasBomb:
    """The error for aliases that expand too far (or into themselves)."""
    if recursive:
        return AliasBomb("an alias refers to a structure containing itself", mark)
    return AliasBomb(
        f"aliases expand to over {MAX_ALIAS_NODES:,} nodes more than the document holds "
        "(a YAML alias bomb?)",
        mark,
    )


def expanded_nodes(node: Any, budget: int, sizes: dict[int, int] | None = None) -> int:
    """The nodes of ``node`` with every alias expanded (a node shared by several parents
    counts once per parent); :class:`AliasBomb` as soon as the count exceeds ``budget`` or a
    node contains itself. Time: one visit per distinct node (sizes are memoised in
    ``sizes``, keyed by node id; the caller keeps the nodes alive)."""
    memo: dict[int, int] = {} if sizes is None else sizes
    active: set[int] = set()

    def size(n: Any) -> int:
        key = id(n)
        got = memo.get(key)
        if got is not None:
            return got
        if key in active:
            raise alias_bomb(n.start_mark, recursive=True)
        total = 1
        if isinstance(n, (yaml.SequenceNode, yaml.MappingNode)):
            active.add(key)
            children = (
                n.value
                if isinstance(n, yaml.SequenceNode)
                else [c for pair in n.value for c in pair]
            )
            for child in children:
                total += size(child)
                if total > budget:
                    raise alias_bomb(n.start_mark)
            active.discard(key)
        memo[key] = total
        return total

    return size(node)


def check_aliases(root: Any) -> None:
    """Refuse a document whose aliases add more than :data:`MAX_ALIAS_NODES` nodes to it."""
    distinct: set[int] = set()
    stack = [root]
    while stack:
        n = stack.pop()
        if id(n) in distinct:
            continue
        distinct.add(id(n))
        if isinstance(n, yaml.SequenceNode):
            stack.extend(n.value)
        elif isinstance(n, yaml.MappingNode):
            stack.extend(c for pair in n.value for c in pair)
    expanded_nodes(root, len(distinct) + MAX_ALIAS_NODES)


def _check_unique(loader: Any, key_nodes: list[Any]) -> None:
    """Raise DuplicateKey for the first key (after a merge, only explicit keys) seen twice."""
    seen: set[Any] = set()
    for key_node in key_nodes:
        key = loader.construct_object(key_node, deep=True)
        try:
            if key in seen:
                raise DuplicateKey(key, key_node.start_mark)
            seen.add(key)
        except TypeError:
            continue  # unhashable: the base constructor reports it


def yaml_error(path: str, e: yaml.YAMLError) -> KvmcacheError:
    """One line for a PyYAML error: file, line and column, the short problem."""
    if isinstance(e, yaml.MarkedYAMLError):
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = " ".join(str(e.problem or e.context or "syntax error").split())
        return KvmcacheError(f"{path}: {where}invalid YAML: {problem}")
    return KvmcacheError(f"{path}: invalid YAML: {' '.join(str(e).split())}")


def read_text_stream(
    f: IO[bytes], path: str, what: str = "a YAML trace", binary: str | None = None
) -> str:
    """All of binary stream ``f`` as UTF-8 text (a BOM dropped), read block by block.

    The first block is checked before more is read: binary data (a control byte such as
    NUL) is refused at once, and every later block is checked as it arrives, so a stream
    that is not text fails without being held in memory. ``binary``: the problem to report
    for binary data in the first block (default: not ``what``).
    """
    decoder = codecs.getincrementaldecoder("utf-8-sig")()
    parts: list[str] = []
    offset = 0
    size = SNIFF
    while True:
        block = f.read(size)
        final = not block
        try:
            parts.append(decoder.decode(block, final=final))
        except UnicodeDecodeError as e:
            raise KvmcacheError(
                f"{path}: not {what} (not UTF-8 text at byte {offset + e.start})"
            ) from None
        if final:
            break
        bad = _BINARY.search(block)
        if bad is not None:
            if offset + bad.start() < SNIFF:
                raise KvmcacheError(f"{path}: {binary or f'not {what} (binary data, not text)'}")
            raise KvmcacheError(
                f"{path}: not {what} (control byte 0x{block[bad.start()]:02x} "
                f"at byte {offset + bad.start()})"
            )
        offset += len(block)
        size = _BLOCK
    return "".join(parts)


def read_text_file(
    path: str, what: str = "a YAML trace", kind: str = "file", binary: str | None = None
) -> str:
    """A text file (see :func:`read_text_stream`); a missing or unreadable one is one line."""
    with reading(path, kind, what), open(path, "rb") as f:
        return read_text_stream(f, path, what, binary)


def load_yaml_file(path: str, what: str, kind: str = "file") -> Any:
    """The one YAML document of a small file (config, sidecar): a regular file of at most
    :data:`~kvmcache.limits.MAX_SIDE_FILE_BYTES`; duplicate keys, over-long numbers and
    aliases expanding beyond :data:`~kvmcache.limits.MAX_ALIAS_NODES` are errors."""
    import io

    data = read_small_file(path, kind, what)
    text = read_text_stream(io.BytesIO(data), path, what)
    try:
        return _load_checked(text)
    except DuplicateKey as e:
        raise KvmcacheError(f"{path}: line {e.line}: duplicate key {excerpt(e.key)}") from None
    except yaml.YAMLError as e:
        raise yaml_error(path, e) from None
    except RecursionError:
        raise KvmcacheError(f"{path}: invalid YAML: nested too deeply") from None


def _load_checked(text: str) -> Any:
    """``safe_load`` of one document with unique keys, after the alias check."""
    loader = UniqueKeyLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        check_aliases(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()
