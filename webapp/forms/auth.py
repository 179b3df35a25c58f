from wtforms import EmailField, PasswordField
from wtforms.validators import EqualTo, InputRequired, Length

from .base import BaseForm
from .validators import email_address


class LoginForm(BaseForm):
    email = EmailField("Email", validators=[InputRequired()])
    password = PasswordField("Password", validators=[InputRequired()])


class PasswordForm(BaseForm):
    current = PasswordField("Current password", validators=[InputRequired()])
    new = PasswordField("New password", validators=[InputRequired(), Length(min=10, message="Use at least 10 characters.")])
    confirm = PasswordField("Confirm the new password", validators=[EqualTo("new", "The passwords do not match.")])


class ForgotForm(BaseForm):
    email = EmailField("Email", validators=[InputRequired(), email_address, Length(max=254)],
                       description="The email you sign in with.")


class NewPasswordForm(BaseForm):
    """The same rules as a password change (PasswordForm), without the current password."""
    new = PasswordForm.new
    confirm = PasswordForm.confirm
