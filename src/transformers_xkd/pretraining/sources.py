"""The raw inputs of a training source (a list of paths, or rows of a datasets dataset) before the scan; the
prepared-shard source (:mod:`.shards`) extends it. Its own module so that :mod:`.data` and :mod:`.shards` both
build on it without importing each other."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class ClipSource:
    """The raw inputs of a source before scanning.

    Attributes:
        description (`str`): what SRC was resolved to (printed in the scan report).
        items (`list`): paths (``str``) for folder/list sources, row numbers (``int``) for a datasets source.
        hf_dataset: the ``datasets.Dataset`` for a datasets source, else ``None``.
        column (`str`, *optional*): the column of ``hf_dataset`` holding the media.
    """

    description: str
    items: list
    hf_dataset: Any = None
    column: str | None = None

    def media(self, item) -> Any:
        """What :class:`~transformers_xkd.decoding_xkd.MediaReader` opens for an item: a path or bytes."""
        if self.hf_dataset is None:
            return item
        value = self.hf_dataset[int(item)][self.column]
        if isinstance(value, dict):
            if value.get("bytes"):
                return value["bytes"]
            if value.get("path"):
                return value["path"]
            raise ValueError(f"row {item} of column {self.column!r} has neither 'bytes' nor 'path'")
        return value

    def name(self, item) -> str:
        """A printable name for logs: the path, or ``row N`` (with its path when the row has one)."""
        if self.hf_dataset is None:
            return str(item)
        value = self.hf_dataset[int(item)][self.column]
        path = value.get("path") if isinstance(value, dict) else (value if isinstance(value, str) else None)
        return f"row {item}" + (f" ({path})" if path else "")


__all__ = ["ClipSource"]
