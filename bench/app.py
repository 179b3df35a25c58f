"""Mailroom with a bench-only blueprint: the floor every portal route stands on.

    gunicorn 'bench.app:create_app()'      (from the repository's root; bench/run.py does this)

The product is `webapp.create_app()` unchanged; this adds, for the bench only:

- GET and POST /bench-floor/<slug>: signed in (`login_required`), the portal loaded the way
  every portal route loads it (`load_portal(slug, Role.ADMIN)`, as the server page and the
  section swap do), and nothing else: an empty answer. The POST goes through the app's CSRF
  check like any other POST (CSRFProtect covers every view). What the server page or the
  section swap costs above this floor is their own work.
- An `X-Worker-Pid: <pid>` response header, only when the request asks for it with
  `X-Bench-Pid: 1`: bench/run.py counts which gunicorn worker served each request. The
  requests that are measured do not ask, so their answers are byte for byte the product's.
- An `X-App-Ms` response header, only when the request asks with `X-Bench-Time: 1`: the time
  from the WSGI call into the app to its answer's status line (everything the app does for the
  request, the session saved; not gunicorn's parsing nor the network). Goal 3 reads it: "Validate
  in the app".
"""
import os
import time

from flask import Blueprint, request
from flask_login import login_required

import webapp
from webapp.models import Role
from webapp.security import load_portal

floor = Blueprint("bench_floor", __name__)


@floor.route("/bench-floor/<slug>", methods=["GET", "POST"])
@login_required
def portal_floor(slug):
    load_portal(slug, Role.ADMIN)
    return ""


@floor.after_app_request
def _worker_pid(response):
    if request.headers.get("X-Bench-Pid") == "1":
        response.headers["X-Worker-Pid"] = str(os.getpid())
    return response


class _AppTime:
    """WSGI middleware: X-App-Ms on the answers of requests that ask for it."""

    def __init__(self, wsgi_app):
        self.wsgi_app = wsgi_app

    def __call__(self, environ, start_response):
        if environ.get("HTTP_X_BENCH_TIME") != "1":
            return self.wsgi_app(environ, start_response)
        started = time.perf_counter()

        def timed_start_response(status, headers, exc_info=None):
            headers.append(("X-App-Ms", f"{(time.perf_counter() - started) * 1000:.3f}"))
            return start_response(status, headers, exc_info)
        return self.wsgi_app(environ, timed_start_response)


def create_app():
    app = webapp.create_app()
    app.register_blueprint(floor)
    app.wsgi_app = _AppTime(app.wsgi_app)
    return app
