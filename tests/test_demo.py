"""make demo: the end-to-end job, checked through the state it leaves in the database."""

import dbdl
from dbdl.demo import run_demo


def test_demo_scores_digits_with_sql(tmp_path, capsys):
    url = f"duckdb:///{tmp_path / 'demo.duckdb'}"
    assert run_demo(url, epochs=15) == 0
    out = capsys.readouterr().out
    assert "accuracy computed in SQL" in out
    with dbdl.connect(url) as db:
        assert db.sql("SELECT count(*) FROM digits").scalar() == 1797
        accuracy = db.sql("SELECT avg(CAST(predicted = label AS DOUBLE)) FROM digit_scores WHERE split = 'test'").scalar()
        assert accuracy > 0.9
        loaded = db.models.load("digits")
        rows = db.sql("SELECT pixels, predicted FROM digit_scores JOIN digits USING (id) ORDER BY id LIMIT 50").fetchall()
        import numpy as np

        x = np.array([r[0] for r in rows], dtype=np.float32)
        assert loaded(x).argmax(axis=1).tolist() == [r[1] for r in rows]
