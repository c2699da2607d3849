-- placeholder: number 0012 is another helper's migration of issue 14 (the train branch needs no gap
-- before its 0015); drop this file when that migration is merged.
SELECT 1;
