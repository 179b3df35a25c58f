from wtforms import EmailField
from wtforms.validators import InputRequired

from .base import BaseForm
from .validators import email_address


class SampleForm(BaseForm):
    recipient = EmailField("Send the sample mail to", validators=[InputRequired(), email_address])
