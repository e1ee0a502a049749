"""Deploy the streaming model to AWS (or to moto_server when AWS_ENDPOINT_URL points there):
the input and output streams, the function's IAM role and policy, the function from a container
image, and the Kinesis event-source mapping with ReportBatchItemFailures.

    docker build -f streaming/Dockerfile -t ride-duration-stream .      # build context: the repo root
    # push it to ECR, then:
    python streaming/deploy.py --image-uri 123456789012.dkr.ecr.eu-west-1.amazonaws.com/ride-duration-stream:v1 \\
        --model-uri s3://mlflow-artifacts/1/models/m-.../artifacts
    python streaming/deploy.py --streams-only      # just the two streams (e.g. on moto_server)

Running it again updates what exists (function image and settings, the mapping's settings)
instead of failing, so a new image is deployed by running the same command.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from urllib.parse import urlparse

LAMBDA_TRUST_POLICY = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}],
}
ROLE_POLICY_NAME = "ride-duration-stream"
ROLE_WAIT_SECONDS = 60  # a new IAM role takes a few seconds before Lambda may assume it


@dataclass
class DeploySettings:
    image_uri: str
    model_uri: str
    function_name: str = "ride-duration-stream"
    input_stream: str = "ride_events"
    output_stream: str = "ride_predictions"
    shards: int = 1
    role_name: str = "ride-duration-stream-lambda"
    memory_mb: int = 1024
    timeout_seconds: int = 60
    batch_size: int = 100
    starting_position: str = "LATEST"
    max_retries: int = 2
    on_failure_arn: str | None = None  # an SQS queue, SNS topic or S3 bucket told about batches that failed every retry
    extra_environment: dict = field(default_factory=dict)


def ensure_stream(kinesis, name: str, shards: int = 1) -> str:
    """Create the stream unless it exists; wait until it is ACTIVE; return its ARN."""
    try:
        kinesis.create_stream(StreamName=name, ShardCount=shards)
    except kinesis.exceptions.ResourceInUseException:
        pass
    kinesis.get_waiter("stream_exists").wait(StreamName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 120})
    return kinesis.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]["StreamARN"]


def role_policy(input_arn: str, output_arn: str, model_uri: str) -> dict:
    """Least privilege: read the input stream, write the output stream, write logs, read the model."""
    statements = [
        {
            "Effect": "Allow",
            "Action": [
                "kinesis:DescribeStream",
                "kinesis:DescribeStreamSummary",
                "kinesis:GetRecords",
                "kinesis:GetShardIterator",
                "kinesis:ListShards",
                "kinesis:ListStreams",
            ],
            "Resource": input_arn,
        },
        {"Effect": "Allow", "Action": ["kinesis:PutRecord", "kinesis:PutRecords"], "Resource": output_arn},
        {
            "Effect": "Allow",
            "Action": ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"],
            "Resource": "arn:aws:logs:*:*:*",
        },
    ]
    model = urlparse(model_uri)
    if model.scheme == "s3":
        prefix = model.path.strip("/")
        statements += [
            {"Effect": "Allow", "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{model.netloc}/{prefix}/*"},
            {
                "Effect": "Allow",
                "Action": "s3:ListBucket",
                "Resource": f"arn:aws:s3:::{model.netloc}",
                "Condition": {"StringLike": {"s3:prefix": [f"{prefix}/*"]}},
            },
        ]
    return {"Version": "2012-10-17", "Statement": statements}


def ensure_role(iam, name: str, policy: dict) -> str:
    """Create the function's role unless it exists, (re)write its inline policy; return its ARN."""
    try:
        role = iam.create_role(
            RoleName=name,
            AssumeRolePolicyDocument=json.dumps(LAMBDA_TRUST_POLICY),
            Description="Runs the ride-duration streaming function",
        )["Role"]
    except iam.exceptions.EntityAlreadyExistsException:
        role = iam.get_role(RoleName=name)["Role"]
    iam.put_role_policy(RoleName=name, PolicyName=ROLE_POLICY_NAME, PolicyDocument=json.dumps(policy))
    return role["Arn"]


def ensure_function(lambda_client, settings: DeploySettings, role_arn: str) -> str:
    """Create the function from the image, or point the existing one at it; return its ARN."""
    environment = {
        "Variables": {
            "MODEL_URI": settings.model_uri,
            "PREDICTIONS_STREAM_NAME": settings.output_stream,
            **settings.extra_environment,
        }
    }
    config = {
        "Role": role_arn,
        "Timeout": settings.timeout_seconds,
        "MemorySize": settings.memory_mb,
        "Environment": environment,
    }
    deadline = time.monotonic() + ROLE_WAIT_SECONDS
    while True:
        try:
            function = lambda_client.create_function(
                FunctionName=settings.function_name,
                PackageType="Image",
                Code={"ImageUri": settings.image_uri},
                **config,
            )
            wait(lambda_client, "function_active_v2", settings.function_name)
            break
        except lambda_client.exceptions.ResourceConflictException:
            lambda_client.update_function_code(FunctionName=settings.function_name, ImageUri=settings.image_uri)
            wait(lambda_client, "function_updated_v2", settings.function_name)
            function = lambda_client.update_function_configuration(FunctionName=settings.function_name, **config)
            wait(lambda_client, "function_updated_v2", settings.function_name)
            break
        except lambda_client.exceptions.InvalidParameterValueException as error:
            if "cannot be assumed" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(3)  # the new role has not reached Lambda yet
    return function["FunctionArn"]


def wait(lambda_client, waiter: str, name: str) -> None:
    """Until the function is ready for the next change (Lambda refuses changes while one is in progress)."""
    lambda_client.get_waiter(waiter).wait(FunctionName=name, WaiterConfig={"Delay": 2, "MaxAttempts": 150})


def ensure_event_source_mapping(lambda_client, settings: DeploySettings, input_arn: str) -> str:
    """Connect the input stream to the function; with ReportBatchItemFailures a batch is retried
    from its first failed record only, and MaximumRetryAttempts bounds the retries. Returns its UUID."""
    options = {
        "BatchSize": settings.batch_size,
        "MaximumRetryAttempts": settings.max_retries,
        "FunctionResponseTypes": ["ReportBatchItemFailures"],
        "BisectBatchOnFunctionError": False,
    }
    if settings.on_failure_arn:
        options["DestinationConfig"] = {"OnFailure": {"Destination": settings.on_failure_arn}}
    existing = lambda_client.list_event_source_mappings(EventSourceArn=input_arn, FunctionName=settings.function_name)
    if existing["EventSourceMappings"]:
        uuid = existing["EventSourceMappings"][0]["UUID"]
        lambda_client.update_event_source_mapping(UUID=uuid, FunctionName=settings.function_name, **options)
        return uuid
    mapping = lambda_client.create_event_source_mapping(
        EventSourceArn=input_arn,
        FunctionName=settings.function_name,
        StartingPosition=settings.starting_position,
        Enabled=True,
        **options,
    )
    return mapping["UUID"]


def deploy(settings: DeploySettings, session=None) -> dict:
    """Every step above, in order; returns the ARNs and ids made, for the reader to check."""
    import boto3

    from ride_duration import aws

    session = session or boto3.Session()
    kinesis, iam, lambda_client = (aws.client(name, session=session) for name in ("kinesis", "iam", "lambda"))
    input_arn = ensure_stream(kinesis, settings.input_stream, settings.shards)
    output_arn = ensure_stream(kinesis, settings.output_stream, settings.shards)
    role_arn = ensure_role(iam, settings.role_name, role_policy(input_arn, output_arn, settings.model_uri))
    function_arn = ensure_function(lambda_client, settings, role_arn)
    mapping = ensure_event_source_mapping(lambda_client, settings, input_arn)
    return {
        "input_stream": input_arn,
        "output_stream": output_arn,
        "role": role_arn,
        "function": function_arn,
        "event_source_mapping": mapping,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--streams-only",
        action="store_true",
        help="create the two streams and stop (what the local loop needs on moto_server)",
    )
    parser.add_argument(
        "--image-uri", help="the pushed image, e.g. <account>.dkr.ecr.<region>.amazonaws.com/ride-duration-stream:v1"
    )
    parser.add_argument(
        "--model-uri",
        help="the model's artifact URI (s3://..., no tracking server needed; pass --env MODEL_SHA256=<its sha256>) "
        "or models:/NAME/VERSION: that model for good; models:/NAME@ALIAS follows the alias (then pass "
        "--env MLFLOW_TRACKING_URI=...)",
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="another variable of the function's environment, e.g. MLFLOW_TRACKING_URI=https://... or "
        "MODEL_POLL_SECONDS=60 (repeat for more)",
    )
    parser.add_argument("--function-name", default=DeploySettings.function_name)
    parser.add_argument("--input-stream", default=DeploySettings.input_stream)
    parser.add_argument("--output-stream", default=DeploySettings.output_stream)
    parser.add_argument("--shards", type=int, default=DeploySettings.shards)
    parser.add_argument("--role-name", default=DeploySettings.role_name)
    parser.add_argument("--batch-size", type=int, default=DeploySettings.batch_size)
    parser.add_argument(
        "--starting-position", choices=["TRIM_HORIZON", "LATEST"], default=DeploySettings.starting_position
    )
    parser.add_argument("--max-retries", type=int, default=DeploySettings.max_retries)
    parser.add_argument(
        "--on-failure-arn", help="SQS queue / SNS topic / S3 bucket ARN for batches that failed every retry"
    )
    args = parser.parse_args(argv)
    if args.streams_only:
        from ride_duration import aws

        kinesis = aws.client("kinesis")
        arns = {name: ensure_stream(kinesis, name, args.shards) for name in (args.input_stream, args.output_stream)}
        print(json.dumps(arns, indent=2))
        return 0
    if not (args.image_uri and args.model_uri):
        parser.error("--image-uri and --model-uri are required (unless --streams-only)")
    malformed = [item for item in args.env if "=" not in item or item.startswith("=")]
    if malformed:
        parser.error(f"--env takes NAME=VALUE, got {', '.join(malformed)}")
    settings = DeploySettings(
        image_uri=args.image_uri,
        model_uri=args.model_uri,
        function_name=args.function_name,
        input_stream=args.input_stream,
        output_stream=args.output_stream,
        shards=args.shards,
        role_name=args.role_name,
        batch_size=args.batch_size,
        starting_position=args.starting_position,
        max_retries=args.max_retries,
        on_failure_arn=args.on_failure_arn,
        extra_environment=dict(item.split("=", 1) for item in args.env),
    )
    print(json.dumps(deploy(settings), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
