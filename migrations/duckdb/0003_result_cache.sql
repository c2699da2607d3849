-- reserved: issue 5 (result cache) lands here
SELECT 1;
