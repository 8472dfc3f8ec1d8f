"""The daemon's HTTP side: health, readiness and metrics (later webhooks and the status page)."""
