"""Full page or fragment: decided here, once, for every view (security.py sends Vary: HX-Request)."""
from flask import render_template, request


def page_or_fragment(page: str, fragment: str, status: int = 200, **context):
    """The fragment for an htmx request, the whole page otherwise (history restores too)."""
    htmx = request.htmx
    template = fragment if htmx and not htmx.history_restore_request else page
    return render_template(template, **context), status
