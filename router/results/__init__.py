"""The experiment results store: exposure and outcome events in a real database (SQLite for one
router, PostgreSQL for a fleet), written off the request path, joined and aggregated per unit
then per arm when a report is asked for."""
