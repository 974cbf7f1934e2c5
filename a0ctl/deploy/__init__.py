"""Deployment beyond one machine: checking deploy/kubernetes offline (``a0ctl deploy validate``)."""
