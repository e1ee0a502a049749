"""The one way the project makes a boto3 client: every S3 and Kinesis call has a time limit and few retries.

botocore's own defaults wait 60 s to connect and 60 s for each answer, and retry up to 5 times: an
endpoint that accepts connections and never answers holds a caller for minutes. Here the limits are
Settings (AWS_CONNECT_TIMEOUT, AWS_READ_TIMEOUT, AWS_MAX_ATTEMPTS), so a call to an endpoint that is down
fails within about attempts x (connect + read) seconds, and the caller decides what to do (the runner
invokes the batch again, a backfill reports the month).

boto3 is imported only when a client is made, so importing this costs a cold start nothing.
"""

from __future__ import annotations

from ride_duration.settings import Settings

RETRY_MODE = "standard"  # botocore's retry mode with exponential back-off and jitter, capped at 20 s


def client_config(settings: Settings | None = None):
    """The botocore Config every client is made with: connect and read timeouts, bounded retries."""
    from botocore.config import Config

    settings = settings or Settings.from_environ(groups=("model",))
    return Config(
        connect_timeout=settings.aws_connect_timeout,
        read_timeout=settings.aws_read_timeout,
        retries={"total_max_attempts": settings.aws_max_attempts, "mode": RETRY_MODE},
    )


def client(service: str, settings: Settings | None = None, *, session=None):
    """A boto3 client for service ("s3", "kinesis", ...) with client_config's limits.

    settings.aws_endpoint_url (AWS_ENDPOINT_URL) points it at moto_server; unset, boto3 finds the endpoint
    itself (real AWS). session: a boto3.Session to make it from (default: boto3's default session).
    """
    settings = settings or Settings.from_environ(groups=("model",))
    if session is None:
        import boto3

        session = boto3
    return session.client(service, endpoint_url=settings.aws_endpoint_url or None, config=client_config(settings))
