"""Carrying out builds: the worker, the Docker engine backend, source fetching and the registry client."""
