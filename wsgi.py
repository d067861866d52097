"""The WSGI entry point for gunicorn:

    gunicorn -k geventwebsocket.gunicorn.workers.GeventWebSocketWorker -w 1 wsgi:app

gunicorn's gevent worker has monkey-patched the process before it imports this module.
"""

from rm_flask import create_app

app = create_app(async_mode="gevent")
