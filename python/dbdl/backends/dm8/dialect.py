"""DM8's sqlglot dialect as dbdl writes it, and the spellings of relation-centric SQL there.

DM8 speaks an Oracle-like SQL (sqlglot's maintainers declined a separate Dameng dialect in favour
of Oracle's), so this is sqlglot's Oracle with what DM8 does differently overridden. Every
statement dbdl sends to DM8 goes through ``render``: parsed with this dialect and written back
with it, so that the generic SQL of dbdl's catalog (``INSERT … ON CONFLICT``, ``LIMIT``, BIGINT)
comes out as DM8 takes it. docs/dm8.md "The SQL dbdl writes for DM8" lists each override, where
it comes from, and what was checked only against documentation (no DM8 server could be had).

Sources (DM8 SQL manual 《DM8_SQL 语言使用手册》 ch. 1 data types, as quoted by
docs.rs/crate/dameng-helper src/data_type.rs and the DM8 data type pages of blog.csdn.net;
integer division: superweb999.com/article/1242003.html "达梦数据库整数除法等运算默认舍弃小数";
IDENTITY(1, 1): blog.csdn.net/weixin_39792935/article/details/129419198).

Where generic dbdl SQL and DM8's own spelling read the same word differently, the generic meaning
wins (``TEXT`` is a short string to dbdl, a 2 GB long text to DM8: DM8's own SQL writes ``CLOB``
for that); DM8's own ``FLOAT`` is a double and is read as one.
"""

from __future__ import annotations

import functools
import re

import sqlglot
import sqlglot.expressions as exp
from sqlglot import generator, transforms
from sqlglot.dialects.oracle import Oracle
from sqlglot.tokens import TokenType

from ...ir.sql import RelationalSQL
from ...query import without_predict

#: the length of a VARCHAR written without one (and of generic TEXT): DM8's own default for a bare
#: VARCHAR (SQL manual 1.1.2: "如果未指定长度,缺省为 8188 字节"), written out so that it does not
#: depend on the default. It is a bound, not storage: a row is stored in at most half a page (a
#: longer value is refused at insert unless the table is USING LONG ROW); long text is CLOB.
VARCHAR_LENGTH = 8188

_T = exp.DataType.Type


def _from_dual(select: exp.Expression) -> exp.Expression:
    # a SELECT of constants reads DUAL (Oracle's rule; DM8 has DUAL: "SELECT … FROM DUAL")
    if isinstance(select, exp.Select) and not select.args.get("from_") and select.expressions:
        select = select.copy()
        select.set("from_", exp.From(this=exp.to_table("DUAL")))
    return select


def _conflict_keys(conflict: exp.OnConflict) -> list[str]:
    keys = [k.this if isinstance(k, exp.Ordered) else k for k in conflict.args.get("conflict_keys") or []]
    return [k.name for k in keys]


def _merge_column(node: exp.Expression, table: str) -> exp.Expression:
    # in DO UPDATE SET: EXCLUDED.c is the source row's c, c and t.c the target row's
    if not isinstance(node, exp.Column):
        return node
    qualifier = node.table
    if qualifier.upper() == "EXCLUDED":
        return exp.column(node.name, table="dbdl_s")
    if qualifier and qualifier != table:
        raise ValueError(f"the update of an upsert for DM8 reads only the table and EXCLUDED, not {qualifier!r}")
    return exp.column(node.name, table="dbdl_t")


def merge_of_upsert(insert: exp.Insert) -> exp.Merge:
    """``INSERT INTO t (c, …) VALUES (…) ON CONFLICT (k, …) DO NOTHING | DO UPDATE SET …`` as DM8's
    ``MERGE INTO t dbdl_t USING (SELECT … AS c, … FROM DUAL) dbdl_s ON (dbdl_t.k = dbdl_s.k …)
    [WHEN MATCHED THEN UPDATE SET …] WHEN NOT MATCHED THEN INSERT (c, …) VALUES (dbdl_s.c, …)``.

    The placeholders keep their order (the source's values come first, then the update's), so the
    same parameters bind. The update comes before the insert (Oracle's MERGE grammar, which DM8
    follows); a key column cannot be updated (Oracle refuses a column of the ON condition in the
    SET). Refused (ValueError): no conflict target (MERGE needs the keys), an INSERT without a
    column list, ``ON CONSTRAINT``, ``DO UPDATE … WHERE``, RETURNING."""
    conflict = insert.args["conflict"]
    keys = _conflict_keys(conflict)
    if not keys or conflict.args.get("constraint") is not None:
        raise ValueError("DM8 writes an upsert as MERGE INTO, which needs the conflict's key columns: write "
                         "ON CONFLICT (key, ...) DO NOTHING | DO UPDATE SET ...")
    if insert.args.get("returning") or conflict.args.get("where") is not None:
        raise ValueError("DM8's MERGE INTO has no RETURNING and dbdl writes no DO UPDATE ... WHERE for it")
    target = insert.this
    if not isinstance(target, exp.Schema) or not target.expressions:
        raise ValueError("an upsert for DM8 names its columns: INSERT INTO t (c, ...) VALUES (...) ON CONFLICT ...")
    table, columns = target.this, [c.name for c in target.expressions]
    if any(k not in columns for k in keys):
        raise ValueError(f"the conflict keys {keys} are not all among the inserted columns {columns}")
    source = insert.expression
    if isinstance(source, exp.Values):
        rows = [exp.select(*[exp.alias_(value.copy(), column) for value, column in zip(row.expressions, columns)])
                .from_("DUAL") for row in source.expressions]
        query: exp.Expression = rows[0]
        for row in rows[1:]:
            query = exp.union(query, row, distinct=False)
    elif isinstance(source, exp.Select) and len(source.expressions) == len(columns) and not source.is_star:
        query = source.copy()
        query.set("expressions", [exp.alias_(e.unalias().copy(), c) for e, c in zip(source.expressions, columns)])
    else:
        raise ValueError("an upsert for DM8 inserts VALUES (...) or a SELECT of one expression per column")
    whens = []
    action = conflict.args.get("action")
    if action is not None and "UPDATE" in action.name.upper():
        sets = []
        for assignment in conflict.expressions:
            column = assignment.this.name
            if column in keys:
                raise ValueError(f"DM8's MERGE cannot update key column {column!r} of its ON condition")
            sets.append(exp.EQ(this=exp.column(column), expression=assignment.expression.transform(
                lambda node: _merge_column(node, table.name))))
        whens.append(exp.When(matched=True, then=exp.Update(expressions=sets)))
    whens.append(exp.When(matched=False, then=exp.Insert(
        this=exp.Tuple(expressions=[exp.column(c) for c in columns]),
        expression=exp.Tuple(expressions=[exp.column(c, table="dbdl_s") for c in columns]))))
    on = exp.and_(*[exp.EQ(this=exp.column(k, table="dbdl_t"), expression=exp.column(k, table="dbdl_s"))
                    for k in keys])
    return exp.Merge(this=exp.alias_(table.copy(), "dbdl_t", table=True),
                     using=exp.Subquery(this=query, alias=exp.TableAlias(this=exp.to_identifier("dbdl_s"))),
                     on=exp.Paren(this=on), whens=exp.Whens(expressions=whens))


def _in_condition(node: exp.Expression) -> bool:
    # TRUE where a condition stands (WHERE TRUE, CASE WHEN TRUE, a AND TRUE), as against a value
    parent = node.parent
    return (isinstance(parent, (exp.Where, exp.Having, exp.Connector, exp.Not))
            or (isinstance(parent, exp.If) and node.arg_key == "this") or node.arg_key == "on")


#: words Oracle reserves (its V$RESERVED_WORDS with RESERVED = 'Y'), which DM8, Oracle-compatible,
#: reserves too (its manual's list of reserved words is longer; unconfirmed here which of dbdl's
#: other names it holds): a name dbdl uses that is one of them — dbdl.datasets' column uid — is
#: written quoted in upper case, the very name an unquoted one folds to, so it still means the same
#: (and not Oracle's pseudo-column UID, the user's number, which an unquoted uid would read)
RESERVED = frozenset("""
    access add all alter and any as asc audit between by char check cluster column comment compress
    connect create current date decimal default delete desc distinct drop else exclusive exists file
    float for from grant group having identified immediate in increment index initial insert integer
    intersect into is level like lock long maxextents minus mlslabel mode modify noaudit nocompress
    not nowait null number of offline on online option or order pctfree prior privileges public raw
    rename resource revoke row rowid rownum rows select session set share size smallint start
    successful synonym sysdate table then to trigger uid union unique update user validate values
    varchar varchar2 view whenever where with""".split()) - {
    # pseudo-columns dbdl means as such (DL-centric's row identity, column defaults) and the grantee
    # PUBLIC: never quoted
    "rowid", "rownum", "level", "user", "sysdate", "public"}


class DbdlDM8(Oracle):
    class Tokenizer(Oracle.Tokenizer):
        KEYWORDS = {
            **Oracle.Tokenizer.KEYWORDS,
            # DM8's FLOAT is binary precision 53 unless given less (a double); REAL is 24 (a float32)
            "FLOAT": TokenType.DOUBLE,
            # DM8's long texts, kept apart from TEXT (the generic short string, as dbdl writes it)
            "CLOB": TokenType.LONGTEXT,
            "LONGVARCHAR": TokenType.LONGTEXT,
        }

    class Parser(Oracle.Parser):
        FUNCTIONS = without_predict(Oracle.Parser.FUNCTIONS)

    class Generator(Oracle.Generator):
        # LIMIT n [OFFSET m] as written: DM8 takes LIMIT (and TOP); Oracle's generator writes
        # OFFSET m ROWS FETCH FIRST n ROWS ONLY
        LIMIT_FETCH = "LIMIT"

        TYPE_MAPPING = {
            **Oracle.Generator.TYPE_MAPPING,
            # DM8's INT is 32-bit: a BIGINT stays a BIGINT (Oracle's generator writes INT)
            _T.BIGINT: "BIGINT",
            _T.INT: "INT",
            _T.TINYINT: "TINYINT",  # DM8 has TINYINT (Oracle's generator widens it to SMALLINT)
            # VARCHAR, not VARCHAR2: DM8 documents them as the same type
            _T.VARCHAR: "VARCHAR",
            _T.NVARCHAR: "VARCHAR",
            # a generic TEXT is a sized VARCHAR (keys must not become CLOB); DM8's own long text is CLOB
            _T.TEXT: f"VARCHAR({VARCHAR_LENGTH})",
            _T.LONGTEXT: "CLOB",
            # model bytes and tensors: BLOB (VARBINARY is bounded by the page, 8188 bytes by default)
            _T.BLOB: "BLOB",
            _T.BINARY: "BLOB",
            _T.VARBINARY: "BLOB",
            # DM8's DOUBLE is a double; FLOAT/REAL of generic SQL is a float32, DM8's REAL (precision 24)
            _T.DOUBLE: "DOUBLE",
            _T.FLOAT: "REAL",
            # booleans are stored as BIT (1, 0 or NULL), DM8's type for ODBC/JDBC booleans
            _T.BOOLEAN: "BIT",
        }

        TRANSFORMS = {
            **Oracle.Generator.TRANSFORMS,
            exp.Select: transforms.preprocess([
                transforms.eliminate_distinct_on,
                transforms.eliminate_qualify,
                _from_dual,
            ]),
        }

        def datatype_sql(self, expression: exp.DataType) -> str:
            # a VARCHAR without a length gets one written out (DM8's own default, see VARCHAR_LENGTH)
            if expression.this in (_T.VARCHAR, _T.NVARCHAR) and not expression.expressions:
                return f"VARCHAR({VARCHAR_LENGTH})"
            return super().datatype_sql(expression)

        def offset_sql(self, expression: exp.Offset) -> str:
            # LIMIT n OFFSET m (Oracle's writes OFFSET m ROWS)
            return generator.Generator.offset_sql(self, expression)

        def generatedasidentitycolumnconstraint_sql(self, expression: exp.GeneratedAsIdentityColumnConstraint) -> str:
            # DM8's identity column: IDENTITY(start, increment)
            start = self.sql(expression, "start") or "1"
            increment = self.sql(expression, "increment") or "1"
            return f"IDENTITY({start}, {increment})"

        def boolean_sql(self, expression: exp.Boolean) -> str:
            # a boolean value is BIT 1/0; where a condition stands, a comparison that holds or not
            if _in_condition(expression):
                return "(1 = 1)" if expression.this else "(1 = 0)"
            return "1" if expression.this else "0"

        def is_sql(self, expression: exp.Is) -> str:
            # x IS TRUE / IS FALSE on a BIT: x = 1 / x = 0 (x IS NOT TRUE: x <> 1, NULL for a NULL x;
            # dbdl's generic SQL writes none of these)
            if isinstance(expression.expression, exp.Boolean):
                return self.binary(expression, "<>" if expression.args.get("negate") else "=")
            return super().is_sql(expression)

        def identifier_sql(self, expression: exp.Identifier) -> str:
            # a reserved word as a name (dbdl.datasets.uid): quoted, in the case an unquoted name folds to
            if not expression.quoted and expression.name.lower() in RESERVED:
                return f'"{expression.name.upper()}"'
            return super().identifier_sql(expression)

        def insert_sql(self, expression: exp.Insert) -> str:
            # INSERT … ON CONFLICT (keys) DO NOTHING | DO UPDATE SET …: DM8's MERGE INTO
            if expression.args.get("conflict") is not None:
                return self.sql(merge_of_upsert(expression))
            return super().insert_sql(expression)


#: DM8's own procedural text (a PL/SQL block, a stored function's or procedure's DDL): sqlglot
#: cannot parse it (it would cut it at its first ";"), and it holds nothing of dbdl's generic SQL
_PROCEDURAL = re.compile(r"\s*(BEGIN|DECLARE|CREATE\s+(OR\s+REPLACE\s+)?(FUNCTION|PROCEDURE|TRIGGER|PACKAGE|TYPE))\b",
                         re.I)


@functools.lru_cache(maxsize=4096)
def render(sql: str) -> str:
    """``sql`` (one statement, dbdl's generic SQL or DM8's own) as DM8 takes it. DM8's procedural
    text (``BEGIN … END;``, ``CREATE OR REPLACE FUNCTION …``) is returned as written; more than one
    statement is refused (ValueError) rather than cut to the first."""
    if _PROCEDURAL.match(sql):
        return sql
    trees = [t for t in sqlglot.parse(sql, read=DbdlDM8) if t is not None]
    if len(trees) != 1:
        raise ValueError(f"render takes one statement, got {len(trees)}: {sql[:80]!r}")
    return trees[0].sql(dialect=DbdlDM8)


def split_script(script: str) -> list[str]:
    """The statements of a migration file of migrations/dm8/: each ends with ``;`` at the end of a
    line, except a PL/SQL block (``BEGIN … END;``), which ends with a line holding only ``/`` (the
    convention of DM's disql). Comment lines (``--``) are dropped."""
    statements, current, block = [], [], False
    for line in script.splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("--")):
            continue
        if stripped == "/":
            if current:
                statements.append("\n".join(current).strip())
            current, block = [], False
            continue
        if not current and stripped.upper().split(None, 1)[0] in ("BEGIN", "DECLARE"):
            block = True
        current.append(line)
        if not block and stripped.endswith(";"):
            statements.append("\n".join(current).strip().rstrip(";").strip())
            current = []
    if current and "\n".join(current).strip():
        statements.append("\n".join(current).strip().rstrip(";").strip() if not block else "\n".join(current).strip())
    return statements


_NO_ARRAYS = ("DM8 has no array columns: a feature vector is one column per feature, as in "
              "predict('m', c0, c1, c2, c3)")


class _NoArrays(str):
    """A spelling of the array path (one array column per feature vector) that DM8 does not have:
    formatting it raises, and as SQL text it names a function DM8 does not know."""

    def __new__(cls, what: str):
        return super().__new__(cls, f"dbdl_dm8_has_no_array_{what}")

    def format(self, *args, **kwargs):  # noqa: A003 - str.format is what the builder calls
        raise NotImplementedError(_NO_ARRAYS)


def _no_null_elements(features: exp.Expression) -> exp.Expression:
    raise NotImplementedError(_NO_ARRAYS)


def _fail(message: exp.Expression, features: exp.Expression) -> exp.Expression:
    # dbdl.fail(message) raises (migrations/dm8/: RAISE_APPLICATION_ERROR); it stands in CASE
    # branches beside DOUBLE values, so it is declared to return DOUBLE
    return exp.Anonymous(this="dbdl.fail", expressions=[message])


#: one value as JSON number text: Oracle's scientific format model, sign position, 1 digit, 8
#: decimals, exponent (' 1.25000000E-01', '-3.00000000E+00'): 9 significant digits give a float32
#: back exactly; json reads the blank before a positive number as whitespace. NULL -> null.
_JSON_NUMBER = "NVL(TO_CHAR(v, '9.99999999EEEE'), 'null')"

RELATIONAL = RelationalSQL(
    # the array path does not exist on DM8 (wide calls: helper "wide" adds the per-column input)
    unnest=_NoArrays("unnest"),
    length=_NoArrays("length"),
    no_null_elements=_no_null_elements,
    # predict_array: the text of a JSON array, '[ 5.00000000E-01,-1.25000000E+00]', in position order
    collect=f"'[' || LISTAGG({_JSON_NUMBER}, ',') WITHIN GROUP (ORDER BY i) || ']'",
    # predict_class: the least i among the largest v (numpy's first maximum); a NULL v ranks last
    argmax="MIN(i) KEEP (DENSE_RANK FIRST ORDER BY v DESC NULLS LAST)",
    real="REAL",  # DM8's REAL: binary precision 24, a float32
    fail=_fail,
    # DM8 divides integers by truncating (unless CALC_AS_DECIMAL is set, when it gives a decimal):
    # FLOOR of either is the index along an axis of the non-negative positions; BIGINT keeps i whole
    int_div="CAST(FLOOR({a} / {b}) AS BIGINT)",
    int_mod="MOD({a}, {b})",
    avg="AVG",
    # decimal constants (tree thresholds, 1e300) as DOUBLE: compared and computed in double precision
    # with the DOUBLE activations, not as DM8's NUMERIC literals (38 digits at most, so 1e300 would
    # not fit, and a DOUBLE compared with a NUMERIC converts one of them)
    typed_decimals=True,
    # number: None. It numbers array vectors (dbdl_f); wide vectors are numbered by helper "wide"
    # with ROW_NUMBER() OVER (ORDER BY every feature column), as Oracle's grammar asks an ORDER BY
)
