"""Asking the Helm API to run helmsman: the client and the durable sender of apply requests."""
