"""Serving: nginx in front of gunicorn + flask, answering /ping and /invocations."""
