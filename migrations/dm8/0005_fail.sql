-- dbdl 0005 (DM8): raise a dbdl error from plain SQL. Relation-centric SQL checks what it cannot
-- compute (feature counts, say) with CASE WHEN <bad> THEN dbdl.fail('dbdl.ShapeMismatch: ...')
-- ELSE <value> END; the backend turns "dbdl.<ErrorClass>: message" in the DM error back into that
-- dbdl error. It returns DOUBLE so that it fits a CASE branch of the numeric values around it
-- (it never returns: RAISE_APPLICATION_ERROR leaves the function).
--
-- The function is created by EXECUTE IMMEDIATE inside a block: its body holds `;` at line ends,
-- which the file convention (split_script) would otherwise take for the end of the statement.
-- CREATE OR REPLACE makes it re-runnable. Function parameters take VARCHAR without a length,
-- as in Oracle's PL/SQL.
BEGIN
    EXECUTE IMMEDIATE 'CREATE OR REPLACE FUNCTION dbdl.fail(msg VARCHAR) RETURN DOUBLE
AS
BEGIN
    RAISE_APPLICATION_ERROR(-20001, msg);
    RETURN NULL;
END;';
END;
/

GRANT EXECUTE ON dbdl.fail TO DBDL_USER;
