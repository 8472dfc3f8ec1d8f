"""The pure decisions: typed values, the planner and the semver rules. No I/O here."""
