"""SMTP submission: devices and applications that speak only SMTP with a password hand mail to a
portal, and it goes out through the portal's servers like any other message in its outbox.

    settings.py      RelaySettings, typed from the app's configuration
    certificate.py   the listener's certificate: configured, or self-signed in instance/; its fingerprint
    credentials.py   SMTP credentials (the service: create, change, revoke, sign in, count messages)
    message.py       what a submitted message becomes: checked, From rewritten, Date, Message-ID, Bcc added
    throttle.py      failed sign-ins per client address
    handler.py       the SMTP conversation (aiosmtpd hooks): every reply code is decided here
    listener.py      Relay: the STARTTLS and the implicit-TLS listener, run by `flask mail relay`
"""
