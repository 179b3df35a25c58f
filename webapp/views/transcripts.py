"""A server's SMTP transcripts (admins): the newest first, a page at a time, read from instance/logs/."""
from flask import Blueprint, abort, render_template, request
from flask_login import login_required

from .. import checks, mailservers
from ..models import Role
from ..security import load_portal

bp = Blueprint("transcripts", __name__, url_prefix="/p/<slug>/servers")
PAGE = 20  # transcripts per page
MAX_SKIP = 10_000  # the files hold far fewer; a larger "skip" is not a page


@bp.get("/<id:server_id>/transcripts")
@login_required
def index(slug, server_id):
    portal = load_portal(slug, Role.ADMIN)
    server = mailservers.get_server(portal, server_id)
    if server is None:
        abort(404)
    skip = request.args.get("skip", "0")
    skip = int(skip) if skip.isdigit() and int(skip) <= MAX_SKIP else 0
    found = checks.transcripts_of(server.id).last(skip + PAGE + 1)
    return render_template("transcripts/index.html", server=server, transcripts=found[skip:skip + PAGE],
                           older=skip + PAGE if len(found) > skip + PAGE else None,
                           newer=max(skip - PAGE, 0) if skip else None)
