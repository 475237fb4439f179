"""How a job runs: a chain of stages in one process (executor), on Ray with the driver loop (runner), the checks before
Ray starts (preflight)."""
