from wtforms import StringField
from wtforms.validators import Regexp

from .base import BaseForm


class SystemMailForm(BaseForm):
    """The server chosen from the page's search ("" for none); whether it exists is systemmail.designate's
    to say."""
    server = StringField("System-mail server",
                         validators=[Regexp(r"^\d{0,10}$", message="Choose a server from the list.")])
