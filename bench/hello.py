"""The baseline: a hello-world Flask app, served by bench/run.py under Mailroom's gunicorn settings.

Whatever Mailroom costs on top of Flask + gunicorn + wrk on this machine shows as the ratio
of its figures to this app's.
"""
from flask import Flask

app = Flask(__name__)


@app.get("/")
def index():
    return "Hello, World!"
