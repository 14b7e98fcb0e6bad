"""Parquet files written by pyarrow (the library Hugging Face `datasets` writes its Parquet
with), and the rows pyarrow reads back from them, for trainer/tests/parquet.rs: ponder's
Parquet reader must give the same rows as pyarrow, an independent implementation.

Run:  pip install pyarrow && python3 scripts/make_parquet_fixture.py
Writes trainer/tests/fixtures/parquet/ (committed; a few kB).

- gsm8k-snappy.parquet: the first 23 rows of data/gsm8k/test.jsonl (question, answer), snappy
  compression (pyarrow's and `datasets`' default), row groups of 10 rows, so a reader must
  walk several row groups in order.
- countdown-zstd.parquet: Countdown rows as TinyZero's dataset has them (target: int64,
  nums: list<int64>, a nested struct, a float, a bool, a null), zstd compression.
- gsm8k-gzip.parquet: three rows, gzip compression, dictionary encoding off.
- bad-rows.parquet: rows with a null question, an empty one, and a non-string one.
- expected.json: file name -> the rows as `pyarrow.parquet.read_table(f).to_pylist()`.
"""
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "trainer", "tests", "fixtures", "parquet")
os.makedirs(OUT, exist_ok=True)

with open(os.path.join(ROOT, "data", "gsm8k", "test.jsonl"), encoding="utf-8") as f:
    gsm = [json.loads(line) for _, line in zip(range(23), f)]

tables = {
    "gsm8k-snappy.parquet": (pa.Table.from_pylist(gsm), dict(compression="snappy", row_group_size=10)),
    "gsm8k-gzip.parquet": (pa.Table.from_pylist(gsm[:3]), dict(compression="gzip", use_dictionary=False)),
    "countdown-zstd.parquet": (
        pa.Table.from_pylist(
            [
                {"target": 24, "nums": [3, 8, 1], "meta": {"source": "gen", "difficulty": 2}, "score": 0.5, "ok": True, "note": None},
                {"target": 98, "nums": [44, 19, 35], "meta": {"source": "gen", "difficulty": 3}, "score": -1.25, "ok": False, "note": "x"},
                {"target": 7, "nums": [2, 5, 9, 1], "meta": {"source": "hand", "difficulty": 1}, "score": 3.0, "ok": True, "note": None},
            ],
            schema=pa.schema(
                [
                    ("target", pa.int64()),
                    ("nums", pa.list_(pa.int64())),
                    ("meta", pa.struct([("source", pa.string()), ("difficulty", pa.int32())])),
                    ("score", pa.float64()),
                    ("ok", pa.bool_()),
                    ("note", pa.string()),
                ]
            ),
        ),
        dict(compression="zstd"),
    ),
    "bad-rows.parquet": (
        pa.Table.from_pylist(
            [
                {"question": "What is 2 + 3?", "answer": "#### 5"},
                {"question": None, "answer": "#### 1"},
                {"question": "", "answer": "#### 2"},
                {"question": "What is 1 + 1?", "answer": "#### 2"},
            ]
        ),
        dict(compression="snappy"),
    ),
}

expected = {}
for name, (table, opts) in tables.items():
    path = os.path.join(OUT, name)
    pq.write_table(table, path, **opts)
    expected[name] = pq.read_table(path).to_pylist()

with open(os.path.join(OUT, "expected.json"), "w", encoding="utf-8") as f:
    json.dump({"pyarrow": pa.__version__, "rows": expected}, f, indent=1, ensure_ascii=False)
    f.write("\n")
print("wrote", OUT, "with pyarrow", pa.__version__)
