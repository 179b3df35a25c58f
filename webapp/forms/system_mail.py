from wtforms import SelectChoice, SelectField

from .base import BaseForm


class SystemMailForm(BaseForm):
    server = SelectField("System-mail server", choices=[], validate_choice=True,
                         description="Any portal's server. It sends password-recovery links, and the admin notices "
                                     "of a portal none of whose servers works. Its From address is the From of "
                                     "that mail (named “Mailroom”).")

    def offer(self, choices) -> "SystemMailForm":
        self.server.choices = [SelectChoice("", "None: no system mail")] + [
            SelectChoice(str(choice.server_id), choice.label) for choice in choices]
        return self
