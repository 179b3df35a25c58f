"""The Mail Queue page (staff read, admins act), a message's page, and the delivery banner that
every portal page shows."""
import logging
from functools import partial

from flask import Blueprint, abort, flash, g, redirect, render_template, request, url_for
from flask_login import login_required
from sqlalchemy.exc import SQLAlchemyError

from .. import db, mailqueue, queue_actions
from ..forms.queue import STATE_LABELS, QueueFilterForm
from ..models import Role, utcnow
from ..queue_actions import Action
from ..security import current_actor, load_portal
from .render import page_or_fragment

bp = Blueprint("queue", __name__, url_prefix="/p/<slug>/queue")
log = logging.getLogger(__name__)

DONE = {Action.RETRY: "The message is due now: a worker sends it next.",
        Action.RELEASE: "Released: the message is queued again and goes out next.",
        Action.REQUEUE: "Requeued: the message is tried again from its first attempt, with a new lifetime.",
        Action.DELETE: "Deleted the message."}
DONE_MANY = {Action.RETRY: "{n} due now: workers send them next.",
             Action.RELEASE: "Released {n}: queued again, they go out next.",
             Action.REQUEUE: "Requeued {n}: tried again from their first attempt, with a new lifetime.",
             Action.DELETE: "Deleted {n}."}
VERBS = {Action.RETRY: "Retry now", Action.RELEASE: "Release", Action.REQUEUE: "Requeue", Action.DELETE: "Delete"}
NOT_NOW = {Action.RETRY: "Nothing changed: the message is no longer queued.",
           Action.RELEASE: "Nothing changed: the message is no longer held.",
           Action.REQUEUE: "Nothing changed: the message is no longer failed (or its content was purged).",
           Action.DELETE: "Nothing changed: a worker is sending this message right now. Try again in a moment."}


@bp.context_processor
def _words():
    return {"state_labels": STATE_LABELS, "verbs": VERBS}


@bp.app_context_processor
def _banner():
    return {"delivery_banner": _delivery_banner}


def _delivery_banner():
    """For base.html: what the portal's pages say about delivery (one query, only on portal pages)."""
    portal = g.get("portal")
    if portal is None:
        return None
    try:
        return mailqueue.banner(portal)
    except SQLAlchemyError as error:  # the error page of a database that refuses: without the banner
        db.session().rollback()
        log.warning("the delivery banner could not be read: %s", error.__class__.__name__)
        return None


@bp.get("/")
@login_required
def index(slug):
    portal = load_portal(slug)
    servers = mailqueue.server_labels(portal)
    form = QueueFilterForm(request.args, servers)
    if not form.validate():
        return _queue_page(portal, form, servers, None, 422)
    page = mailqueue.page_of(portal, form.chosen(), int(form.size.data), request.args.get("page"))
    return _queue_page(portal, form, servers, page)


def _queue_page(portal, form, servers, page, status=200):
    """The whole page (counts, chart, filter, list); to htmx (a filter or another page of it), the
    filter and the list. URLs are built once here, not per row."""
    base = url_for("queue.index", slug=portal.slug)
    args = form.query_args() if page is not None else {}
    links = {"next": page and page.next and url_for("queue.index", slug=portal.slug, **args, page=page.next),
             "previous": page and page.previous and url_for("queue.index", slug=portal.slug, **args,
                                                           page=page.previous),
             "bulk": {action: url_for("queue.bulk", slug=portal.slug, action=action.value, **args)
                      for action in Action}}
    # The counts and the chart are read only for the whole page (the template calls them).
    return page_or_fragment("queue/index.html", "queue/_queue.html", status, form=form, listing=page, servers=servers,
                            base=base, links=links, counts_of=partial(mailqueue.counts, portal),
                            chart_of=partial(mailqueue.hourly, portal, utcnow()))


@bp.get("/<id:mail_id>")
@login_required
def message(slug, mail_id):
    portal = load_portal(slug)
    mail = _mail_or_404(portal, mail_id)
    return render_template("queue/message.html", mail=mail, servers=mailqueue.server_labels(portal),
                           attempts=mailqueue.attempts_of(mail),
                           headers=mailqueue.headers_of(mail.raw) if mail.raw is not None else None,
                           actions=[a for a in Action if queue_actions.applies(a, mail.state)],
                           attempt_limit=mailqueue.ATTEMPT_LIMIT)


@bp.post("/<id:mail_id>/<any(retry, release, requeue):action>")
@login_required
def act(slug, mail_id, action):
    portal = load_portal(slug, Role.ADMIN)
    mail = _mail_or_404(portal, mail_id)
    action = Action(action)
    done = queue_actions.apply(current_actor(), portal, mail, action, utcnow())
    flash(DONE[action] if done else NOT_NOW[action])
    return redirect(url_for("queue.message", slug=slug, mail_id=mail_id), 303)


@bp.route("/<id:mail_id>/delete", methods=["GET", "POST"])
@login_required
def delete(slug, mail_id):
    portal = load_portal(slug, Role.ADMIN)
    mail = _mail_or_404(portal, mail_id)
    if request.method == "GET":
        return render_template("queue/confirm.html", action=Action.DELETE, mail=mail,
                               cancel=url_for("queue.message", slug=slug, mail_id=mail_id))
    if queue_actions.apply(current_actor(), portal, mail, Action.DELETE, utcnow()):
        flash(DONE[Action.DELETE])
        return redirect(url_for("queue.index", slug=slug), 303)
    flash(NOT_NOW[Action.DELETE])
    return redirect(url_for("queue.message", slug=slug, mail_id=mail_id), 303)


@bp.route("/bulk/<any(retry, release, requeue, delete):action>", methods=["GET", "POST"])
@login_required
def bulk(slug, action):
    """For every message the filter selects: a confirmation that says how many, then the change."""
    portal = load_portal(slug, Role.ADMIN)
    action = Action(action)
    servers = mailqueue.server_labels(portal)
    form = QueueFilterForm(request.args if request.method == "GET" else request.form, servers)
    if not form.validate():
        return _queue_page(portal, form, servers, None, 422)
    chosen, args = form.chosen(), form.query_args()
    described = chosen.describe(servers)
    if request.method == "GET":
        return render_template("queue/confirm.html", action=action, count=queue_actions.count(portal, action, chosen),
                               described=described, args=args, noun=queue_actions.KINDS[action].noun,
                               cancel=url_for("queue.index", slug=slug, **args))
    done = queue_actions.apply_to_filter(current_actor(), portal, action, chosen, described, utcnow())
    flash(DONE_MANY[action].format(n=f"{done:,} message" + ("" if done == 1 else "s")) if done else
          "Nothing changed: none of the messages this filter selects could be changed (any more).")
    return redirect(url_for("queue.index", slug=slug, **args), 303)


def _mail_or_404(portal, mail_id):
    mail = mailqueue.get_mail(portal, mail_id)
    if mail is None:
        abort(404)
    return mail
