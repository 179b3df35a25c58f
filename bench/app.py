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
- POST /api/v1/bench-floor/<slug> (bench/delivery.py, the API's floor): the cheapest
  authenticated API route there could be. It stands where the API's routes stand (the
  sessionless /api/ path: no session, no cookie, no CSRF), runs the API's own key check
  (`api._authorize`: the Bearer key looked up by its hash, its portal, its use noted) and the
  API's per-key rate limit (`api.per_key`), reads the body as the API reads it (`api._body`,
  size-limited), and answers 202 with an empty JSON object. What POST .../messages costs above
  it is validating, building, storing, committing and queueing the message.
"""
import os
import time

from flask import Blueprint, current_app, request
from flask_login import login_required

import webapp
from webapp.models import Role
from webapp.security import load_portal
from webapp.sessions import SESSIONLESS_PATH
from webapp.views import api

floor = Blueprint("bench_floor", __name__)
api_floor = Blueprint("bench_api_floor", __name__, url_prefix=SESSIONLESS_PATH + "v1")
api_floor.before_request(api._authorize)
api_floor.register_error_handler(api.ApiError, api._api_error)


@api_floor.post("/bench-floor/<slug>")
@api.per_key
def api_portal_floor(slug):
    api._body()
    return current_app.response_class("{}", status=202, mimetype="application/json")


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
    app.register_blueprint(api_floor)
    app.extensions["csrf"].exempt(api_floor)  # as the API's blueprint is: the key authorizes, not a session
    app.wsgi_app = _AppTime(app.wsgi_app)
    return app
