"""Several sessions at once: registrations of one model get distinct consecutive versions, and a
promote or roll back while clients predict never mixes two versions inside one statement."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from conftest import export_onnx, has, make_mlp, per_backend, run_onnx

import dbdl


def _run_all(workers, timeout: float = 240.0) -> list[BaseException]:
    errors: list[BaseException] = []

    def guarded(work):
        try:
            work()
        except BaseException as exc:  # noqa: BLE001 - collected and asserted by the test
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    assert not any(t.is_alive() for t in threads), "a worker hung"
    return errors


def _sessions(url: str) -> int:
    # PostgreSQL: separate server sessions; DuckDB: separate connections of this one process
    return per_backend(url, duckdb=2, postgres=4)


@pytest.mark.parametrize("first", [True, False], ids=["new-model", "existing-model"])
def test_concurrent_registrations_get_distinct_consecutive_versions(url, first):
    n, per = _sessions(url), 3
    models = [[export_onnx(make_mlp((8, 4, 2), seed=100 * w + i), 8) for i in range(per)] for w in range(n)]
    with dbdl.connect(url) as db:
        if not first:
            db.models.register("m", export_onnx(make_mlp((8, 4, 2), seed=99), 8))
    got: dict[bytes, int] = {}
    barrier = threading.Barrier(n)

    def worker(w: int):
        # on PostgreSQL half the sessions register from SQL, where no client retries for them
        from_sql = has(url, "in_server") and w % 2 == 1

        def work():
            with dbdl.connect(url) as db:
                barrier.wait(timeout=60)
                for onnx_bytes in models[w]:
                    if from_sql:
                        got[onnx_bytes] = db.sql("SELECT dbdl.register_model('m', ?)", [onnx_bytes]).scalar()
                    else:
                        got[onnx_bytes] = db.models.register("m", onnx_bytes)
        return work

    assert _run_all([worker(w) for w in range(n)]) == []
    base = 0 if first else 1
    assert sorted(got.values()) == list(range(base + 1, base + n * per + 1))
    with dbdl.connect(url) as db:
        infos = db.models.list("m")
        assert [i.version for i in infos] == list(range(1, base + n * per + 1))
        # each version holds the bytes its registration was told it got
        for onnx_bytes, version in got.items():
            assert db.models.model_bytes("m", version) == onnx_bytes
        # the same bytes registered again, from several sessions at once, are one version
        again = models[0][0]
    seen: list[int] = []
    barrier2 = threading.Barrier(n)

    def same():
        with dbdl.connect(url) as db:
            barrier2.wait(timeout=60)
            seen.append(db.models.register("m", again))

    assert _run_all([same] * n) == []
    assert seen == [got[again]] * n
    with dbdl.connect(url) as db:
        assert len(db.models.list("m")) == base + n * per


def test_promote_and_rollback_while_clients_predict_score_each_statement_with_one_version(url, features):
    x = features[:64]
    v1, v2 = export_onnx(make_mlp((8, 16, 3), seed=0), 8), export_onnx(make_mlp((8, 16, 3), seed=1), 8)
    with dbdl.connect(url) as db:
        db.create_table("t", {"id": np.arange(len(x)), "feats": x})
        db.models.register("m", v1)
        db.models.register("m", v2)
    expected = {1: run_onnx(v1, {"x": x}), 2: run_onnx(v2, {"x": x})}
    stop = threading.Event()
    scored: list[int] = []

    def client():
        with dbdl.connect(url) as db:
            for _ in range(6):
                got = np.array([r[0] for r in db.sql("SELECT predict_array('m', feats) FROM t ORDER BY id",
                                                     strategy="udf").fetchall()], dtype=np.float32)
                matches = [v for v, want in expected.items() if np.allclose(got, want, atol=1e-5)]
                assert len(matches) == 1, "a statement mixed two versions (or neither)"
                scored.append(matches[0])

    def admin():
        with dbdl.connect(url) as db:
            while not stop.is_set():
                db.models.promote("m", 1)
                db.models.promote("m", 2)
                db.models.rollback("m")

    clients = [client] * per_backend(url, duckdb=4, postgres=8)
    flipper = threading.Thread(target=admin)
    flipper.start()
    try:
        errors = _run_all(clients)
    finally:
        stop.set()
        flipper.join(60)
    assert errors == []
    assert len(scored) == 6 * len(clients) and set(scored) <= {1, 2}
