from wtforms import BooleanField, EmailField, PasswordField, SelectChoice, SelectField, StringField
from wtforms.validators import InputRequired, Length, Optional

from ..models import DeliveryPolicy, Role
from .base import BaseForm
from .validators import base_url, email_address, slug

ROLE_CHOICES = [SelectChoice(Role.ADMIN.value, "Admin: configures servers"),
                SelectChoice(Role.STAFF.value, "Staff: sees status, sends a sample mail")]


class PortalForm(BaseForm):
    name = StringField("Name", validators=[InputRequired(), Length(max=200)])
    slug = StringField("Slug", validators=[InputRequired(), Length(max=63), slug],
                       description="Used in addresses: /p/<slug>/. Cannot be changed later.")
    base_url = StringField("Public base URL", validators=[Length(max=2000), base_url],
                           description="The address people use to reach this portal; used for links in mails "
                                       "and for OAuth redirect URIs.")


class PortalSettingsForm(PortalForm):
    slug = None
    delivery_policy = SelectField(
        "Delivery policy", default=DeliveryPolicy.FAILOVER.value, choices=[
            SelectChoice(DeliveryPolicy.FAILOVER.value, "Failover: the first enabled server; the next when it fails"),
            SelectChoice(DeliveryPolicy.SPREAD.value, "Spread: messages shared across all enabled servers")],
        description="Failover keeps to the order of the mail servers: the alternates take over while the primary "
                    "server is unavailable, and the primary takes back as soon as it works. Spread shares the "
                    "messages among every enabled server, each within its own limits.")
    admin_address = EmailField(
        "Admin mail address", validators=[Optional(), email_address, Length(max=320)],
        description="Receives Mailroom's notices about this portal's mail: when mail goes via an alternate server "
                    "and back, when mail is held, when a server needs re-authorization, and a daily summary of "
                    "failures. Empty: no notices.")


class MemberForm(BaseForm):
    email = EmailField("User's email", validators=[InputRequired(), email_address])
    role = SelectField("Role", choices=ROLE_CHOICES, default=Role.STAFF.value)
    sender = SelectField("Mail sender", choices=[], default="", validate_choice=True,
                         description="The From address of mail sent on the member's behalf: one of the portal's "
                                     "sender IDs (Settings), or the server's own.")

    def offer(self, sender_ids) -> "MemberForm":
        self.sender.choices = MailSenderForm.choices_for(sender_ids)
        return self


class RoleForm(BaseForm):
    role = SelectField("Role", choices=ROLE_CHOICES)


class UserForm(BaseForm):
    email = EmailField("Email", validators=[InputRequired(), email_address, Length(max=254)])
    name = StringField("Name", validators=[Length(max=200)])
    password = PasswordField("Initial password", validators=[InputRequired(), Length(min=10)],
                             description="Hand it over yourself: the user must choose their own at first sign-in.")
    is_superadmin = BooleanField("Super-admin (creates portals and users)")


class UserEditForm(BaseForm):
    email = EmailField("Email", validators=[InputRequired(), email_address, Length(max=254)])
    name = StringField("Name", validators=[Length(max=200)])
    is_superadmin = BooleanField("Super-admin (creates portals and users)")
    is_active = BooleanField("Active (may sign in)", default=True)


class SenderIdForm(BaseForm):
    address = EmailField("Sender ID", validators=[InputRequired(), email_address, Length(max=320)],
                         description="An extra From address of this portal, e.g. one per customer. Mailroom does "
                                     "not ask the mail servers whether they accept it: a server that does not "
                                     "makes that member's mail fail.")


class MailSenderForm(BaseForm):
    sender = SelectField("Mail sender", choices=[], validate_choice=True)

    def offer(self, sender_ids) -> "MailSenderForm":
        self.sender.choices = self.choices_for(sender_ids)
        return self

    @staticmethod
    def choices_for(sender_ids) -> list[SelectChoice]:
        return [SelectChoice("", "The server's From address")] + [SelectChoice(str(s.id), s.address)
                                                                  for s in sender_ids]
