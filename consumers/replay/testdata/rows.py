"""Prints every row of the Parquet files under a folder (readings and
locations), one JSON object per line, sorted, as DuckDB reads them; then
checks that pyarrow reads the same number of rows. Usage: rows.py DIR"""
import json
import sys

import duckdb
import pyarrow.dataset as ds

root = sys.argv[1]
con = duckdb.connect()
for table in ("readings", "locations"):
    glob = f"{root}/{table}/**/*.parquet"
    try:
        rel = con.sql(f"SELECT * REPLACE (CAST(ts AS VARCHAR) AS ts) FROM read_parquet('{glob}', hive_partitioning=false) ORDER BY ALL")
    except duckdb.IOException:
        continue  # no files of this table
    cols = rel.columns
    n = 0
    for row in rel.fetchall():
        d = {"table": table}
        d.update({c: (v.isoformat() if hasattr(v, "isoformat") else v) for c, v in zip(cols, row)})
        print(json.dumps(d, sort_keys=True, default=str))
        n += 1
    arrow_rows = ds.dataset(f"{root}/{table}", format="parquet").count_rows()
    if arrow_rows != n:
        sys.exit(f"{table}: DuckDB reads {n} rows, pyarrow {arrow_rows}")
