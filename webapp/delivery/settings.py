"""The delivery settings, typed, from the app's configuration (config.py: DELIVERY_*)."""
from dataclasses import dataclass
from datetime import timedelta


@dataclass(frozen=True)
class DeliverySettings:
    workers: int = 4
    queue_name: str = "mailroom"
    retry_first: float = 300.0  # seconds
    retry_max: float = 4000.0
    retry_jitter: float = 0.2
    lifetime: timedelta = timedelta(days=5)
    lease: float = 120.0  # seconds
    sweep: float = 30.0
    probe: float = 60.0
    busy_retry: float = 5.0
    batch: int = 100
    keep_connections: float = 3.0  # seconds a worker thread keeps an idle connection for its next job
    notice_interval: timedelta = timedelta(hours=1)
    summary_hour: int = 6
    purge_body: timedelta = timedelta(days=7)
    keep: timedelta = timedelta(days=90)

    @classmethod
    def from_config(cls, config) -> "DeliverySettings":
        return cls(
            workers=int(config["DELIVERY_WORKERS"]),
            queue_name=str(config["DELIVERY_QUEUE_NAME"]),
            retry_first=float(config["DELIVERY_RETRY_FIRST_SECONDS"]),
            retry_max=float(config["DELIVERY_RETRY_MAX_SECONDS"]),
            retry_jitter=float(config["DELIVERY_RETRY_JITTER"]),
            lifetime=timedelta(hours=float(config["DELIVERY_LIFETIME_HOURS"])),
            lease=float(config["DELIVERY_LEASE_SECONDS"]),
            sweep=float(config["DELIVERY_SWEEP_SECONDS"]),
            probe=float(config["DELIVERY_PROBE_SECONDS"]),
            busy_retry=float(config["DELIVERY_BUSY_RETRY_SECONDS"]),
            batch=int(config["DELIVERY_BATCH"]),
            keep_connections=float(config["DELIVERY_KEEP_CONNECTION_SECONDS"]),
            notice_interval=timedelta(minutes=float(config["DELIVERY_NOTICE_MINUTES"])),
            summary_hour=int(config["DELIVERY_SUMMARY_HOUR"]),
            purge_body=timedelta(days=float(config["DELIVERY_PURGE_BODY_DAYS"])),
            keep=timedelta(days=float(config["DELIVERY_KEEP_DAYS"])),
        )
