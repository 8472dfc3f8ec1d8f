"""HTTP service that starts helmsman as a one-off Job from the helmsman CronJob."""
