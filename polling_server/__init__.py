"""Polls GitHub (or any git remote) and a Helm repository; builds images and requests helmsman applies."""
