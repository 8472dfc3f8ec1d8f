"""Repository and chart sources: read GitHub, git remotes and Helm repositories into typed observations."""
