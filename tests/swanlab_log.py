"""Read a finished SwanLab run folder back (offline or local mode): scalars, texts and config.

SwanLab 0.10 keeps no public reader, so this wraps its record-log internals in one place."""
from collections import defaultdict
from pathlib import Path

import yaml


def run_dirs(log_dir) -> list[Path]:
    return sorted(p for p in Path(log_dir).glob("run-*") if list(p.glob("run-*.swanlab")))


def _records(run_dir):
    from swanlab.proto.swanlab.record.v1.record_pb2 import Record
    from swanlab.sdk.internal.core_python.store import DataStoreReader

    reader = DataStoreReader()
    reader.open(sorted(Path(run_dir).glob("run-*.swanlab"))[0])
    try:
        for raw in reader:
            record = Record()
            record.ParseFromString(raw)
            yield record
    finally:
        reader.close()


def scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    out = defaultdict(list)
    for r in _records(run_dir):
        if r.WhichOneof("record_type") == "scalar" and not r.scalar.key.startswith("__swanlab__"):
            out[r.scalar.key].append((r.scalar.step, r.scalar.value.number))
    return {k: sorted(v) for k, v in out.items()}


def texts(run_dir) -> dict[str, list[tuple[int, list[str]]]]:
    from swanlab.proto.swanlab.metric.column.v1.column_pb2 import ColumnType

    out = defaultdict(list)
    for r in _records(run_dir):
        if r.WhichOneof("record_type") != "media" or ColumnType.Name(r.media.type) != "COLUMN_TYPE_TEXT":
            continue
        items = []
        for item in r.media.value.items:
            if item.payload:
                items.append(item.payload.decode())
            else:
                items.extend(p.read_text(encoding="utf-8") for p in (Path(run_dir) / "media").rglob(item.filename))
        out[r.media.key].append((r.media.step, items))
    return dict(out)


def config(run_dir) -> dict:
    raw = yaml.safe_load((Path(run_dir) / "files" / "config.yaml").read_text(encoding="utf-8")) or {}
    return {k: v["value"] if isinstance(v, dict) and "value" in v else v for k, v in raw.items()}
