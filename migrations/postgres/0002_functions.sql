-- dbdl 0002 (PostgreSQL): the SQL functions, as PL/Python trampolines into udf/dbdl_udf.
--
-- Everything that touches dbdl's tables runs SECURITY DEFINER with a pinned search_path, so
-- ordinary users need no rights on the tables. predict_into is the exception: it runs the
-- caller's query and writes the caller's table, so it runs with the caller's rights and reads the
-- registry through SECURITY DEFINER helpers (running a user's SQL text as the definer would hand
-- every caller the owner's privileges).

CREATE EXTENSION IF NOT EXISTS plpython3u;

-- Puts the stored python_path on sys.path and keeps dbdl_udf.postgres in GD (once per session).
CREATE OR REPLACE FUNCTION dbdl._bootstrap() RETURNS text
LANGUAGE plpython3u SECURITY DEFINER SET search_path = pg_catalog, dbdl, pg_temp AS $$
if "dbdl" not in GD:
    import json, sys
    rows = plpy.execute("SELECT value FROM dbdl.settings WHERE key = 'python_path'")
    paths = json.loads(rows[0]["value"]) if rows else []
    for path in reversed(paths):
        if path not in sys.path:
            sys.path.insert(0, path)
    try:
        import dbdl_udf.postgres
    except ImportError as exc:
        plpy.error("dbdl.ConfigurationError: the server's Python cannot import dbdl_udf (%s); python_path is %s"
                   % (exc, paths), sqlstate="55000", hint="run `dbdl migrate <url>` from a machine whose dbdl and onnxruntime the "
                   "server can read, or `dbdl doctor <url>` to see why")
    GD["dbdl"] = dbdl_udf.postgres
return GD["dbdl"].__file__
$$;

-- What the server's Python sees: JSON with versions and import errors (dbdl doctor reads it).
CREATE OR REPLACE FUNCTION dbdl.doctor() RETURNS text
LANGUAGE plpython3u SECURITY DEFINER SET search_path = pg_catalog, dbdl, pg_temp AS $$
import json, os, sys
report = {"python": sys.version, "executable": sys.executable, "user": os.environ.get("USER"), "uid": os.getuid()}
rows = plpy.execute("SELECT value FROM dbdl.settings WHERE key = 'python_path'")
paths = json.loads(rows[0]["value"]) if rows else []
report["python_path"] = paths
report["readable"] = {p: os.access(p, os.R_OK | os.X_OK) for p in paths}
for p in reversed(paths):
    if p not in sys.path:
        sys.path.insert(0, p)
for module in ("numpy", "onnxruntime", "onnx", "dbdl_udf"):
    try:
        m = __import__(module)
        report[module] = getattr(m, "__version__", None) or getattr(m, "__file__", "ok")
    except Exception as exc:
        report[module] = None
        report[module + "_error"] = "%s: %s" % (type(exc).__name__, exc)
return json.dumps(report)
$$;

-- This server process's onnxruntime sessions: {"builds": n, "cached": n} (sessions are built once
-- per process and model version, and kept for the life of the connection).
CREATE OR REPLACE FUNCTION dbdl.runtime_stats() RETURNS text
LANGUAGE plpython3u SECURITY DEFINER SET search_path = pg_catalog, dbdl, pg_temp AS $$
if "dbdl" not in GD: plpy.execute("SELECT dbdl._bootstrap()")
import json
cache = GD["dbdl"].SESSIONS
return json.dumps({"builds": cache.builds, "cached": len(cache._items)})
$$;

-- The registry, readable by definer helpers (used by predict_into, which runs as the caller).
CREATE OR REPLACE FUNCTION dbdl.resolve_model(ref text,
    OUT name text, OUT version integer, OUT sha256 text, OUT signature text)
LANGUAGE plpython3u STABLE SECURITY DEFINER SET search_path = pg_catalog, dbdl, pg_temp AS $$
if "dbdl" not in GD: plpy.execute("SELECT dbdl._bootstrap()")
return GD["dbdl"].resolve_row(plpy, ref)
$$;

CREATE OR REPLACE FUNCTION dbdl.model_bytes(sha text) RETURNS bytea
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, dbdl, pg_temp AS $$
    SELECT bytes FROM dbdl.blobs WHERE sha256 = sha
$$;

-- predict: one value per row; predict_array: the output row; predict_class: its arg-max.
-- PARALLEL UNSAFE: PL/Python runs each SPI query in a subtransaction, which PostgreSQL forbids
-- inside parallel plans; a large table would otherwise fail as soon as the planner goes parallel.
-- Features: any numeric array (real[], double precision[], integer[], ...) or bytea holding
-- little-endian float32. The public functions are inlinable SQL wrappers: a numeric array crosses
-- into Python as array_send() bytes (decoded by numpy), never as a Python list.
CREATE OR REPLACE FUNCTION dbdl.predict_scalar(model text, data bytea, packed boolean) RETURNS real
LANGUAGE plpython3u STABLE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, dbdl, pg_temp AS $$
if "dbdl" not in GD: plpy.execute("SELECT dbdl._bootstrap()")
return GD["dbdl"].predict(plpy, model, data, packed, "scalar")
$$;

CREATE OR REPLACE FUNCTION dbdl.predict_vector(model text, data bytea, packed boolean) RETURNS real[]
LANGUAGE plpython3u STABLE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, dbdl, pg_temp AS $$
if "dbdl" not in GD: plpy.execute("SELECT dbdl._bootstrap()")
return GD["dbdl"].predict(plpy, model, data, packed, "array")
$$;

CREATE OR REPLACE FUNCTION dbdl.predict_argmax(model text, data bytea, packed boolean) RETURNS bigint
LANGUAGE plpython3u STABLE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, dbdl, pg_temp AS $$
if "dbdl" not in GD: plpy.execute("SELECT dbdl._bootstrap()")
return GD["dbdl"].predict(plpy, model, data, packed, "class")
$$;

CREATE OR REPLACE FUNCTION public.predict(model text, features anyarray) RETURNS real
LANGUAGE sql STABLE PARALLEL UNSAFE AS $$ SELECT dbdl.predict_scalar(model, array_send(features), true) $$;
CREATE OR REPLACE FUNCTION public.predict(model text, features bytea) RETURNS real
LANGUAGE sql STABLE PARALLEL UNSAFE AS $$ SELECT dbdl.predict_scalar(model, features, false) $$;
CREATE OR REPLACE FUNCTION public.predict_array(model text, features anyarray) RETURNS real[]
LANGUAGE sql STABLE PARALLEL UNSAFE AS $$ SELECT dbdl.predict_vector(model, array_send(features), true) $$;
CREATE OR REPLACE FUNCTION public.predict_array(model text, features bytea) RETURNS real[]
LANGUAGE sql STABLE PARALLEL UNSAFE AS $$ SELECT dbdl.predict_vector(model, features, false) $$;
CREATE OR REPLACE FUNCTION public.predict_class(model text, features anyarray) RETURNS bigint
LANGUAGE sql STABLE PARALLEL UNSAFE AS $$ SELECT dbdl.predict_argmax(model, array_send(features), true) $$;
CREATE OR REPLACE FUNCTION public.predict_class(model text, features bytea) RETURNS bigint
LANGUAGE sql STABLE PARALLEL UNSAFE AS $$ SELECT dbdl.predict_argmax(model, features, false) $$;

-- The fast path: score a whole query inside the server in large batches.
--   CALL predict_into('fraud', 'SELECT id, feats FROM txns', 'fraud_scores');
-- The query returns (key, features); the target gets (key, prediction) and is created if missing.
CREATE OR REPLACE PROCEDURE public.predict_into(model text, query text, target text,
                                                kind text DEFAULT 'array', batch_rows integer DEFAULT 8192)
LANGUAGE plpython3u AS $$
if "dbdl" not in GD: plpy.execute("SELECT dbdl._bootstrap()")
GD["dbdl"].predict_into(plpy, model, query, target, kind, batch_rows)
$$;

-- Registration and administration from SQL (dbdl_admin only).
CREATE OR REPLACE FUNCTION dbdl.register_model(name text, onnx bytea, description text DEFAULT NULL,
                                               promote boolean DEFAULT true) RETURNS integer
LANGUAGE plpython3u VOLATILE SECURITY DEFINER SET search_path = pg_catalog, dbdl, pg_temp AS $$
if "dbdl" not in GD: plpy.execute("SELECT dbdl._bootstrap()")
return GD["dbdl"].register_model(plpy, name, onnx, description, promote)
$$;

CREATE OR REPLACE FUNCTION dbdl.drop_model(name text, version integer DEFAULT NULL) RETURNS integer
LANGUAGE plpython3u VOLATILE SECURITY DEFINER SET search_path = pg_catalog, dbdl, pg_temp AS $$
if "dbdl" not in GD: plpy.execute("SELECT dbdl._bootstrap()")
return GD["dbdl"].admin(plpy, "drop", name, version)
$$;

CREATE OR REPLACE FUNCTION dbdl.promote_model(name text, version integer) RETURNS integer
LANGUAGE plpython3u VOLATILE SECURITY DEFINER SET search_path = pg_catalog, dbdl, pg_temp AS $$
if "dbdl" not in GD: plpy.execute("SELECT dbdl._bootstrap()")
return GD["dbdl"].admin(plpy, "promote", name, version)
$$;

CREATE OR REPLACE FUNCTION dbdl.rollback_model(name text) RETURNS integer
LANGUAGE plpython3u VOLATILE SECURITY DEFINER SET search_path = pg_catalog, dbdl, pg_temp AS $$
if "dbdl" not in GD: plpy.execute("SELECT dbdl._bootstrap()")
return GD["dbdl"].admin(plpy, "rollback", name, None)
$$;

CREATE OR REPLACE FUNCTION dbdl.list_models()
RETURNS TABLE (name text, version integer, serving boolean, source text, n_features integer,
               n_params bigint, flops_per_row bigint, size_bytes bigint, sha256 text, description text,
               created_at timestamptz)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, dbdl, pg_temp AS $$
    SELECT name, version, serving, source, n_features, n_params, flops_per_row, size_bytes, sha256, description,
           created_at
    FROM dbdl.model_catalog ORDER BY name, version
$$;

-- Who may call what.
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA dbdl FROM PUBLIC;
REVOKE ALL ON FUNCTION public.predict(text, anyarray), public.predict(text, bytea),
    public.predict_array(text, anyarray), public.predict_array(text, bytea),
    public.predict_class(text, anyarray), public.predict_class(text, bytea)
    FROM PUBLIC;
REVOKE ALL ON PROCEDURE public.predict_into(text, text, text, text, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.predict(text, anyarray), public.predict(text, bytea),
    public.predict_array(text, anyarray), public.predict_array(text, bytea),
    public.predict_class(text, anyarray), public.predict_class(text, bytea),
    dbdl.predict_scalar(text, bytea, boolean), dbdl.predict_vector(text, bytea, boolean),
    dbdl.predict_argmax(text, bytea, boolean),
    dbdl._bootstrap(), dbdl.resolve_model(text), dbdl.model_bytes(text), dbdl.list_models(),
    dbdl.runtime_stats() TO dbdl_user;
GRANT EXECUTE ON PROCEDURE public.predict_into(text, text, text, text, integer) TO dbdl_user;
GRANT EXECUTE ON FUNCTION dbdl.register_model(text, bytea, text, boolean), dbdl.drop_model(text, integer),
    dbdl.promote_model(text, integer), dbdl.rollback_model(text), dbdl.doctor() TO dbdl_admin;
