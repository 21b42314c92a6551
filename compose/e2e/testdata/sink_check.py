"""Independent check of parquet-sink's output, for the sink's fault tests.

usage: python sink_check.py ROOT PROBE_VEHICLE FROM_US TO_US

Reads every Parquet file under ROOT/readings and ROOT/locations with DuckDB
(Hive partitioning on) and again with pyarrow, and prints one JSON object:

  tables     per table: rows, distinct (vehicle_id, epoch, seq, batch_index)
             rows, files, and rows whose date=/hour= folder is not their ts's
  pyarrow    per table: rows pyarrow reads (must equal DuckDB's)
  batches    [vehicle_id, epoch, seq, readings, fixes] for every batch
  probe      a query for PROBE_VEHICLE's readings with FROM_US <= ts < TO_US:
             its row count, and "Row Groups Scanned: a / b" from DuckDB's
             EXPLAIN ANALYZE of it (row groups skipped by statistics)
  bloom      row groups, and how many the vehicle_id bloom filters exclude
             for a vehicle that does not exist
"""

import glob
import json
import os
import re
import sys

import duckdb
import pyarrow.parquet as pq


def main():
    root, vehicle, from_us, to_us = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    con = duckdb.connect()
    out = {"tables": {}, "pyarrow": {}}
    batches = {}
    for table in ("readings", "locations"):
        files = sorted(glob.glob(os.path.join(root, table, "**", "*.parquet"), recursive=True))
        if not files:
            out["tables"][table] = {"rows": 0, "distinct": 0, "files": 0, "misplaced": 0}
            out["pyarrow"][table] = 0
            continue
        src = f"read_parquet('{root}/{table}/**/*.parquet', hive_partitioning = true)"
        rows, distinct, misplaced = con.execute(
            f"SELECT count(*), count(DISTINCT (vehicle_id, epoch, seq, batch_index)), "
            f"count(*) FILTER (WHERE strftime(ts AT TIME ZONE 'UTC', '%Y-%m-%d') <> CAST(date AS VARCHAR) "
            f"OR hour(ts AT TIME ZONE 'UTC') <> CAST(hour AS INTEGER)) FROM {src}"
        ).fetchone()
        out["tables"][table] = {"rows": rows, "distinct": distinct, "files": len(files), "misplaced": misplaced}
        out["pyarrow"][table] = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
        for v, e, s, n in con.execute(f"SELECT vehicle_id, epoch, seq, count(*) FROM {src} GROUP BY ALL").fetchall():
            b = batches.setdefault((v, e, s), [v, e, s, 0, 0])
            b[3 if table == "readings" else 4] = n
    out["batches"] = list(batches.values())

    query = (
        f"SELECT count(*) FROM read_parquet('{root}/readings/**/*.parquet', hive_partitioning = true) "
        f"WHERE vehicle_id = '{vehicle}' AND ts >= make_timestamp({from_us}) AND ts < make_timestamp({to_us})"
    )
    count = con.execute(query).fetchone()[0]
    plan = "\n".join(str(r[1]) for r in con.execute("EXPLAIN ANALYZE " + query).fetchall())
    m = re.search(r"Row Groups Scanned:\s*([\d,]+)\s*/\s*([\d,]+)", plan)
    scanned = [int(m.group(1).replace(",", "")), int(m.group(2).replace(",", ""))] if m else None
    out["probe"] = {"rows": count, "row_groups_scanned": scanned}

    files = sorted(glob.glob(os.path.join(root, "readings", "**", "*.parquet"), recursive=True))
    groups = excluded = 0
    for f in files:
        for _, _, ex in con.execute(f"SELECT * FROM parquet_bloom_probe('{f}', 'vehicle_id', 'no-such-vehicle')").fetchall():
            groups += 1
            excluded += 1 if ex else 0
    out["bloom"] = {"row_groups": groups, "excluded": excluded}
    print(json.dumps(out, default=str))


if __name__ == "__main__":
    main()
