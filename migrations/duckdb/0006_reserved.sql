-- placeholder: number 0006 is another helper's migration of issue 14 (the train branch needs no gap
-- before its 0007); drop this file when that migration is merged.
SELECT 1;
