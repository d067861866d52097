"""The WSGI entry point for gunicorn:

    gunicorn -k geventwebsocket.gunicorn.workers.GeventWebSocketWorker -w 1 wsgi:app

gunicorn's gevent worker has monkey-patched the process before it imports this module.
"""

from rm_flask.wsgi import make_app

app = make_app()
