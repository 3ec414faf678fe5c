"""gunicorn's entry: ``gunicorn segcontainer.serving.wsgi:app`` (imported in each worker)."""

from segcontainer import logs
from segcontainer.serving.app import create_app

logs.configure()
app = create_app()
