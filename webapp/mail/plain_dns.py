"""dnspython without its DNS-over-HTTPS client: import this before dnspython's resolver or query module
(deliverability.py does first of all, mail/dns.py before its first lookup).

dnspython's query module imports an HTTP stack (httpx2, httpcore2, h2) whenever those packages are
installed, for DNS over HTTPS: about 50 ms and 6 MiB in every process that looks a name up. Mailroom asks
its configured resolver over UDP and TCP only (DNS_RESOLVER takes addresses), and a connection to a DoH
server would not go through the egress policy anyway."""
import dns._features

dns._features.force("doh", False)
