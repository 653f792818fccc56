"""CommonCatalog (the paper's training data) from Hugging Face `datasets` shards: items `(image, caption)`.

A shard is an Arrow IPC file as `datasets` writes it (`save_to_disk`, or the cache of `load_dataset`: the
streaming format, `data-00000-of-00001.arrow`), an Arrow IPC file in the random-access format (Feather v2), or a
Parquet file (the hub's own format). Fields: `jpg` holds the encoded image, either as plain bytes
(`Value("binary")`) or as the struct `{bytes, path}` of a `datasets.Image()` feature; `blip2_caption` the text.

Shards are memory-mapped and opened lazily in each process (DataLoader workers included), so the dataset is cheap
to pickle and nothing is read until an item is asked for. Undecodable images are skipped as in folders.py.
"""
from __future__ import annotations

import bisect
import os
from pathlib import Path
from typing import Callable, Sequence

import torch

from onedc_lib.image_io import ImageError

from .folders import SkippingDataset, decode_image_bytes

SHARD_SUFFIXES = (".arrow", ".parquet")


def find_shards(source: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """A shard file, a folder (searched recursively for .arrow / .parquet files, sorted; `datasets`' own
    `cache-*.arrow` files of map() results are left out), or a list of either."""
    if isinstance(source, (str, os.PathLike)):
        source = [source]
    shards: list[Path] = []
    for item in source:
        path = Path(item)
        if path.is_dir():
            shards += sorted((p for p in path.rglob("*") if p.suffix in SHARD_SUFFIXES and p.is_file()
                              and not p.name.startswith((".", "cache-"))),
                             key=lambda p: p.relative_to(path).as_posix())
        elif path.is_file():
            shards.append(path)
        else:
            raise FileNotFoundError(f"no shard or folder at {path}")
    if not shards:
        raise FileNotFoundError(f"no .arrow or .parquet shards in {', '.join(map(str, source))}")
    return shards


class _Shard:
    """One shard, opened in this process: row access to the needed columns only."""

    def __init__(self, path: Path, columns: list[str]):
        import pyarrow as pa

        self.path = path
        self.columns = columns
        self._group = (None, None)  # parquet: (row group index, table) of the last group read
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            self._parquet = pq.ParquetFile(path, memory_map=True)
            meta = self._parquet.metadata
            self.num_rows = meta.num_rows
            self._group_starts = [0]
            for g in range(meta.num_row_groups):
                self._group_starts.append(self._group_starts[-1] + meta.row_group(g).num_rows)
            names = self._parquet.schema_arrow.names
        else:
            self._parquet = None
            source = pa.memory_map(str(path), "r")
            try:
                table = pa.ipc.open_file(source).read_all()
            except pa.ArrowInvalid:  # not the random-access format: the streaming format of `datasets`
                source.seek(0)
                table = pa.ipc.open_stream(source).read_all()
            self.num_rows = table.num_rows
            names = table.column_names
            self._table = table
        missing = [c for c in columns if c not in names]
        if missing:
            raise ValueError(f"{path}: no field {', '.join(missing)} (fields: {', '.join(names)})")

    def row(self, index: int) -> dict:
        if self._parquet is None:
            table, offset = self._table, index
        else:
            group = bisect.bisect_right(self._group_starts, index) - 1
            if self._group[0] != group:
                self._group = (group, self._parquet.read_row_group(group, columns=self.columns))
            table, offset = self._group[1], index - self._group_starts[group]
        return {c: table.column(c)[offset].as_py() for c in self.columns}


class CommonCatalog(SkippingDataset):
    """Rows of CommonCatalog shards as `(image [3, H, W] in [0, 1], caption)`; see the module docstring."""

    def __init__(self, source: str | os.PathLike | Sequence[str | os.PathLike],
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 image_field: str = "jpg", caption_field: str | None = "blip2_caption",
                 on_error: str = "substitute"):
        super().__init__(transform, on_error)
        self.shards = find_shards(source)
        self.image_field, self.caption_field = image_field, caption_field
        self._columns = [image_field] + ([caption_field] if caption_field else [])
        self._open: dict[int, _Shard] = {}
        self._starts = [0]
        for i, path in enumerate(self.shards):
            self._starts.append(self._starts[-1] + self._shard(i).num_rows)
        self._open.clear()  # opened again where items are read (a worker process, say)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_open"] = {}
        return state

    def _shard(self, i: int) -> _Shard:
        if i not in self._open:
            self._open[i] = _Shard(self.shards[i], self._columns)
        return self._open[i]

    def __len__(self) -> int:
        return self._starts[-1]

    def _locate(self, index: int) -> tuple[int, int]:
        shard = bisect.bisect_right(self._starts, index) - 1
        return shard, index - self._starts[shard]

    def _name(self, index: int) -> str:
        shard, row = self._locate(index)
        return f"{self.shards[shard]} row {row}"

    def _load(self, index: int) -> tuple[torch.Tensor, str]:
        shard, row = self._locate(index)
        values = self._shard(shard).row(row)
        data = values[self.image_field]
        if isinstance(data, dict):  # datasets.Image(): {"bytes": ..., "path": ...}
            if data.get("bytes") is None and data.get("path"):
                try:
                    data = Path(data["path"]).read_bytes()
                except OSError as error:
                    raise ImageError(f"{self._name(index)}: image path {data['path']}: {error.strerror}") from None
            else:
                data = data.get("bytes")
        if not data:
            raise ImageError(f"{self._name(index)}: no image bytes")
        caption = values.get(self.caption_field) if self.caption_field else None
        return decode_image_bytes(data, self._name(index)), (caption or "").strip()
