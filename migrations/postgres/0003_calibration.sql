-- dbdl 0003 (PostgreSQL): constants of the planner's cost model, measured by `dbdl calibrate`.
CREATE TABLE IF NOT EXISTS dbdl.calibration (
    key         text             PRIMARY KEY,
    value       double precision NOT NULL,
    measured_at timestamptz      NOT NULL DEFAULT now()
);
REVOKE ALL ON dbdl.calibration FROM PUBLIC;
GRANT SELECT ON dbdl.calibration TO dbdl_user;
GRANT SELECT, INSERT, UPDATE, DELETE ON dbdl.calibration TO dbdl_admin;
