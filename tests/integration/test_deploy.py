"""streaming/deploy.py against a real moto_server: streams, the IAM role and its least-privilege policy,
the function from an image, the event-source mapping; run again, it updates instead of failing."""

from __future__ import annotations

import boto3

from tests.integration.streaming_helpers import deploy, unique


def test_deploy_script_against_moto(moto_url):
    name = unique("ride-duration-stream")
    image = f"123456789012.dkr.ecr.us-east-1.amazonaws.com/{name}:v1"
    settings = deploy.DeploySettings(
        image_uri=image,
        model_uri="s3://mlflow-artifacts/1/models/m-0123/artifacts",
        function_name=name,
        input_stream=f"{name}-in",
        output_stream=f"{name}-out",
        role_name=f"{name}-role",
        max_retries=3,
    )
    made = deploy.deploy(settings)

    lambda_client, iam = boto3.client("lambda"), boto3.client("iam")
    function = lambda_client.get_function(FunctionName=name)
    assert function["Configuration"]["PackageType"] == "Image" and function["Code"]["ImageUri"] == image
    assert function["Configuration"]["Role"] == made["role"]
    assert function["Configuration"]["Environment"]["Variables"] == {
        "MODEL_URI": settings.model_uri,
        "PREDICTIONS_STREAM_NAME": f"{name}-out",
    }
    [mapping] = lambda_client.list_event_source_mappings(FunctionName=name)["EventSourceMappings"]
    assert mapping["EventSourceArn"] == made["input_stream"] and mapping["UUID"] == made["event_source_mapping"]
    assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"] and mapping["MaximumRetryAttempts"] == 3
    role = iam.get_role(RoleName=f"{name}-role")["Role"]
    assert role["AssumeRolePolicyDocument"]["Statement"][0]["Principal"] == {"Service": "lambda.amazonaws.com"}
    policy = iam.get_role_policy(RoleName=f"{name}-role", PolicyName=deploy.ROLE_POLICY_NAME)["PolicyDocument"]
    granted = {
        (a, s["Resource"])
        for s in policy["Statement"]
        for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])
    }
    assert ("kinesis:GetRecords", made["input_stream"]) in granted
    assert ("kinesis:PutRecords", made["output_stream"]) in granted
    assert ("s3:GetObject", "arn:aws:s3:::mlflow-artifacts/1/models/m-0123/artifacts/*") in granted

    # Running it again with a new image updates the function and keeps the one mapping; this time it follows
    # the production alias, with the tracking server and the interval in its environment.
    assert (
        deploy.main(
            [
                "--image-uri",
                image.replace(":v1", ":v2"),
                "--model-uri",
                "models:/ride-duration@production",
                "--env",
                "MLFLOW_TRACKING_URI=http://mlflow.internal:5000",
                "--env",
                "MODEL_POLL_SECONDS=60",
                "--function-name",
                name,
                "--input-stream",
                f"{name}-in",
                "--output-stream",
                f"{name}-out",
                "--role-name",
                f"{name}-role",
            ]
        )
        == 0
    )
    function = lambda_client.get_function(FunctionName=name)
    assert function["Code"]["ImageUri"].endswith(":v2")
    assert function["Configuration"]["Environment"]["Variables"] == {
        "MODEL_URI": "models:/ride-duration@production",
        "PREDICTIONS_STREAM_NAME": f"{name}-out",
        "MLFLOW_TRACKING_URI": "http://mlflow.internal:5000",
        "MODEL_POLL_SECONDS": "60",
    }
    assert len(lambda_client.list_event_source_mappings(FunctionName=name)["EventSourceMappings"]) == 1
