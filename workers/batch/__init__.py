"""Batch jobs: Celery tasks that run a batch file's lines through the API at low priority."""
