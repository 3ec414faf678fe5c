"""gunicorn's entry: ``gunicorn segcontainer.serving.wsgi:app`` (imported in each worker)."""

import logging
import sys

from segcontainer.serving.app import create_app

logging.basicConfig(
    stream=sys.stdout, level=logging.INFO, format="[%(asctime)s %(levelname)s] %(message)s"
)
app = create_app()
