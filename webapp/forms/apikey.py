from wtforms import StringField
from wtforms.validators import InputRequired, Length

from .base import BaseForm


class ApiKeyForm(BaseForm):
    name = StringField("Name", validators=[InputRequired(), Length(max=100)],
                       description="What uses the key, e.g. “Ticket system”: you will see it in lists and History.")
