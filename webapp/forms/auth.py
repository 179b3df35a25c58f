from wtforms import EmailField, PasswordField
from wtforms.validators import EqualTo, InputRequired, Length

from .base import BaseForm


class LoginForm(BaseForm):
    email = EmailField("Email", validators=[InputRequired()])
    password = PasswordField("Password", validators=[InputRequired()])


class PasswordForm(BaseForm):
    current = PasswordField("Current password", validators=[InputRequired()])
    new = PasswordField("New password", validators=[InputRequired(), Length(min=10, message="Use at least 10 characters.")])
    confirm = PasswordField("Confirm the new password", validators=[EqualTo("new", "The passwords do not match.")])
