from wtforms import EmailField, PasswordField
from wtforms.validators import InputRequired

from .base import BaseForm


class LoginForm(BaseForm):
    email = EmailField("Email", validators=[InputRequired()])
    password = PasswordField("Password", validators=[InputRequired()])
