-- dbdl 0004 (PostgreSQL): raise a dbdl error from plain SQL (the relation-centric strategy checks
-- feature lengths with it). Returns its second argument's type so it fits any CASE branch.
CREATE OR REPLACE FUNCTION dbdl.fail(message text, like anyelement) RETURNS anyelement
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    RAISE EXCEPTION '%', message USING ERRCODE = '22023';
END
$$;
GRANT EXECUTE ON FUNCTION dbdl.fail(text, anyelement) TO dbdl_user;
