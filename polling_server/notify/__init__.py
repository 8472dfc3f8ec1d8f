"""Reports of what the poller did: commit statuses on GitHub and notifications, queued in the outbox and sent."""
