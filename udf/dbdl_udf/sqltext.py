"""SQL text the server's Python builds or checks without a parser (PL/Python has no sqlglot).

``quote_ident`` / ``quote_qualified``: every identifier dbdl reads back from its catalog (a
dataset's table and view) goes into SQL quoted, by one rule for both backends (a double-quoted
identifier, inner quotes doubled). ``statements`` / ``one_statement``: PostgreSQL's lexical rules
for where one statement ends, so that a procedure given a query refuses stacked statements
(``SELECT ...; DROP TABLE t``) before it runs anything.
"""

from __future__ import annotations

from .errors import InvalidName, QueryError


def quote_ident(name: str) -> str:
    """``name`` as a quoted SQL identifier: ``quote_ident('a"b') == '"a""b"'`` (PostgreSQL and
    DuckDB read it back as exactly ``name``)."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise InvalidName(f"{name!r} cannot be an SQL identifier; names are non-empty text without NUL")
    return '"' + name.replace('"', '""') + '"'


def quote_qualified(name: str) -> str:
    """A ``schema.relation`` name (as dbdl's catalog stores it, split at the first dot) quoted part
    by part: ``quote_qualified('dbdl_data.ds_x_v1') == '"dbdl_data"."ds_x_v1"'``; a name without a
    dot is quoted whole."""
    schema, dot, relation = name.partition(".") if isinstance(name, str) else (name, "", "")
    return f"{quote_ident(schema)}.{quote_ident(relation)}" if dot else quote_ident(schema)


def statements(sql: str) -> list[str]:
    """The statements of ``sql`` as PostgreSQL's lexer splits them: at each ``;`` outside string
    literals ('…', E'…' with backslash escapes), quoted identifiers ("…"), dollar quotes
    ($tag$…$tag$), line comments (-- …) and nested block comments (/* … */). Statements holding
    only blanks and comments are dropped; each one keeps its own text (without the ``;``)."""
    out: list[str] = []
    start = i = 0
    n = len(sql)
    content = False  # the current statement has something besides blanks and comments

    def ident_char(c: str) -> bool:
        return c.isalnum() or c in "_$"

    while i < n:
        c = sql[i]
        if c == "-" and sql.startswith("--", i):
            end = sql.find("\n", i)
            i = n if end < 0 else end + 1
            continue
        if c == "/" and sql.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if sql.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif sql.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
            continue
        if c == ";":
            if content:
                out.append(sql[start:i])
            start, i, content = i + 1, i + 1, False
            continue
        if c.isspace():
            i += 1
            continue
        content = True
        if c == "'":
            escapes = i > 0 and sql[i - 1] in "eE" and (i < 2 or not ident_char(sql[i - 2]))
            i += 1
            while i < n:
                if escapes and sql[i] == "\\":
                    i += 2
                elif sql[i] == "'":
                    if sql.startswith("''", i):
                        i += 2
                    else:
                        i += 1
                        break
                else:
                    i += 1
            continue
        if c == '"':
            i += 1
            while i < n:
                if sql.startswith('""', i):
                    i += 2
                elif sql[i] == '"':
                    i += 1
                    break
                else:
                    i += 1
            continue
        if c == "$" and (i == 0 or not ident_char(sql[i - 1])):
            j = i + 1
            while j < n and (sql[j].isalpha() or sql[j] == "_" or (j > i + 1 and sql[j].isdigit())):
                j += 1
            if j < n and sql[j] == "$":  # $tag$ … $tag$ ($1 is a parameter, not a quote)
                tag = sql[i:j + 1]
                end = sql.find(tag, j + 1)
                i = n if end < 0 else end + len(tag)
                continue
        i += 1
    if content:
        out.append(sql[start:])
    return out


def one_statement(query: str, what: str) -> str:
    """``query`` when it is one statement (a trailing ``;`` dropped), else QueryError: the one check
    of every procedure that runs a caller's query (``train_export``, ``predict_into``)."""
    found = statements(query)
    if len(found) != 1:
        raise QueryError(
            f"{what}'s source query must be one SELECT statement (it may use WITH, joins and UNION); this text "
            + ("holds no statement" if not found else f"holds {len(found)} statements separated by ';'")
            + " — pass a single query, and run any other statement on its own")
    return found[0]
