"""gunicorn settings, read from the working folder: `gunicorn wsgi:app` needs no flags.

They live in the package (rm_flask/gunicorn_conf.py), so that an installed RedMessenger
has them too: `gunicorn -c python:rm_flask.gunicorn_conf rm_flask.wsgi:app`.
"""

from rm_flask.gunicorn_conf import *  # noqa: F403
