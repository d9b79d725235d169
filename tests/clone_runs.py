"""Big stores, fabricated cheaply: one run written through the harness's own run records
(tests/test_report_mixtures.write_run), then cloned row by row in the SQLite store itself, with
its own id, tags, params, metrics and (where asked) artifacts. A store of thousands of runs takes
seconds, where thousands of harness runs would take many minutes."""

from __future__ import annotations

import shutil
import sqlite3
import uuid
from pathlib import Path


def clone(db: Path, template: str, n: int, tags=lambda i: {}, params=lambda i: {}, metrics=lambda i, key, step, v: v,
          artifacts=lambda i: False, start: int = 0) -> list[str]:
    """`n` copies of run `template`; for copy i, `tags(i)`/`params(i)` override values, `metrics`
    maps (i, key, step, value) to the copy's value (history and latest alike), `artifacts(i)`:
    whether it gets a copy of the template's artifact files. Returns the new run ids."""
    con = sqlite3.connect(db)
    try:
        run = con.execute("SELECT * FROM runs WHERE run_uuid = ?", (template,)).fetchone()
        cols = [d[0] for d in con.execute("SELECT * FROM runs LIMIT 0").description]
        base = dict(zip(cols, run))
        t_tags = dict(con.execute("SELECT key, value FROM tags WHERE run_uuid = ?", (template,)).fetchall())
        t_params = dict(con.execute("SELECT key, value FROM params WHERE run_uuid = ?", (template,)).fetchall())
        t_hist = con.execute("SELECT key, value, timestamp, step, is_nan FROM metrics WHERE run_uuid = ?", (template,)).fetchall()
        t_latest = con.execute("SELECT key, value, timestamp, step, is_nan FROM latest_metrics WHERE run_uuid = ?", (template,)).fetchall()
        src_art = Path(base["artifact_uri"].removeprefix("file://"))
        ids, runs, tag_rows, param_rows, hist_rows, latest_rows = [], [], [], [], [], []
        for i in range(n):
            rid = uuid.uuid4().hex
            ids.append(rid)
            art = str(src_art.parent.parent / rid / "artifacts")
            runs.append({**base, "run_uuid": rid, "name": f"{base['name']}-{i}", "artifact_uri": art,
                         "start_time": base["start_time"] + start + i, "end_time": (base["end_time"] or base["start_time"]) + start + i})
            tag_rows += [(k, str(v), rid) for k, v in (t_tags | tags(i)).items()]
            param_rows += [(k, str(v), rid) for k, v in (t_params | params(i)).items()]
            hist_rows += [(k, metrics(i, k, s, v), ts, rid, s, nan) for k, v, ts, s, nan in t_hist]
            latest_rows += [(k, metrics(i, k, s, v), ts, s, nan, rid) for k, v, ts, s, nan in t_latest]
            if artifacts(i) and src_art.is_dir():
                shutil.copytree(src_art, art)
        con.executemany(f"INSERT INTO runs ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})", [tuple(r[c] for c in cols) for r in runs])
        con.executemany("INSERT INTO tags (key, value, run_uuid) VALUES (?, ?, ?)", tag_rows)
        con.executemany("INSERT INTO params (key, value, run_uuid) VALUES (?, ?, ?)", param_rows)
        con.executemany("INSERT INTO metrics (key, value, timestamp, run_uuid, step, is_nan) VALUES (?, ?, ?, ?, ?, ?)", hist_rows)
        con.executemany("INSERT INTO latest_metrics (key, value, timestamp, step, is_nan, run_uuid) VALUES (?, ?, ?, ?, ?, ?)", latest_rows)
        con.commit()
    finally:
        con.close()
    return ids


def foreign_runs(db: Path, experiment_id: str, n: int, start_time: int) -> None:
    """`n` runs that are not the harness's (no tags at all), newer than `start_time`: the other
    users of a shared experiment."""
    con = sqlite3.connect(db)
    try:
        con.executemany("INSERT INTO runs (run_uuid, name, source_type, source_name, entry_point_name, user_id, status, start_time, end_time, "
                        "source_version, lifecycle_stage, artifact_uri, experiment_id) VALUES (?, ?, 'LOCAL', '', '', 'x', 'FINISHED', ?, ?, '', 'active', '', ?)",
                        [(uuid.uuid4().hex, f"other-{i}", start_time + i, start_time + i, int(experiment_id)) for i in range(n)])
        con.commit()
    finally:
        con.close()
