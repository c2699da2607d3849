"""DM8's migrations without a server (migrations/dm8, docs/dm8.md).

Every statement of every file is split as the backend splits it (``split_script``) and parsed
with the DM8 dialect; a PL/SQL block is checked by the DDL it runs (its EXECUTE IMMEDIATE
strings) and by the one error it may ignore. The tables and columns the files create are compared
with what dbdl's shared SQL reads and writes (the registry's rules, the dataset catalog, the
client's registry and calibration), and with PostgreSQL's migrations, whose table set DM8 mirrors
but for the differences listed below. The first migration as the backend sends it is a golden file
(tests/golden/dm8/migration_0001.sql; ``DBDL_UPDATE_GOLDEN=1`` rewrites it).
"""

from __future__ import annotations

import ast
import os
import re
from functools import lru_cache
from pathlib import Path

import pytest
import sqlglot
import sqlglot.expressions as exp

import dbdl_udf.datasets
from dbdl import migrate
from dbdl.backends.dm8.dialect import DbdlDM8, render, split_script

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden" / "dm8"

#: the one error a guarded CREATE ignores: "the object already exists" (unconfirmed without a
#: server: migrations/dm8/0001_registry.sql's header)
ALREADY_EXISTS = -2124

#: PostgreSQL's registry objects that DM8 has not, by design
NOT_ON_DM8 = {
    "dbdl.settings": "the server's python_path for PL/Python; dbdl runs no Python inside DM8",
    "dbdl.cache_stats": "the result cache's statistics: DM8 has no result cache",
}
#: tables DM8 keeps only as far as the registry's shared rules touch them (columns PostgreSQL has
#: and DM8 has not)
REDUCED_ON_DM8 = {
    "dbdl.cache_entries": "the result cache is not available on DM8: the table stays empty, and holds the columns "
                          "dbdl_udf.catalog.clear_cache deletes by",
}
#: the statements that sqlglot keeps as text (exp.Command): DM8 syntax the Oracle dialect does not model
COMMAND_PREFIXES = ("GRANT DBDL_USER TO ", "CREATE ROLE ", "CREATE SCHEMA ", "CREATE OR REPLACE FUNCTION ")
#: where dbdl's shared SQL on the registry lives (what every backend runs against dbdl's tables)
SHARED_SQL = [ROOT / "udf" / "dbdl_udf" / "catalog.py", ROOT / "udf" / "dbdl_udf" / "datasets.py",
              ROOT / "python" / "dbdl" / "registry.py", ROOT / "python" / "dbdl" / "backends" / "base.py"]


def _migrations():
    return migrate.available("dm8")


def is_block(statement: str) -> bool:
    return statement.split(None, 1)[0].upper() in ("BEGIN", "DECLARE")


_IMMEDIATE = re.compile(r"EXECUTE\s+IMMEDIATE\s+'((?:[^']|'')*)'(\s*\|\|\s*USER)?\s*;", re.I)


def block_ddl(block: str) -> list[str]:
    """The statements a PL/SQL block runs (its EXECUTE IMMEDIATE strings, quotes undoubled; ``|| USER``
    as the owner's name)."""
    found = [m[1].replace("''", "'") + ("DBDL_OWNER" if m[2] else "") for m in _IMMEDIATE.finditer(block)]
    assert found, f"a block of migrations/dm8 runs its DDL with EXECUTE IMMEDIATE: {block[:80]}"
    return found


def parse(sql: str) -> exp.Expression:
    """The one statement ``sql`` read with the DM8 dialect. A function's PL/SQL body is none of
    sqlglot's business: its header is read (an exp.Command), the body is checked as text."""
    if re.match(r"CREATE\s+OR\s+REPLACE\s+FUNCTION\b", sql, re.I):
        sql = sql.split(";", 1)[0]
    expressions = [e for e in sqlglot.parse(sql, read=DbdlDM8) if e is not None]
    assert len(expressions) == 1, sql
    return expressions[0]


@lru_cache(maxsize=None)
def ddl_statements() -> tuple[tuple[str, str], ...]:
    """(file, statement) of every statement the migrations run: blocks by their DDL."""
    out = []
    for mig in _migrations():
        for statement in split_script(mig.sql):
            for sql in block_ddl(statement) if is_block(statement) else [statement]:
                out.append((f"{mig.id:04d}_{mig.name}.sql", sql))
    return tuple(out)


@lru_cache(maxsize=None)
def dm8_tables() -> dict[str, list[str]]:
    """table or view (dbdl.name) -> its columns, as the migrations create them."""
    tables: dict[str, list[str]] = {}
    for _, sql in ddl_statements():
        tree = parse(sql)
        if not isinstance(tree, exp.Create):
            continue
        if tree.kind == "TABLE":
            schema = tree.this
            tables[_name(schema.this)] = [c.name.lower() for c in schema.expressions if isinstance(c, exp.ColumnDef)]
        elif tree.kind == "VIEW":
            tables[_name(tree.this)] = [e.alias_or_name.lower() for e in tree.expression.expressions]
    return tables


def _name(table: exp.Table) -> str:
    return f"{table.db}.{table.name}".lower() if table.db else table.name.lower()


# -- the files --------------------------------------------------------------------------------------


def test_the_migrations_are_numbered_without_gaps_and_named_as_planned():
    assert [(m.id, m.name) for m in _migrations()] == [
        (1, "registry"), (2, "calibration"), (3, "datasets"), (4, "roles"), (5, "fail")]


def test_every_statement_parses_with_the_dm8_dialect():
    commands = []
    for file, sql in ddl_statements():
        tree = parse(sql)
        if isinstance(tree, exp.Command):
            assert sql.upper().startswith(COMMAND_PREFIXES), f"{file}: sqlglot cannot read {sql[:60]!r}"
            commands.append(sql.split(None, 2)[1].upper())
        else:
            # what sqlglot read is what the file says: written back, it parses to the same tree
            assert parse(tree.sql(dialect=DbdlDM8)) == tree, f"{file}: {sql[:60]}"
    # the schemas, the roles, the role grant and the function are the statements sqlglot keeps as text
    assert sorted(commands) == ["DBDL_USER", "OR", "ROLE", "ROLE", "SCHEMA", "SCHEMA"]


def test_every_create_of_a_named_object_ignores_only_already_exists():
    """DM8 commits each DDL statement: an interrupted migration runs again from the top, so each
    CREATE must pass over what the first run made, and fail on anything else."""
    guarded = 0
    for mig in _migrations():
        for statement in split_script(mig.sql):
            upper = statement.upper()
            assert "WHEN OTHERS" not in upper, f"{mig.name}: a block of migrations/dm8 never ignores every error"
            if not is_block(statement):
                assert not re.match(r"CREATE\s+(TABLE|SCHEMA|ROLE|INDEX|SEQUENCE)\b", upper), \
                    f"{mig.name}: an unguarded CREATE fails when the migration runs again: {statement[:60]}"
                continue
            ddl = " ".join(block_ddl(statement)).upper()
            if re.match(r"CREATE\s+OR\s+REPLACE\b", ddl):
                assert "EXCEPTION" not in upper  # replaces what is there: nothing to ignore
                continue
            assert len(block_ddl(statement)) == 1, f"{mig.name}: one guarded CREATE per block"
            assert re.match(r"CREATE\s+(TABLE|SCHEMA|ROLE)\b", ddl), ddl[:60]
            codes = re.findall(r"PRAGMA\s+EXCEPTION_INIT\s*\(\s*already_exists\s*,\s*(-?\d+)\s*\)", statement, re.I)
            assert codes == [str(ALREADY_EXISTS)], f"{mig.name}: {statement[:80]}"
            assert re.search(r"EXCEPTION\s+WHEN\s+already_exists\s+THEN\s+NULL;\s*END;$", statement, re.I), statement
            guarded += 1
    assert guarded == 2 + 6 + 1 + 1 + 2  # schemas, registry tables, calibration, datasets, roles


#: a column's type as the DM8 dialect writes it back: DM8's own types, every VARCHAR sized (the
#: dialect's spelling, not sqlglot's internal type, which differs between its versions)
DM8_TYPE = re.compile(r"(BIGINT|CLOB|BLOB|TIMESTAMP|DOUBLE|DOUBLE PRECISION|VARCHAR2?\(\d+\))")


def test_the_migrations_use_only_types_dm8_has():
    """BIGINT for every whole number (DM8's INT is 32-bit), sized VARCHAR for keys, CLOB for long
    text, BLOB for bytes: none of PostgreSQL's or DuckDB's spellings."""
    seen = set()
    for file, sql in ddl_statements():
        tree = parse(sql)
        if not (isinstance(tree, exp.Create) and tree.kind == "TABLE"):
            continue
        keys = {c.name.lower() for k in tree.this.find_all(exp.PrimaryKey) for c in k.find_all(exp.Identifier)}
        for column in tree.this.find_all(exp.ColumnDef):
            written = column.args["kind"].sql(dialect=DbdlDM8)
            name = f"{file}: {_name(tree.this.this)}.{column.name}"
            assert DM8_TYPE.fullmatch(written), f"{name}: {written}"
            seen.add(written.split("(")[0].split()[0].rstrip("2"))
            if column.name.lower() in keys or column.name.lower() in ("sha256", "original_sha256"):
                assert written not in ("CLOB", "BLOB"), f"{name}: a key is a sized VARCHAR or a BIGINT, never a LOB"
        for spelling in ("TEXT", "BYTEA", "JSONB", "SERIAL", " INT ", "INTEGER", "FLOAT[", "REAL[", "BOOLEAN"):
            spaced = f" {sql.upper()} ".replace(",", " ").replace("(", " ( ")
            assert spelling not in spaced, f"{file}: {spelling} in {sql[:60]}"
    assert seen == {"BIGINT", "CLOB", "BLOB", "TIMESTAMP", "DOUBLE", "VARCHAR"}
    assert "version" in dm8_tables()["dbdl.model_versions"]


def test_the_function_fail_raises_its_message_and_returns_double():
    function = [sql for _, sql in ddl_statements() if sql.upper().startswith("CREATE OR REPLACE FUNCTION")]
    assert len(function) == 1
    text = " ".join(function[0].split())
    assert text.startswith("CREATE OR REPLACE FUNCTION dbdl.fail(msg VARCHAR) RETURN DOUBLE AS BEGIN")
    assert "RAISE_APPLICATION_ERROR(-20001, msg);" in text and text.endswith("END;")
    # the dialect's fail spelling calls it by that name
    from dbdl.backends.dm8.dialect import RELATIONAL
    call = RELATIONAL.fail(exp.Literal.string("dbdl.ShapeMismatch: x"), exp.column("f")).sql(dialect=DbdlDM8)
    assert re.fullmatch(r"dbdl\.fail\('dbdl\.ShapeMismatch: x'\)", call, re.I), call


def test_the_roles_grant_what_predict_reads_and_what_the_registry_writes():
    grants: dict[str, set[tuple[str, str]]] = {}
    for _, sql in ddl_statements():
        tree = parse(sql)
        if isinstance(tree, exp.Grant):
            for principal in tree.args["principals"]:
                for privilege in tree.args["privileges"]:
                    grants.setdefault(principal.name.upper(), set()).add(
                        (privilege.this.upper() if isinstance(privilege.this, str) else privilege.this.name.upper(),
                         _name(tree.args["securable"])))
    user = {t for p, t in grants["DBDL_USER"] if p == "SELECT"}
    assert user == {"dbdl.model_catalog", "dbdl.models", "dbdl.model_versions", "dbdl.blobs", "dbdl.datasets",
                    "dbdl.calibration"}
    assert grants["DBDL_USER"] - {("SELECT", t) for t in user} == {("EXECUTE", "dbdl.fail")}
    assert grants["PUBLIC"] == {("SELECT", "dbdl.schema_migrations")}
    writes = {t for p, t in grants["DBDL_ADMIN"] if p == "INSERT"}
    assert writes == {"dbdl.models", "dbdl.model_versions", "dbdl.blobs", "dbdl.alias_history", "dbdl.datasets",
                      "dbdl.calibration"}
    for table in writes:
        assert {(p, table) for p in ("SELECT", "INSERT", "UPDATE", "DELETE")} <= grants["DBDL_ADMIN"]
    # the (empty) result cache: only the deletes of a model's drop
    assert {t for p, t in grants["DBDL_ADMIN"] if p == "DELETE"} - writes == {"dbdl.cache_entries", "dbdl.result_cache"}
    # DBDL_ADMIN holds DBDL_USER's grants through the role
    assert "GRANT DBDL_USER TO DBDL_ADMIN" in [sql for _, sql in ddl_statements()]


# -- against what dbdl's shared SQL reads and writes ---------------------------------------------------


def _sql_strings(path: Path) -> list[str]:
    """The SQL texts of a module: string constants, and f-strings with each placeholder filled by the
    module constant it names (or ``x`` where it is a value computed at run time)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    constants = {t.id: n.value.value for n in tree.body
                 if isinstance(n, ast.Assign) and isinstance(n.value, ast.Constant) and isinstance(n.value.value, str)
                 for t in n.targets if isinstance(t, ast.Name)}
    texts = []
    pieces = {id(v) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr) for v in n.values}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in pieces:
            texts.append(node.value)
        elif isinstance(node, ast.JoinedStr):
            # a run-time placeholder is a name (a table, a column list) or a condition ({where})
            for filler in ("x", "x = 1"):
                text = "".join(v.value if isinstance(v, ast.Constant) else
                               constants.get(getattr(v.value, "id", None), filler) for v in node.values)
                try:
                    sqlglot.parse(text, read=DbdlDM8)
                except sqlglot.errors.SqlglotError:  # a message that quotes SQL, or the wrong filler
                    continue
                texts.append(text)
                break
    return [t for t in texts if re.match(r"\s*(SELECT|INSERT|UPDATE|DELETE)\b", t) and "dbdl." in t]


def _store_version_columns() -> list[str]:
    """The columns store_version's INSERT may name: the keys of its ``values`` dict."""
    tree = ast.parse((ROOT / "udf" / "dbdl_udf" / "catalog.py").read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "values" and \
                isinstance(node.value, ast.Dict):
            return [k.value for k in node.value.keys]
    raise AssertionError("catalog.store_version's values dict is gone: update this test")


def _columns_named(sql: str) -> set[tuple[str, str]]:
    """(dbdl.table, column) of every column the statement names, each resolved to its table."""
    tree = parse(sql)
    found = set()
    if isinstance(tree, exp.Insert):
        target = tree.this
        table = _name(target.this if isinstance(target, exp.Schema) else target)
        found |= {(table, c.name.lower()) for c in target.expressions} if isinstance(target, exp.Schema) else set()
    for column in tree.find_all(exp.Column):
        scope = column.find_ancestor(exp.Select, exp.Update, exp.Delete)
        if scope is None:
            continue
        if isinstance(scope, exp.Select):
            sources = [t for t in scope.find_all(exp.Table) if t.find_ancestor(exp.Select) is scope]
        else:
            sources = [scope.this]
        by_alias = {(t.alias or t.name).lower(): _name(t) for t in sources}
        if column.table:
            table = by_alias.get(column.table.lower())
        else:
            table = next(iter(by_alias.values())) if len(by_alias) == 1 else None
        assert table is not None, f"cannot tell the table of {column.sql()} in {sql}"
        found.add((table, column.name.lower()))
    return {(t, c) for t, c in found if t.startswith("dbdl.") and t != "dbdl.x" and c != "x"}


def shared_sql_columns() -> dict[tuple[str, str], str]:
    """(dbdl.table, column) -> the first module whose SQL names it."""
    named: dict[tuple[str, str], str] = {}
    for path in SHARED_SQL:
        for sql in _sql_strings(path):
            for key in _columns_named(sql):
                named.setdefault(key, path.name)
    # what the modules build at run time
    for column in _store_version_columns():
        named.setdefault(("dbdl.model_versions", column), "catalog.py")
    for column in dbdl_udf.datasets._ROW_FIELDS + tuple(c.strip() for c in dbdl_udf.datasets.COLUMNS.split(",")):
        named.setdefault(("dbdl.datasets", column), "datasets.py")
    for column in ("name", "version"):  # catalog.clear_cache's condition
        named.setdefault(("dbdl.cache_entries", column), "catalog.py")
    for table in ("model_versions", "alias_history", "models"):  # catalog._forget_model
        named.setdefault((f"dbdl.{table}", "name"), "catalog.py")
    return named


def test_the_tables_cover_every_column_the_shared_sql_names():
    named = shared_sql_columns()
    # the check reads what it should: the registry, the catalog view, datasets, calibration, the cache's deletes
    assert {t for t, _ in named} == {"dbdl.blobs", "dbdl.models", "dbdl.model_versions", "dbdl.alias_history",
                                     "dbdl.model_catalog", "dbdl.datasets", "dbdl.calibration", "dbdl.cache_entries",
                                     "dbdl.result_cache"}
    assert ("dbdl.calibration", "value") in named and ("dbdl.model_catalog", "serving") in named
    tables = dm8_tables()
    missing = sorted(f"{t}.{c} ({where})" for (t, c), where in named.items() if c not in tables.get(t, ()))
    assert missing == []


def test_the_catalog_view_has_the_columns_the_registry_reads():
    from dbdl.registry import _VERSION_COLUMNS

    wanted = [c.strip() for c in _VERSION_COLUMNS.split(",")]
    assert set(wanted) <= set(dm8_tables()["dbdl.model_catalog"])


# -- against PostgreSQL's migrations -----------------------------------------------------------------


def postgres_tables() -> dict[str, set[str]]:
    """table or view -> its columns, from migrations/postgres (CREATE TABLE, ADD COLUMN, the last
    CREATE OR REPLACE VIEW of each view)."""
    text = "\n".join(m.sql for m in migrate.available("postgres"))
    tables: dict[str, set[str]] = {}
    for m in re.finditer(r"CREATE TABLE IF NOT EXISTS (dbdl\.\w+) \((.*?)\n\);", text, re.S):
        body = sqlglot.parse_one(f"CREATE TABLE {m[1]} ({m[2]})", read="postgres")
        tables[m[1]] = {c.name.lower() for c in body.this.expressions if isinstance(c, exp.ColumnDef)}
    for m in re.finditer(r"ALTER TABLE (dbdl\.\w+) ADD COLUMN IF NOT EXISTS (\w+)", text):
        tables[m[1]].add(m[2].lower())
    for m in re.finditer(r"CREATE OR REPLACE VIEW (dbdl\.\w+) AS\n(.*?);", text, re.S):
        view = sqlglot.parse_one(m[2], read="postgres")
        tables[m[1]] = {e.alias_or_name.lower() for e in view.expressions}
    return tables


def test_dm8_has_postgres_registry_but_the_listed_differences():
    postgres = postgres_tables()
    dm8 = dm8_tables()
    assert {"dbdl.models", "dbdl.model_versions", "dbdl.datasets", "dbdl.model_catalog"} <= set(postgres)
    assert set(postgres) - set(dm8) == set(NOT_ON_DM8)
    assert set(dm8) - set(postgres) == set()
    for table, columns in postgres.items():
        if table in NOT_ON_DM8:
            continue
        if table in REDUCED_ON_DM8:
            assert set(dm8[table]) < columns, table
        else:
            assert set(dm8[table]) == columns, f"{table}: DM8 {sorted(dm8[table])}, PostgreSQL {sorted(columns)}"


# -- the first migration as the backend sends it --------------------------------------------------------


def sent(statement: str) -> str:
    """A statement as the DM8 backend sends it: a PL/SQL block as written, the rest through render()."""
    return statement if is_block(statement) else render(statement)


def golden_text(statements: list[str]) -> str:
    """The statements in the migration files' own convention (split_script reads them back)."""
    return "".join(f"{s}\n/\n" if is_block(s) else f"{s};\n" for s in statements)


def test_the_first_migration_as_sent_matches_its_golden_file():
    statements = [sent(s) for s in split_script(_migrations()[0].sql)]
    text = golden_text(statements)
    path = GOLDEN / "migration_0001.sql"
    if os.environ.get("DBDL_UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert path.read_text(encoding="utf-8") == text, "DBDL_UPDATE_GOLDEN=1 rewrites the golden file"
    # and read back, the golden file is DM8 SQL: the same statements, each parsing with the dialect
    back = split_script(path.read_text(encoding="utf-8"))
    assert back == statements
    kinds = []
    for statement in back:
        for sql in block_ddl(statement) if is_block(statement) else [statement]:
            tree = parse(sql)
            kinds.append(type(tree).__name__ if not isinstance(tree, exp.Create) else f"Create {tree.kind}")
    assert kinds == ["Command", "Command"] + ["Create TABLE"] * 6 + ["Create VIEW"]
    # render() spells the view as DM8 takes it, and leaves the catalog's names unquoted
    view = back[-1]
    assert view.startswith("CREATE OR REPLACE VIEW dbdl.model_catalog AS SELECT v.name, v.version, CAST(CASE WHEN")
    assert '"' not in view


@pytest.mark.parametrize("mig", [m.id for m in migrate.available("dm8")])
def test_each_migration_splits_into_complete_statements(mig):
    """No statement is cut inside a block or a string: every block ends with END; and every other
    statement has balanced quotes and parentheses."""
    (migration,) = [m for m in _migrations() if m.id == mig]
    statements = split_script(migration.sql)
    assert statements
    for statement in statements:
        assert statement.count("'") % 2 == 0, statement[:80]
        if is_block(statement):
            assert statement.endswith("END;"), statement[-40:]
        else:
            assert not statement.endswith(";") and statement.count("(") == statement.count(")"), statement[:80]


def test_the_record_of_migrations_is_made_with_the_same_guard():
    """`dbdl migrate` makes schema dbdl and dbdl.schema_migrations before each migration
    (Backend.migrations_table_script): on DM8 each CREATE is guarded as the migrations' are (whether
    DM8 takes CREATE … IF NOT EXISTS is unconfirmed), and the table has the columns migrate reads."""
    from dbdl.backends.dm8.backend import DM8Backend

    blocks = split_script(DM8Backend.migrations_table_script)
    assert [is_block(b) for b in blocks] == [True, True]
    for block in blocks:
        codes = re.findall(r"PRAGMA\s+EXCEPTION_INIT\s*\(\s*already_exists\s*,\s*(-?\d+)\s*\)", block, re.I)
        assert codes == [str(ALREADY_EXISTS)] and "WHEN OTHERS" not in block.upper()
    schema, table = (parse(ddl) for b in blocks for ddl in block_ddl(b))
    assert schema.sql(dialect=DbdlDM8).upper().startswith("CREATE SCHEMA DBDL AUTHORIZATION")
    columns = {c.name: c.args["kind"].sql(dialect=DbdlDM8) for c in table.find_all(exp.ColumnDef)}
    assert columns == {"id": "BIGINT", "name": "VARCHAR(200)", "checksum": "VARCHAR(64)", "applied_at": "TIMESTAMP"}


def test_a_column_named_by_a_reserved_word_is_created_quoted_in_upper_case():
    """The render of dbdl's statements quotes a reserved name in upper case ("UID"); the migrations'
    blocks, sent as written, must create the column under that very name."""
    from dbdl.backends.dm8.dialect import RESERVED

    found = []
    for _, sql in ddl_statements():
        for column in parse(sql).find_all(exp.ColumnDef):
            if column.name.lower() in RESERVED:
                assert column.this.quoted and column.name == column.name.upper(), column.sql(dialect=DbdlDM8)
                found.append(column.name)
    assert found == ["UID"]
