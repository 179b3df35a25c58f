"""One blueprint per area; shared rendering helpers."""
from flask import render_template
from flask_wtf.csrf import CSRFError

from . import auth, portals, servers, users


def init_app(app) -> None:
    for blueprint in (auth.bp, portals.bp, servers.bp, users.bp):
        app.register_blueprint(blueprint)
    app.register_error_handler(403, _error(403, "You may not do this", "Your role in this portal does not allow it."))
    app.register_error_handler(404, _error(404, "Not found", "There is nothing here, or you may not see it."))
    app.register_error_handler(CSRFError, _csrf_error)


def _error(status: int, title: str, text: str):
    def handler(_error):
        return render_template("error.html", title=title, text=text), status
    return handler


def _csrf_error(error):
    text = f"{error.description} Reload the page and try again."
    return render_template("error.html", title="The form expired", text=text), 400
