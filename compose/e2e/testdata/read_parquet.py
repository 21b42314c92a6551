"""Independent reader of the sink's output for the end-to-end test.

Reads every Parquet file under ROOT/readings and ROOT/locations with DuckDB
(Hive partitioning on) and checks each file's schema with pyarrow, then
prints one JSON object per row on stdout: every row, or with WHERE (an SQL
condition over the columns of both tables) the rows DuckDB selects with
it. Exits non-zero, saying why on stderr, if a file is unreadable or its
schema is not the documented one.

usage: python read_parquet.py ROOT [WHERE]
"""

import glob
import json
import os
import sys

import duckdb
import pyarrow.parquet as pq

READINGS = {
    "vehicle_id": "string",
    "ts": "timestamp[us, tz=UTC]",
    "signal": "string",
    "unit": "string",
    "value_type": "string",
    "value_double": "double",
    "value_int": "int64",
    "value_bool": "bool",
    "value_string": "string",
    "epoch": "uint64",
    "seq": "uint64",
    "batch_index": "int32",
    "capture_id": "string",
    "capture_rule": "string",
    "capture_trigger_ts": "timestamp[us, tz=UTC]",
}
LOCATIONS = {
    "vehicle_id": "string",
    "ts": "timestamp[us, tz=UTC]",
    "lat": "double",
    "lon": "double",
    "alt": "double",
    "speed": "double",
    "heading": "double",
    "accuracy": "double",
    "epoch": "uint64",
    "seq": "uint64",
    "batch_index": "int32",
    "capture_id": "string",
    "capture_rule": "string",
    "capture_trigger_ts": "timestamp[us, tz=UTC]",
}


def check_schema(path, want):
    schema = pq.read_schema(path)
    got = {f.name: str(f.type) for f in schema}
    if got != want:
        sys.exit(f"{path}: schema {got}, want {want}")
    meta = pq.ParquetFile(path).metadata
    codec = meta.row_group(0).column(0).compression if meta.num_row_groups else "ZSTD"
    if codec != "ZSTD":
        sys.exit(f"{path}: compression {codec}, want ZSTD")


def main():
    root = sys.argv[1]
    where = f" WHERE {sys.argv[2]}" if len(sys.argv) > 2 else ""
    con = duckdb.connect()
    for table, want in (("readings", READINGS), ("locations", LOCATIONS)):
        files = sorted(glob.glob(os.path.join(root, table, "**", "*.parquet"), recursive=True))
        for f in files:
            check_schema(f, want)
        if not files:
            continue
        # Timestamps as microseconds since the epoch: ts_us, capture_trigger_ts_us.
        cols = ", ".join(f"epoch_us({c}) AS {c}_us" if t.startswith("timestamp") else c for c, t in want.items())
        rows = con.execute(
            f"SELECT {cols}, CAST(date AS VARCHAR) AS date, CAST(hour AS INTEGER) AS hour, filename "
            f"FROM read_parquet('{root}/{table}/**/*.parquet', hive_partitioning = true, filename = true){where}"
        )
        names = [d[0] for d in rows.description]
        for row in rows.fetchall():
            rec = dict(zip(names, row))
            rec["table"] = table
            rec["filename"] = os.path.relpath(rec["filename"], root)
            print(json.dumps(rec))


if __name__ == "__main__":
    main()
