"""The per-trial results file (:data:`analysis.schema.TRIAL_RESULTS_FILE`): every report of one
trial as a Parquet table, one row per epoch, written by the trial and read column by column by
the analysis, through :mod:`analysis.storage` (a local folder or an object store).

Every file of an experiment has the same columns (every declared metric, a ``<name>.<layer>``
column per prunable layer, and ``trial_id``; missing values are nulls), so a whole experiment
reads as one dataset. pyarrow only: no pandas, no torch.
"""
from __future__ import annotations

import io
from typing import Iterable, Mapping, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from . import storage
from .schema import METRICS, TRIAL_ID

_TYPES = {"float64": pa.float64(), "int64": pa.int64(), "bool": pa.bool_(), "string": pa.string(),
          "list<string>": pa.list_(pa.string())}


def arrow_schema(layers: Sequence[str]) -> pa.Schema:
    """The columns of a trial's file: ``trial_id``, each declared metric in declaration order
    (a per-layer one as one column per layer in ``layers``)."""
    fields = [pa.field(TRIAL_ID, pa.string())]
    for m in METRICS:
        names = [f"{m.name}.{layer}" for layer in layers] if m.per_layer else [m.name]
        fields += [pa.field(name, _TYPES[m.dtype]) for name in names]
    return pa.schema(fields)


def _flat(report: Mapping) -> dict:
    row = {}
    for key, value in report.items():
        if isinstance(value, Mapping):
            row.update({f"{key}.{inner}": v for inner, v in value.items()})
        else:
            row[key] = value
    return row


def to_table(trial_id: str | Sequence[str], reports: Iterable[Mapping], layers: Sequence[str]) -> pa.Table:
    """One trial's reports (dicts of declared metrics, per-layer ones as ``{layer: value}``) as a
    table; ``trial_id`` names all rows, or (a fused group's) each row in turn."""
    schema = arrow_schema(layers)
    reports = list(reports)
    ids = [trial_id] * len(reports) if isinstance(trial_id, str) else list(trial_id)
    rows = [{**_flat(r), TRIAL_ID: i} for r, i in zip(reports, ids, strict=True)]
    extra = sorted({k for row in rows for k in row} - set(schema.names))
    if extra:
        raise ValueError(f"not columns of the results file: {', '.join(extra)}")
    return pa.Table.from_pylist(rows, schema=schema)


def to_bytes(table: pa.Table) -> bytes:
    """Parquet without compression or column statistics: a trial's file is a few kB either way, and
    an experiment reads thousands of them, where a codec's per-column start-up costs more than it saves."""
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="none", write_statistics=False)
    return buf.getvalue()


def write(path: str, trial_id: str | Sequence[str], reports: Iterable[Mapping], layers: Sequence[str]) -> None:
    """Write (or replace) the results file at ``path``."""
    storage.write_bytes(path, to_bytes(to_table(trial_id, reports, layers)))


CHUNK = 512  # files per Parquet dataset scan: a scan holds every file's buffers until it ends


def read(paths: Sequence[str]) -> pa.Table:
    """Every row of the results files at ``paths`` (all local or all on one object store), as one
    table. Read as Parquet datasets of :data:`CHUNK` files (in parallel within each); files whose
    columns differ (an experiment resumed with newer code) are unified, missing values null."""
    import pyarrow.dataset as ds

    if not paths:
        return pa.table({})
    fs, _ = storage.filesystem(paths[0])
    files = [storage.within(p) for p in paths]
    parts = []
    for i in range(0, len(files), CHUNK):
        chunk = ds.dataset(files[i:i + CHUNK], format="parquet", filesystem=fs)  # the first file's columns
        table = chunk.to_table()
        # each file's own columns are known once it is read: when one differs, read the chunk again
        # with every file's columns (else the others' extra ones would be dropped silently)
        if not all(f.physical_schema.equals(chunk.schema) for f in chunk.get_fragments()):
            factory = ds.FileSystemDatasetFactory(fs, files[i:i + CHUNK], ds.ParquetFileFormat(),
                                                  ds.FileSystemFactoryOptions())
            table = factory.finish(factory.inspect(promote_options="permissive", fragments=None)).to_table()
        parts.append(table)
    return pa.concat_tables(parts, promote_options="permissive")
