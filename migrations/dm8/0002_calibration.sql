-- dbdl 0002 (DM8): constants of the planner's cost model, measured by `dbdl calibrate`.
-- Re-runnable, like every DM8 migration (0001_registry.sql says why and how).
DECLARE
    already_exists EXCEPTION;
    PRAGMA EXCEPTION_INIT(already_exists, -2124);
BEGIN
    EXECUTE IMMEDIATE 'CREATE TABLE dbdl.calibration (
        key          VARCHAR(128) NOT NULL,
        value        DOUBLE       NOT NULL,
        measured_at  TIMESTAMP    DEFAULT SYSDATE NOT NULL,
        PRIMARY KEY (key)
    )';
EXCEPTION
    WHEN already_exists THEN
        NULL;
END;
/
