"""The experiment results store: exposure and outcome events in a real database (SQLite for one
router, PostgreSQL for a fleet), written off the request path in batches that also keep a
per-user rollup, so a report reads one row per user however large the phase."""
