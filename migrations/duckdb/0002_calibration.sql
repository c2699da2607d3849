-- dbdl 0002: constants of the planner's cost model, measured on this machine by `dbdl calibrate`.
CREATE TABLE IF NOT EXISTS dbdl.calibration (
    key         VARCHAR   PRIMARY KEY,
    value       DOUBLE    NOT NULL,
    measured_at TIMESTAMP NOT NULL DEFAULT current_timestamp
);
