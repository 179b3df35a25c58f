"""Provider presets: what each mail service documents about sending through it.

Choosing one in the server form fills in what the preset knows (protocol, host, port, security,
authentication, the username convention, OAuth provider, cloud and flow; the scope follows from
those) and shows its note and documentation link. Nothing else is touched and nothing is saved
until Save. The deliverability checks use the same entries: the SPF include and DKIM selectors a
service documents, and whether it sends with an envelope sender (bounce address) of its own.

Each entry cites the provider's documentation (its `docs` link is shown to the admin too).
"""
from dataclasses import dataclass, field

from .auth import AuthType
from .oauth import Cloud, Flow, Provider
from .smtp import Security

MICROSOFT_SMTP_DOCS = ("https://learn.microsoft.com/en-us/exchange/clients-and-mobile-in-exchange-online/"
                       "authenticated-client-smtp-submission")
MICROSOFT_GRAPH_DOCS = "https://learn.microsoft.com/en-us/graph/api/user-sendmail"
MICROSOFT_DKIM_DOCS = "https://learn.microsoft.com/en-us/defender-office-365/email-authentication-dkim-configure"
GOOGLE_DKIM_DOCS = "https://support.google.com/a/answer/174124"
SENDGRID_DKIM_DOCS = "https://www.twilio.com/docs/sendgrid/ui/account-and-settings/how-to-set-up-domain-authentication"


@dataclass(frozen=True)
class Preset:
    key: str
    label: str
    group: str  # the <optgroup> it is listed under
    docs: str  # the provider's own page for these settings
    note: str = ""  # what the provider requires, in a sentence or two
    protocol: str = "smtp"
    host: str = ""
    port: int | None = None
    security: Security | None = None
    auth: AuthType | None = None
    username: str = ""  # a literal ("apikey") or a pattern of the From address: "{address}", "postmaster@{domain}"
    username_hint: str = ""  # when the preset cannot know it: where the admin finds it
    provider: Provider | None = None
    cloud: Cloud | None = None
    tenant: str = ""  # "{domain}": the From address's domain
    flow: Flow | None = None
    # deliverability
    spf_include: str = ""  # the domain whose SPF record lists the service's sending addresses
    dkim_selectors: tuple[str, ...] = ()  # selectors the service documents for signing as the customer's domain
    dkim_docs: str = ""  # where the service says how to sign as the customer's domain (DKIM)
    own_return_path: bool = False  # the envelope sender is the service's own bounce domain unless set up otherwise
    mx_hosts: tuple[str, ...] = field(default=())  # MX host suffixes of domains whose mail the service hosts
    service_name: str = ""  # the service in a sentence ("Microsoft 365"); empty: the group's name

    @property
    def service(self) -> str:
        return self.service_name or (self.label if self.group in ("Sending services", "Other services")
                                     else self.group)

    def values(self, from_address: str = "") -> dict[str, str]:
        """The form's fields this preset fills in (by field name), as posted strings."""
        domain = from_address.rpartition("@")[2] if "@" in from_address else ""
        values = {"protocol": self.protocol}
        if self.host:
            values["host"] = self.host
        if self.security is not None:
            values["security"] = self.security.value
        if self.port is not None:
            values["port"] = str(self.port)
        if self.auth is not None:
            values["auth_type"] = self.auth.value
        if self.username and ("{" not in self.username or from_address):
            values["username"] = self.username.format(address=from_address, domain=domain)
        if self.provider is not None:
            values["provider"] = self.provider.value
        if self.cloud is not None:
            values["cloud"] = self.cloud.value
        if self.tenant and ("{" not in self.tenant or domain):
            values["tenant"] = self.tenant.format(domain=domain)
        if self.flow is not None:
            values["flow"] = self.flow.value
        return values

    @property
    def oauth(self) -> bool:
        return self.auth == AuthType.OAUTH


def _microsoft() -> list[Preset]:
    # Exchange Online hosts and SPF per cloud: SMTP AUTH (MICROSOFT_SMTP_DOCS); GCC High: smtp.office365.us
    # (learn.microsoft.com/en-us/exchange/mail-flow-best-practices/how-to-set-up-a-multifunction-device-or-
    # application-to-send-email-using-microsoft-365-or-office-365, "Government Community Cloud High");
    # 21Vianet: smtp.partner.outlook.cn (learn.microsoft.com/en-us/office365/servicedescriptions/
    # office-365-platform-service-description/office-365-operated-by-21vianet).
    clouds = [(Cloud.GLOBAL, "Global", "smtp.office365.com", "spf.protection.outlook.com",
               ("mail.protection.outlook.com",)),
              (Cloud.GCC_HIGH, "US Government GCC High", "smtp.office365.us", "spf.protection.office365.us",
               ("mail.protection.office365.us",)),
              (Cloud.DOD, "US Government DoD", "", "spf.protection.office365.us", ()),
              (Cloud.CHINA, "China (21Vianet)", "smtp.partner.outlook.cn", "spf.protection.partner.outlook.cn",
               ("mail.protection.partner.outlook.cn",))]
    presets = []
    for cloud, name, _, spf, mx in clouds:
        presets.append(Preset(
            f"microsoft365-graph-{cloud.value}", f"Microsoft 365, {name}: Microsoft Graph", "Microsoft 365",
            MICROSOFT_GRAPH_DOCS, protocol="graph", auth=AuthType.OAUTH, provider=Provider.MICROSOFT, cloud=cloud,
            username="{address}", tenant="{domain}", flow=Flow.DELEGATED, spf_include=spf, dkim_selectors=("selector1", "selector2"),
            dkim_docs=MICROSOFT_DKIM_DOCS, mx_hosts=mx,
            note="Register Mailroom in Microsoft Entra ID (Mail.Send, delegated or application) and consent. "
                 "Graph needs no SMTP AUTH; Microsoft signs with DKIM as your domain once DKIM is enabled for "
                 "it in the Defender portal."))
    for cloud, name, host, spf, mx in clouds:
        if not host:  # DoD's SMTP host is not documented: no SMTP preset rather than a guess
            continue
        presets.append(Preset(
            f"microsoft365-smtp-{cloud.value}", f"Microsoft 365, {name}: SMTP with OAuth", "Microsoft 365",
            MICROSOFT_SMTP_DOCS, host=host, port=587, security=Security.STARTTLS, auth=AuthType.OAUTH,
            username="{address}", provider=Provider.MICROSOFT, cloud=cloud, tenant="{domain}", flow=Flow.DELEGATED,
            spf_include=spf, dkim_selectors=("selector1", "selector2"),
            dkim_docs=MICROSOFT_DKIM_DOCS, mx_hosts=mx,
            note="SMTP AUTH must be enabled for the mailbox (Exchange admin center → the mailbox → Email apps → "
                 "Authenticated SMTP) and not disabled for the tenant; Basic authentication is refused "
                 "(5.7.30), so sign in with OAuth."))
    return presets


def _zoho() -> list[Preset]:
    # Zoho Mail, organization accounts: smtppro.zoho.<data center>, 465 SSL or 587 TLS; an application-specific
    # password when two-factor authentication is on (https://www.zoho.com/mail/help/zoho-smtp.html).
    regions = [("com", "United States"), ("eu", "Europe"), ("in", "India"), ("com.au", "Australia"),
               ("jp", "Japan")]
    return [Preset(f"zoho-{suffix.replace('.', '-')}", f"Zoho Mail, {name} (zoho.{suffix})", "Zoho Mail",
                   "https://www.zoho.com/mail/help/zoho-smtp.html", host=f"smtppro.zoho.{suffix}", port=465,
                   security=Security.TLS, auth=AuthType.BASIC, username="{address}", spf_include=f"zoho.{suffix}",
                   mx_hosts=(f"zoho.{suffix}",),
                   note="Use the data center your account lives in (the domain of your Zoho Mail address bar). "
                        "With two-factor authentication on, sign in with an application-specific password. "
                        "The From address must be the account's address or one of its aliases.")
            for suffix, name in regions]


# Amazon SES SMTP endpoints, one per region; SMTP credentials are per region and are not the IAM access keys
# (https://docs.aws.amazon.com/ses/latest/dg/smtp-connect.html, .../smtp-credentials.html).
SES_REGIONS = {
    "us-east-1": "US East (N. Virginia)", "us-east-2": "US East (Ohio)", "us-west-2": "US West (Oregon)",
    "ca-central-1": "Canada (Central)", "sa-east-1": "South America (São Paulo)",
    "eu-west-1": "Europe (Ireland)", "eu-west-2": "Europe (London)", "eu-central-1": "Europe (Frankfurt)",
    "eu-south-1": "Europe (Milan)", "eu-north-1": "Europe (Stockholm)",
    "ap-south-1": "Asia Pacific (Mumbai)", "ap-northeast-1": "Asia Pacific (Tokyo)",
    "ap-northeast-2": "Asia Pacific (Seoul)", "ap-southeast-1": "Asia Pacific (Singapore)",
    "ap-southeast-2": "Asia Pacific (Sydney)", "us-gov-west-1": "AWS GovCloud (US-West)",
    "us-gov-east-1": "AWS GovCloud (US-East)",
}


def _ses() -> list[Preset]:
    return [Preset(f"ses-{region}", f"Amazon SES, {name} ({region})", "Amazon SES",
                   "https://docs.aws.amazon.com/ses/latest/dg/smtp-connect.html",
                   host=f"email-smtp.{region}.amazonaws.com", port=587, security=Security.STARTTLS,
                   auth=AuthType.BASIC, username_hint="the SMTP user name from SES → SMTP settings → Create SMTP "
                                                      "credentials (for this region)",
                   spf_include="amazonses.com", own_return_path=True,
                   note="SMTP credentials are per region and are not your IAM access keys. The From address or "
                        "its domain must be a verified identity in this region; a new account is in the sandbox "
                        "(it sends only to verified addresses) until you ask for production access.")
            for region, name in SES_REGIONS.items()]


PRESETS: tuple[Preset, ...] = (
    *_microsoft(),
    # Outlook.com: smtp-mail.outlook.com, 587 STARTTLS; modern authentication (OAuth) only
    # (https://support.microsoft.com/en-us/office/pop-imap-and-smtp-settings-for-outlook-com-d088b986-291d-42b8-
    # 9564-9c414e2aa040).
    Preset("outlook-com", "Outlook.com (personal Microsoft account)", "Microsoft 365",
           "https://support.microsoft.com/en-us/office/pop-imap-and-smtp-settings-for-outlook-com-"
           "d088b986-291d-42b8-9564-9c414e2aa040",
           host="smtp-mail.outlook.com", port=587, security=Security.STARTTLS, auth=AuthType.OAUTH,
           username="{address}", provider=Provider.MICROSOFT, cloud=Cloud.GLOBAL, tenant="consumers",
           flow=Flow.DELEGATED, mx_hosts=("olc.protection.outlook.com",),
           note="Outlook.com accepts only OAuth: register an app that allows personal Microsoft accounts and sign "
                "in as the mailbox."),
    # Google Workspace / Gmail: smtp.gmail.com 587 STARTTLS or 465, XOAUTH2 or an app password
    # (https://support.google.com/a/answer/176600, https://developers.google.com/workspace/gmail/imap/
    # xoauth2-protocol); SPF _spf.google.com and DKIM selector "google" (https://support.google.com/a/answer/
    # 33786, https://support.google.com/a/answer/174124).
    Preset("google-smtp", "Google Workspace / Gmail: SMTP with OAuth", "Google",
           "https://support.google.com/a/answer/176600", host="smtp.gmail.com", port=587,
           security=Security.STARTTLS, auth=AuthType.OAUTH, username="{address}", provider=Provider.GOOGLE,
           flow=Flow.DELEGATED, spf_include="_spf.google.com", dkim_selectors=("google",),
           dkim_docs=GOOGLE_DKIM_DOCS,
           mx_hosts=("google.com", "googlemail.com"), service_name="Google Workspace",
           note="Sign in with OAuth (scope https://mail.google.com/); with Basic authentication Google accepts "
                "only an app password (2-Step Verification on), never the account's password. Workspace sends "
                "at most 2,000 messages a day per user."),
    Preset("google-api", "Google Workspace / Gmail: Gmail API", "Google",
           "https://developers.google.com/workspace/gmail/api/guides/sending", protocol="gmail",
           auth=AuthType.OAUTH, username="{address}", provider=Provider.GOOGLE, flow=Flow.DELEGATED,
           spf_include="_spf.google.com", dkim_selectors=("google",),
           dkim_docs=GOOGLE_DKIM_DOCS, mx_hosts=("google.com", "googlemail.com"),
           service_name="Google Workspace",
           note="Enable the Gmail API in your Google Cloud project and consent with the gmail.send scope; or use a "
                "service-account key with domain-wide delegation (Workspace)."),
    # Yahoo Mail: smtp.mail.yahoo.com 465 SSL (or 587 STARTTLS), an app password
    # (https://help.yahoo.com/kb/SLN4075.html, https://help.yahoo.com/kb/SLN15241.html).
    Preset("yahoo", "Yahoo Mail", "Other services", "https://help.yahoo.com/kb/SLN4075.html",
           host="smtp.mail.yahoo.com", port=465, security=Security.TLS, auth=AuthType.BASIC, username="{address}",
           mx_hosts=("yahoodns.net",),
           note="Sign in with an app password (Account security → Generate app password), not the account's "
                "password. Mail goes out only from the account's own address."),
    *_zoho(),
    *_ses(),
    # SendGrid: smtp.sendgrid.net, 587 (STARTTLS), username the literal "apikey", password an API key with Mail
    # Send (https://www.twilio.com/docs/sendgrid/for-developers/sending-email/integrating-with-the-smtp-api);
    # domain authentication: CNAMEs s1/s2._domainkey and include:sendgrid.net via the em… subdomain
    # (https://www.twilio.com/docs/sendgrid/ui/account-and-settings/how-to-set-up-domain-authentication).
    Preset("sendgrid", "SendGrid (Twilio)", "Sending services",
           "https://www.twilio.com/docs/sendgrid/for-developers/sending-email/integrating-with-the-smtp-api",
           host="smtp.sendgrid.net", port=587, security=Security.STARTTLS, auth=AuthType.BASIC, username="apikey",
           spf_include="sendgrid.net", dkim_selectors=("s1", "s2"),
           dkim_docs=SENDGRID_DKIM_DOCS, own_return_path=True,
           note="The username is the word apikey itself; the password is an API key with Mail Send permission. "
                "The From address must be a verified sender or on an authenticated domain."),
    # Mailgun: smtp.mailgun.org (US) or smtp.eu.mailgun.org (EU), 587; SMTP credentials per sending domain,
    # postmaster@<domain> by default (https://documentation.mailgun.com/docs/mailgun/user-manual/sending-messages/
    # send-smtp, https://documentation.mailgun.com/docs/mailgun/user-manual/domains/domains-verify).
    *(Preset(f"mailgun-{region}", f"Mailgun ({name})", "Sending services",
             "https://documentation.mailgun.com/docs/mailgun/user-manual/sending-messages/send-smtp",
             host=host, port=587, security=Security.STARTTLS, auth=AuthType.BASIC, username="postmaster@{domain}",
             spf_include="mailgun.org",
             note="SMTP credentials belong to a sending domain (Sending → Domains → the domain → SMTP credentials); "
                  "US and EU accounts are separate. The From domain must be that sending domain.")
      for region, name, host in (("us", "US", "smtp.mailgun.org"), ("eu", "EU", "smtp.eu.mailgun.org"))),
    # Postmark: smtp.postmarkapp.com, 587 STARTTLS, the Server API token as username and password
    # (https://postmarkapp.com/developer/user-guide/send-email-with-smtp); its own Return-Path unless a custom one
    # is set up (https://postmarkapp.com/support/article/910-adding-a-custom-return-path-domain).
    Preset("postmark", "Postmark", "Sending services", "https://postmarkapp.com/developer/user-guide/send-email-with-smtp",
           host="smtp.postmarkapp.com", port=587, security=Security.STARTTLS, auth=AuthType.BASIC,
           username_hint="the Server API token (Server → API Tokens), which is also the password",
           spf_include="spf.mtasv.net", own_return_path=True,
           note="Type the Server API token as username and as password. The From address must be a confirmed "
                "sender signature or on a verified domain."),
    # Brevo: smtp-relay.brevo.com, 587, the SMTP login and an SMTP key (not an API key)
    # (https://developers.brevo.com/docs/smtp-integration); domain authentication brevo1/brevo2._domainkey
    # (https://help.brevo.com/hc/en-us/articles/12163873383186).
    Preset("brevo", "Brevo (formerly Sendinblue)", "Sending services", "https://developers.brevo.com/docs/smtp-integration",
           host="smtp-relay.brevo.com", port=587, security=Security.STARTTLS, auth=AuthType.BASIC,
           username_hint="the SMTP login under SMTP & API → SMTP (not your Brevo sign-in)",
           spf_include="spf.brevo.com", dkim_selectors=("brevo1", "brevo2"),
           dkim_docs="https://help.brevo.com/hc/en-us/articles/12163873383186", own_return_path=True,
           note="The password is an SMTP key (SMTP & API → SMTP → Generate a new SMTP key), not an API key."),
    # A relay on this machine or the local network (Postfix, an Exchange receive connector): port 25, no TLS, no
    # sign-in (https://www.postfix.org/BASIC_CONFIGURATION_README.html, "What clients to relay mail from").
    Preset("local-relay", "A local relay (Postfix, Exchange receive connector)", "Other services",
           "https://www.postfix.org/BASIC_CONFIGURATION_README.html", port=25, security=Security.NONE,
           auth=AuthType.NONE,
           note="Type the relay's host. The relay must accept mail from Mailroom's address without sign-in "
                "(Postfix mynetworks, an Exchange anonymous receive connector); a relay on this machine "
                "(localhost) must be allowed by the egress policy first."),
)

BY_KEY: dict[str, Preset] = {p.key: p for p in PRESETS}


def groups() -> list[tuple[str, list[Preset]]]:
    """The presets by group, in the table's order (for <optgroup>)."""
    grouped: dict[str, list[Preset]] = {}
    for preset in PRESETS:
        grouped.setdefault(preset.group, []).append(preset)
    return list(grouped.items())


def for_server(protocol: str, host: str = "", cloud: str = "") -> Preset | None:
    """The preset a server's settings are (the deliverability checks ask what the service documents)."""
    host = (host or "").lower().rstrip(".")
    if protocol == "graph":
        return BY_KEY.get(f"microsoft365-graph-{cloud or Cloud.GLOBAL.value}")
    if protocol == "gmail":
        return BY_KEY["google-api"]
    return next((p for p in PRESETS if p.host and p.host == host and p.protocol == protocol), None)


def for_mx(mx_host: str) -> Preset | None:
    """The preset for a domain whose MX is at a known service (Find settings), the first listed."""
    host = mx_host.lower().rstrip(".")
    return next((p for p in PRESETS if any(host == s or host.endswith("." + s) for s in p.mx_hosts)), None)
