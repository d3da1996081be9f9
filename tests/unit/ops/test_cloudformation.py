"""deploy/cloudformation/dmd.yaml against ``dmd provision``, which stays the one definition of what
dmd needs on AWS.

The template is deployed into the session's moto server (CloudFormation's CreateStack) for the names
of settings of the test's own, and what it made is compared with what ``dmd provision`` makes for
the same names: queues (names, dead-letter wiring, visibility timeouts, retention), tables (keys,
indexes, stream view type, capacity mode), Kinesis streams, the SNS topic's subscriptions. Its ECS
services are compared with the Procfile, and every container's environment is read as the
processes read it (the settings they would run with name exactly what the stack made).

What the deploy cannot show: moto's CloudFormation does not model AWS::SQS::QueuePolicy,
AWS::SNS::TopicPolicy, AWS::SMSVOICE::ConfigurationSet, AWS::Pipes::Pipe and
AWS::ApplicationAutoScaling::* (it skips them, and the stack still completes). Those are compared
with the calls ``dmd provision`` makes (the queue policy, the configuration set, the pipe: captured
from the provisioning functions themselves) or with the topology (each worker scales on its own
queue), read from the template with its parameters set (``tests/cloudformation.py``); cfn-lint
(``make lint``) checks them against CloudFormation's schemas. Not checked anywhere but on AWS: that
the roles' permissions are enough (the deploy checks their shape), the tasks' networking, the
scaling's metrics.
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import shlex
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError

from dmd_tasks.infra import aws, topology
from dmd_tasks.infra.settings import Settings, load_settings
from dmd_tasks.infra.topology import DLQ_OWNERS, INTAKE_QUEUES, QUEUE_NAMES
from dmd_tasks.ops import provision as provisioning
from dmd_tasks.ops.cli import main as cli
from dmd_tasks.ops.stack import read_procfile
from tests import cloudformation
from tests.cloudformation import Template

#: What the secret the containers read holds, in the form the settings want (any value will do).
SECRETS = {
    "DMD_REDIS_URL": "rediss://:secret@redis.internal:6379/0",
    "DMD_MONGO_URL": "mongodb://dmd:secret@mongo.internal:27017",
    "DMD_BITLY_TOKEN": "bitly",
    "DMD_SMS_API_KEY": "sms",
    "DMD_DISCOVERY_API_KEY": "discovery",
    "DMD_ACCOUNTS_CLIENT_SECRET": "accounts",
    "DMD_API_KEYS": '["key"]',
    "DMD_API_ACCOUNT_SCOPES": '{"key": "*"}',
    "DMD_FLOWER_BASIC_AUTH": "admin:secret",
}
#: The deployment's own parameters (no setting of dmd's): the network, the image, the secret.
DEPLOYMENT = {
    "ImageTag": "test",
    "IngressCidr": "10.7.0.0/16",
    "SecretArn": f"arn:aws:secretsmanager:us-east-1:{cloudformation.ACCOUNT}:secret:dmd-AbCdEf",
}
#: The resource types moto's CloudFormation skips (tests below compare them without it).
NOT_MODELLED = {
    "AWS::SQS::QueuePolicy",
    "AWS::SNS::TopicPolicy",
    "AWS::SMSVOICE::ConfigurationSet",
    "AWS::Pipes::Pipe",
    "AWS::ApplicationAutoScaling::ScalableTarget",
    "AWS::ApplicationAutoScaling::ScalingPolicy",
}


def mine(settings: Settings, run: str) -> Settings:
    """Settings naming resources of this test's own, with values other than the defaults where the
    template has a parameter for them (so that a parameter not passed on shows)."""
    return settings.model_copy(
        update={
            "table_name": f"cfn-demand-{run}",
            "notifications_table_name": f"cfn-notifications-{run}",
            "checkpoint_table_name": f"cfn-checkpoints-{run}",
            "queue_name_prefix": f"c{run}-",
            "sms_status_stream_name": f"cfn-sms-status-{run}",
            "sms_status_shards": 2,
            "dlq_max_receive_count": 4,
            "visibility_timeout_seconds": 700,
            "intake_visibility_timeout_seconds": 240,
            "sms_base_url": "https://sms.provider.test",
            "accounts_base_url": "https://accounts.provider.test",
        }
    )


# --- what exists, in the terms provision and the stack are compared in ---------------------------


def queues_made(settings: Settings) -> dict[str, dict[str, Any]]:
    """Every queue under the prefix: its key attributes, its dead-letter queue by name."""
    sqs = aws.client("sqs", settings)
    out = {}
    for url in sqs.list_queues(QueueNamePrefix=settings.queue_name_prefix).get("QueueUrls", []):
        attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
        redrive = json.loads(attributes.get("RedrivePolicy") or "null")
        out[url.rsplit("/", 1)[1]] = {
            **{
                k: attributes.get(k)
                for k in ("VisibilityTimeout", "MessageRetentionPeriod", "DelaySeconds", "MaximumMessageSize")
            },
            "dead letters": redrive
            and (redrive["deadLetterTargetArn"].rsplit(":", 1)[1], int(redrive["maxReceiveCount"])),
        }
    return out


def table_made(settings: Settings, name: str) -> dict[str, Any]:
    table = aws.client("dynamodb", settings).describe_table(TableName=name)["Table"]
    stream = table.get("StreamSpecification") or {}
    return {
        "keys": table["KeySchema"],
        "attributes": sorted(table["AttributeDefinitions"], key=lambda a: a["AttributeName"]),
        "indexes": sorted(
            (
                {k: g[k] for k in ("IndexName", "KeySchema", "Projection")}
                for g in table.get("GlobalSecondaryIndexes", [])
            ),
            key=lambda g: g["IndexName"],
        ),
        "stream": stream.get("StreamViewType") if stream.get("StreamEnabled") else None,
        "billing": table.get("BillingModeSummary", {}).get("BillingMode"),
    }


def made(settings: Settings) -> dict[str, Any]:
    """The queues, tables, streams and the SMS events topic's subscriptions under these names."""
    kinesis, sns = aws.client("kinesis", settings), aws.client("sns", settings)
    topic = f"arn:aws:sns:{settings.aws_region}:{settings.aws_account_id}:{topology.sms_events_topic(settings)}"
    tables = (settings.table_name, settings.notifications_table_name, settings.checkpoint_table_name)
    streams = {}
    for name in topology.kinesis_streams(settings):
        summary = kinesis.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]
        streams[name] = (summary["StreamStatus"], summary["OpenShardCount"])
    return {
        "queues": queues_made(settings),
        "tables": {name: table_made(settings, name) for name in tables},
        "streams": streams,
        "subscriptions": sorted(
            (s["Protocol"], s["Endpoint"].rsplit(":", 1)[1])
            for s in sns.list_subscriptions_by_topic(TopicArn=topic)["Subscriptions"]
        ),
    }


def remove(settings: Settings) -> None:
    """Everything ``made`` reads, gone (the stack keeps its tables when it is deleted)."""
    ddb, sqs, kinesis, sns = (aws.client(s, settings) for s in ("dynamodb", "sqs", "kinesis", "sns"))
    for url in sqs.list_queues(QueueNamePrefix=settings.queue_name_prefix).get("QueueUrls", []):
        sqs.delete_queue(QueueUrl=url)
    for table in (settings.table_name, settings.notifications_table_name, settings.checkpoint_table_name):
        with contextlib.suppress(ClientError):
            ddb.delete_table(TableName=table)
    for stream in topology.kinesis_streams(settings):
        with contextlib.suppress(ClientError):
            kinesis.delete_stream(StreamName=stream)
    topic = f"arn:aws:sns:{settings.aws_region}:{settings.aws_account_id}:{topology.sms_events_topic(settings)}"
    with contextlib.suppress(ClientError):
        for subscription in sns.list_subscriptions_by_topic(TopicArn=topic)["Subscriptions"]:
            sns.unsubscribe(SubscriptionArn=subscription["SubscriptionArn"])
        sns.delete_topic(TopicArn=topic)


# --- the deploy --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def deployed(settings, stack) -> Iterator[tuple[Settings, dict[str, Any], str]]:
    """What ``dmd provision`` made for names of this test's own (then removed), and the stack the
    template made for the same names: (settings, provision's resources, the stack's name)."""
    run = uuid.uuid4().hex[:8]
    names = mine(settings, run)
    ec2, cfn = aws.client("ec2", names), aws.client("cloudformation", names)
    vpc = ec2.create_vpc(CidrBlock="10.7.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.7.1.0/24")["Subnet"]["SubnetId"]
    stack_name = f"dmd-{run}"
    try:
        provisioning.provision(names)
        by_provision = made(names)
        remove(names)

        values = {**cloudformation.parameters(names), **DEPLOYMENT, "VpcId": vpc, "SubnetIds": subnet}
        cfn.create_stack(
            StackName=stack_name,
            TemplateBody=cloudformation.text(),
            Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in values.items()],
            Capabilities=["CAPABILITY_IAM"],
        )
        cfn.get_waiter("stack_create_complete").wait(StackName=stack_name, WaiterConfig={"Delay": 1})
        yield names, by_provision, stack_name
    finally:
        with contextlib.suppress(ClientError):
            cfn.delete_stack(StackName=stack_name)
        remove(names)
        ec2.delete_subnet(SubnetId=subnet)
        ec2.delete_vpc(VpcId=vpc)


def test_the_stack_makes_what_provision_makes_for_the_same_names(deployed) -> None:
    names, by_provision, _ = deployed

    by_stack = made(names)

    # the same queues, each of its dead-letter queue, timeouts and retention
    assert by_stack["queues"] == by_provision["queues"]
    expected = {topology.queue_name(names, q) for q in (*QUEUE_NAMES, *INTAKE_QUEUES)}
    expected |= {topology.dlq_name(names, o) for o in (*DLQ_OWNERS, *INTAKE_QUEUES)}
    assert set(by_stack["queues"]) == expected
    assert by_stack["queues"][topology.queue_name(names, "send")]["VisibilityTimeout"] == "700"
    assert by_stack["queues"][topology.queue_name(names, "send")]["dead letters"] == (
        topology.dlq_name(names, "send"),
        4,
    )
    # the same tables: keys, indexes, stream, capacity mode
    assert by_stack["tables"] == by_provision["tables"]
    assert by_stack["tables"][names.table_name]["stream"] == "NEW_AND_OLD_IMAGES"
    # the same Kinesis streams and shards, and the intake queue subscribed to the SMS events topic
    assert by_stack["streams"] == by_provision["streams"] == {names.sms_status_stream_name: ("ACTIVE", 2)}
    assert by_stack["subscriptions"] == by_provision["subscriptions"]
    assert by_stack["subscriptions"] == [("sqs", topology.queue_name(names, "intake-sms-events"))]


def test_moto_skips_only_the_types_the_other_tests_compare(deployed) -> None:
    names, _, stack_name = deployed
    template = Template(cloudformation.parameters(names))
    summaries = aws.client("cloudformation", names).list_stack_resources(StackName=stack_name)
    created = {r["LogicalResourceId"] for r in summaries["StackResourceSummaries"] if r["ResourceType"]}

    wanted = {logical: spec["Type"] for logical, spec in template.resources.items() if template.exists(logical)}

    # every resource of a type moto models was made, and the others are the ones compared below
    skipped = {kind for logical, kind in wanted.items() if logical not in created}
    assert skipped == {kind for kind in wanted.values() if kind in NOT_MODELLED}
    # (End User Messaging's and the pipe's resources are not asked for with these parameters)
    assert skipped == NOT_MODELLED - {"AWS::SNS::TopicPolicy", "AWS::SMSVOICE::ConfigurationSet", "AWS::Pipes::Pipe"}


def test_the_other_choices_deploy_too(deployed) -> None:
    # Given the choices the first deploy left at their defaults: End User Messaging, the pipe, the
    # demand table's Kinesis destination, provisioned capacity (no provision to compare with: moto
    # has no Kinesis destination API)
    names, _, first = deployed
    run = uuid.uuid4().hex[:8]
    other = mine(names, run).model_copy(
        update={
            "sms_provider": "eum",
            "eum_configuration_set": f"dmd-{run}",
            "demand_pipe_role_arn": "made by the stack",
            "demand_kinesis_stream_name": f"cfn-demand-changes-{run}",
        }
    )
    values = {
        **cloudformation.parameters(other),
        **DEPLOYMENT,
        "EumOriginationIdentityArn": f"arn:aws:sms-voice:us-east-1:{cloudformation.ACCOUNT}:pool/pool-{run}",
        "BillingMode": "PROVISIONED",
    }
    template = Template(values, stack_name=f"dmd-{run}")
    cfn = aws.client("cloudformation", other)
    network = cfn.describe_stacks(StackName=first)["Stacks"][0]["Parameters"]
    values |= {p["ParameterKey"]: p["ParameterValue"] for p in network if p["ParameterKey"] in ("VpcId", "SubnetIds")}
    try:
        # When deployed
        cfn.create_stack(
            StackName=template.stack_name,
            TemplateBody=cloudformation.text(),
            Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in values.items()],
            Capabilities=["CAPABILITY_IAM"],
        )
        cfn.get_waiter("stack_create_complete").wait(StackName=template.stack_name, WaiterConfig={"Delay": 1})

        # Then each resource those choices add is made (moto validates the policies' documents)
        summaries = cfn.list_stack_resources(StackName=template.stack_name)["StackResourceSummaries"]
        created = {r["LogicalResourceId"] for r in summaries if r["ResourceType"]}
        wanted = {logical for logical, spec in template.resources.items() if template.exists(logical)}
        assert {"WorkerSendEumPolicy", "BridgeDemandKinesisPolicy", "DemandChangesStream", "DemandPipeRole"} <= created
        assert {
            logical for logical in wanted - created if template.resources[logical]["Type"] not in NOT_MODELLED
        } == set()
        table = aws.client("dynamodb", other).describe_table(TableName=other.table_name)["Table"]
        assert table["ProvisionedThroughput"]["WriteCapacityUnits"] == 5
        # And the pipe's reader runs instead of bridge-demand
        ecs = aws.client("ecs", other)
        services = ecs.describe_services(cluster=template.stack_name, services=["bridge-demand", "bridge-sqs"])
        assert {s["serviceName"]: s["desiredCount"] for s in services["services"]} == {
            "bridge-demand": 0,
            "bridge-sqs": 1,
        }
    finally:
        with contextlib.suppress(ClientError):
            cfn.delete_stack(StackName=template.stack_name)
        remove(other)


def task_definitions(names: Settings, stack_name: str) -> dict[str, dict[str, Any]]:
    """Each service of the stack's cluster: its task definition."""
    ecs = aws.client("ecs", names)
    arns = ecs.list_services(cluster=stack_name)["serviceArns"]
    services = [
        s
        for i in range(0, len(arns), 10)
        for s in ecs.describe_services(cluster=stack_name, services=arns[i : i + 10])["services"]
    ]
    return {
        s["serviceName"]: ecs.describe_task_definition(taskDefinition=s["taskDefinition"])["taskDefinition"]
        for s in services
    }


def test_one_service_per_procfile_process_runs_its_command_beside_an_exporter(deployed) -> None:
    names, _, stack_name = deployed
    procfile = read_procfile()

    tasks = task_definitions(names, stack_name)

    assert set(tasks) == set(procfile)
    for name, task in tasks.items():
        containers = {c["name"]: c for c in task["containerDefinitions"]}
        assert containers[name]["command"] == shlex.split(procfile[name]), name
        if name != "metrics":  # the deployment's exporter; every other task has its own beside it
            exporter = containers["exporter"]["command"]
            assert exporter[:4] == ["python", "-m", "dmd_tasks.ops.cli", "metrics"], name
            cli.commands["metrics"].make_context("metrics", exporter[4:])  # options the command takes
            assert containers["exporter"]["mountPoints"] == containers[name]["mountPoints"], name


def test_every_container_reads_settings_that_name_what_the_stack_made(deployed, monkeypatch) -> None:
    names, _, stack_name = deployed
    for name, task in task_definitions(names, stack_name).items():
        for container in task["containerDefinitions"]:
            environment = {e["name"]: str(e["value"]) for e in container["environment"]}
            secrets = {s["name"]: SECRETS[s["name"]] for s in container.get("secrets", [])}
            with monkeypatch.context() as env:
                for variable in [v for v in os.environ if v.startswith(("DMD_", "AWS_"))]:
                    env.delenv(variable)
                for variable, value in {**environment, **secrets}.items():
                    env.setenv(variable, value)
                env.setenv("DMD_AWS_ENDPOINT_URL", names.aws_endpoint_url or "")  # moto plays AWS
                read = load_settings()
            where = f"{name}/{container['name']}"
            # on AWS (no endpoint), nothing would stop it but moto's account, the example one
            on_aws = read.model_copy(update={"aws_endpoint_url": None})
            assert on_aws.placeholders() == ["DMD_AWS_ACCOUNT_ID is the example account 123456789012: set it"], where
            assert read.profile == "aws" and read.sms_provider == names.sms_provider, where
            if container["name"] == "exporter":
                continue
            for setting in (
                "table_name",
                "notifications_table_name",
                "checkpoint_table_name",
                "queue_name_prefix",
                "sms_status_stream_name",
                "visibility_timeout_seconds",
                "intake_visibility_timeout_seconds",
                "sms_base_url",
                "accounts_base_url",
            ):
                assert getattr(read, setting) == getattr(names, setting), (where, setting)
            assert not read.demand_kinesis_stream_name, where


def role_statements(names: Settings, role: str) -> list[dict[str, Any]]:
    iam = aws.client("iam", names)
    statements = []
    for policy in iam.list_role_policies(RoleName=role)["PolicyNames"]:
        document = iam.get_role_policy(RoleName=role, PolicyName=policy)["PolicyDocument"]
        if isinstance(document, str):  # moto keeps a stack's inline policies as Python's repr of the JSON
            document = ast.literal_eval(document)
        statements += document["Statement"]
    return statements


def listed(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def test_each_process_role_names_its_resources_and_a_worker_takes_from_its_own_queue_only(deployed) -> None:
    names, _, stack_name = deployed
    sqs = aws.client("sqs", names)

    def queue_arn(queue: str) -> str:
        url = topology.queue_url(names, queue)
        return str(sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"])

    # (moto's task definitions keep no role: each service's role is read from the template, its
    # policies from IAM)
    template = Template(cloudformation.parameters(names))
    summaries = aws.client("cloudformation", names).list_stack_resources(StackName=stack_name)
    physical = {r["LogicalResourceId"]: r["PhysicalResourceId"] for r in summaries["StackResourceSummaries"]}
    roles = {}
    for spec in template.resources.values():
        if spec["Type"] == "AWS::ECS::Service":
            task = template.resources[spec["Properties"]["TaskDefinition"]["Ref"]]["Properties"]
            role = task.get("TaskRoleArn", {}).get("Fn::GetAtt", [None])[0]
            roles[spec["Properties"]["ServiceName"]] = role and physical[role]
    assert set(roles) == set(read_procfile())
    assert {n for n, role in roles.items() if not role} == {"api", "flower"}  # no AWS at all
    for name, role in roles.items():
        if not role:
            continue
        statements = role_statements(names, role)
        assert statements, name
        for statement in statements:
            assert statement["Effect"] == "Allow" and "*" not in listed(statement["Resource"]), (name, statement)
            assert not any(a.endswith("*") for a in listed(statement["Action"])), (name, statement)
        takes = {r for s in statements if "sqs:ReceiveMessage" in listed(s["Action"]) for r in listed(s["Resource"])}
        if name.startswith("worker-"):
            assert takes == {queue_arn(name.removeprefix("worker-"))}, name
        elif name == "bridge-sqs":
            assert takes == {queue_arn(q) for q in INTAKE_QUEUES}
        else:
            assert not takes, name


# --- what moto does not model, against provision's own calls -----------------------------------


class Calls:
    """A stand-in for the AWS clients provisioning uses: records each call, answers with what a
    first provisioning would get (nothing exists yet; ARNs made from the names)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.calls: dict[str, dict[str, Any]] = {}

    def __call__(self, *_: Any, **__: Any) -> Calls:  # aws.client(service, settings), session.client(...)
        return self

    def client(self, *_: Any, **__: Any) -> Calls:
        return self

    def __getattr__(self, operation: str) -> Any:
        def call(**kwargs: Any) -> dict[str, Any]:
            self.calls[operation] = kwargs
            return self.answer(operation, kwargs)

        return call

    def answer(self, operation: str, kwargs: dict[str, Any]) -> dict[str, Any]:
        s = self.settings
        if operation in ("describe_pipe", "describe_configuration_sets"):
            raise ClientError({"Error": {"Code": "ResourceNotFoundException"}}, operation)
        if operation == "get_queue_attributes":
            queue = kwargs["QueueUrl"].rsplit("/", 1)[1]
            return {"Attributes": {"QueueArn": f"arn:aws:sqs:{s.aws_region}:{s.aws_account_id}:{queue}"}}
        if operation == "create_topic":
            return {"TopicArn": f"arn:aws:sns:{s.aws_region}:{s.aws_account_id}:{kwargs['Name']}"}
        return {"Arn": "arn", "SubscriptionArn": "arn"}


@pytest.fixture()
def on_aws(settings) -> Settings:
    """The session's settings with AWS's own endpoints (queue URLs as AWS makes them)."""
    return settings.model_copy(update={"aws_endpoint_url": None})


@pytest.fixture()
def calls(on_aws, monkeypatch) -> Calls:
    recorder = Calls(on_aws)
    monkeypatch.setattr(aws, "client", recorder)
    monkeypatch.setattr(aws, "session_for", recorder)
    return recorder


def test_the_sms_events_topic_and_its_queue_policy_are_the_ones_provision_makes(on_aws, calls) -> None:
    template = Template(cloudformation.parameters(on_aws))

    provisioning.ensure_sms_events_topic(on_aws)

    topic = template.properties("SmsEventsTopic")
    assert topic["TopicName"] == calls.calls["create_topic"]["Name"]
    subscribe = calls.calls["subscribe"]
    assert topic["Subscription"] == [{"Protocol": subscribe["Protocol"], "Endpoint": subscribe["Endpoint"]}]
    policy = template.properties("IntakeSmsEventsQueuePolicy")
    assert policy["Queues"] == [calls.calls["set_queue_attributes"]["QueueUrl"]]
    assert policy["PolicyDocument"] == json.loads(calls.calls["set_queue_attributes"]["Attributes"]["Policy"])


def test_the_demand_pipe_is_the_one_provision_makes(on_aws, calls) -> None:
    piped = on_aws.model_copy(update={"demand_pipe_role_arn": "arn:aws:iam::123456789012:role/pipe"})
    template = Template(cloudformation.parameters(piped))
    stream = template.attribute("DemandTable", "StreamArn")

    provisioning.ensure_demand_pipe(piped, stream)

    made_by_provision = calls.calls["create_pipe"]
    pipe = template.properties("DemandPipe")
    for key in ("Name", "Source", "Target", "DesiredState"):
        assert pipe[key] == made_by_provision[key], key
    source, wanted = pipe["SourceParameters"], made_by_provision["SourceParameters"]
    assert source["DynamoDBStreamParameters"] == wanted["DynamoDBStreamParameters"]
    patterns = [json.loads(f["Pattern"]) for f in source["FilterCriteria"]["Filters"]]
    assert patterns == [json.loads(f["Pattern"]) for f in wanted["FilterCriteria"]["Filters"]]
    assert patterns == provisioning.DEMAND_PIPE_FILTERS
    # its role: what docs/operations.md asks of the pipe's role, on this stream and this queue only
    ((_, statements),) = [
        (p["PolicyName"], p["PolicyDocument"]["Statement"]) for p in template.properties("DemandPipeRole")["Policies"]
    ]
    assert {r for s in statements for r in listed(s["Resource"])} == {
        stream,
        pipe["Target"],
        wanted["DynamoDBStreamParameters"]["DeadLetterConfig"]["Arn"],
    }
    assert not Template(cloudformation.parameters(on_aws)).exists("DemandPipe")  # not asked for: none


def test_the_end_user_messaging_configuration_set_is_the_one_provision_makes(on_aws, calls) -> None:
    eum = on_aws.model_copy(
        update={
            "sms_provider": "eum",
            "eum_configuration_set": "dmd-sms-test",
            "eum_origination_identity": "arn:aws:sms-voice:us-east-1:123456789012:pool/pool-0123",
        }
    )
    template = Template({**cloudformation.parameters(eum), "EumOriginationIdentityArn": eum.eum_origination_identity})
    topic = template.ref("SmsEventsTopic")

    provisioning.ensure_eum_configuration_set(eum, topic)

    configuration = template.properties("EumConfigurationSet")
    assert configuration["ConfigurationSetName"] == calls.calls["create_configuration_set"]["ConfigurationSetName"]
    destination = calls.calls["create_event_destination"]
    assert configuration["EventDestinations"] == [
        {
            "EventDestinationName": destination["EventDestinationName"],
            "Enabled": True,
            "MatchingEventTypes": destination["MatchingEventTypes"],
            "SnsDestination": destination["SnsDestination"],
        }
    ]
    # the topic lets this configuration set publish, and the send workers may send from the identity
    (statement,) = template.properties("SmsEventsTopicPolicy")["PolicyDocument"]["Statement"]
    assert statement["Principal"] == {"Service": "sms-voice.amazonaws.com"} and statement["Resource"] == topic
    assert statement["Condition"]["ArnLike"]["aws:SourceArn"].endswith(":configuration-set/dmd-sms-test")
    # ... the policy provision sets on the topic
    (provisioned,) = provisioning.eum_topic_policy(eum, topic)["Statement"]
    assert statement == provisioned
    (send,) = template.properties("WorkerSendEumPolicy")["PolicyDocument"]["Statement"]
    assert send["Resource"][0] == eum.eum_origination_identity
    assert not Template(cloudformation.parameters(on_aws)).exists("EumConfigurationSet")  # http: none


def test_every_worker_scales_on_the_backlog_of_its_own_queue(settings) -> None:
    template = Template(cloudformation.parameters(settings))
    targets = {
        logical: template.properties(logical)
        for logical, spec in template.resources.items()
        if spec["Type"] == "AWS::ApplicationAutoScaling::ScalableTarget"
    }
    scaled = {}
    for spec in template.resources.values():
        if spec["Type"] != "AWS::ApplicationAutoScaling::ScalingPolicy":
            continue
        policy = template.resolve(spec["Properties"])
        target = targets[policy["ScalingTargetId"]]
        metrics = {
            m["Id"]: m
            for m in policy["TargetTrackingScalingPolicyConfiguration"]["CustomizedMetricSpecification"]["Metrics"]
        }
        queue = metrics["visible"]["MetricStat"]["Metric"]
        assert queue["MetricName"] == "ApproximateNumberOfMessagesVisible"
        (dimension,) = queue["Dimensions"]
        service = target["ResourceId"].rsplit("/", 1)[1]
        tasks = {d["Name"]: d["Value"] for d in metrics["tasks"]["MetricStat"]["Metric"]["Dimensions"]}
        assert tasks == {"ClusterName": template.stack_name, "ServiceName": service}
        assert metrics["backlog"]["Expression"] == "visible / tasks"
        assert target["ResourceId"] == f"service/{template.stack_name}/{service}"
        assert 1 <= target["MinCapacity"] <= target["MaxCapacity"]
        scaled[service] = dimension["Value"]

    assert scaled == {f"worker-{q}": topology.queue_name(settings, q) for q in QUEUE_NAMES}
