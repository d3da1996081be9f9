"""deploy/cloudformation/dmd.yaml read as CloudFormation reads it, for the tests.

``load()`` reads the YAML with its short forms (``!Ref``, ``!Sub`` ...) as their long forms;
``Template.resolve`` evaluates a resource's properties for given parameters (Ref, Fn::GetAtt,
Fn::Sub, Fn::If, Fn::Join, conditions), with each resource's Ref and attributes made from its
name as AWS makes them: what the resources moto does not model are compared with.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dmd_tasks.infra.settings import Settings

PATH = Path(__file__).resolve().parents[1] / "deploy" / "cloudformation" / "dmd.yaml"


class _Loader(yaml.SafeLoader):
    """YAML with CloudFormation's tags: ``!GetAtt A.B`` is ``{"Fn::GetAtt": ["A", "B"]}``."""


def _tag(loader: _Loader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    key = suffix if suffix in ("Ref", "Condition") else f"Fn::{suffix}"
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
        if suffix == "GetAtt":
            value = str(value).split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    return {key: value}


_Loader.add_multi_constructor("!", _tag)


@functools.cache
def load(path: Path = PATH) -> dict[str, Any]:
    """The template (parsed once: treat it as read-only)."""
    return yaml.load(path.read_text(), Loader=_Loader)  # a SafeLoader with the tags added


def text(path: Path = PATH) -> str:
    return path.read_text()


#: The account and region a static reading resolves in (the session's, as moto's).
ACCOUNT, REGION = "123456789012", "us-east-1"


@dataclass
class Template:
    """The template with its parameters set (defaults for those not given)."""

    parameters: dict[str, str]
    body: dict[str, Any] = field(default_factory=load)
    stack_name: str = "dmd"

    def __post_init__(self) -> None:
        declared = self.body["Parameters"]
        unknown = set(self.parameters) - set(declared)
        if unknown:
            raise KeyError(f"not parameters of the template: {sorted(unknown)}")
        self.values: dict[str, Any] = {
            name: self.parameters.get(name, spec.get("Default")) for name, spec in declared.items()
        }
        self.values.update(
            {
                "AWS::AccountId": ACCOUNT,
                "AWS::Region": REGION,
                "AWS::Partition": "aws",
                "AWS::URLSuffix": "amazonaws.com",
                "AWS::StackName": self.stack_name,
            }
        )

    @property
    def resources(self) -> dict[str, dict[str, Any]]:
        return dict(self.body["Resources"])

    def condition(self, name: str) -> bool:
        return bool(self._condition(self.body["Conditions"][name]))

    def exists(self, logical_id: str) -> bool:
        """Whether the resource is created with these parameters (its condition holds)."""
        condition = self.resources[logical_id].get("Condition")
        return condition is None or self.condition(condition)

    def properties(self, logical_id: str) -> dict[str, Any]:
        """The resource's properties, every function evaluated."""
        if not self.exists(logical_id):
            raise LookupError(f"{logical_id} is not created with these parameters")
        resolved = self.resolve(self.resources[logical_id].get("Properties", {}))
        assert isinstance(resolved, dict)
        return resolved

    def _condition(self, node: Any) -> Any:
        if isinstance(node, dict) and len(node) == 1:
            ((key, args),) = node.items()
            if key == "Condition":
                return self.condition(args)
            if key == "Fn::Equals":
                return str(self.resolve(args[0])) == str(self.resolve(args[1]))
            if key == "Fn::Not":
                return not self._condition(args[0])
            if key == "Fn::Or":
                return any(self._condition(a) for a in args)
            if key == "Fn::And":
                return all(self._condition(a) for a in args)
        return self.resolve(node)

    _NO_VALUE = object()

    def resolve(self, node: Any) -> Any:
        value = self._resolve(node)
        return None if value is self._NO_VALUE else value

    def _resolve(self, node: Any) -> Any:
        if isinstance(node, list):
            return [v for v in (self._resolve(n) for n in node) if v is not self._NO_VALUE]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            ((key, args),) = node.items()
            if key == "Ref":
                return self._NO_VALUE if args == "AWS::NoValue" else self.ref(args)
            if key == "Fn::GetAtt":
                return self.attribute(args[0], args[1])
            if key == "Fn::Sub":
                return self._sub(args)
            if key == "Fn::If":
                return self._resolve(args[1] if self.condition(args[0]) else args[2])
            if key == "Fn::Join":
                return str(args[0]).join(str(v) for v in self._resolve(args[1]))
            if key == "Fn::FindInMap":
                found: Any = self.body["Mappings"]
                for part in args:
                    found = found[self._resolve(part)]
                return found
            if key.startswith("Fn::"):
                raise NotImplementedError(key)
        return {k: v for k, v in ((k, self._resolve(v)) for k, v in node.items()) if v is not self._NO_VALUE}

    def _sub(self, args: Any) -> str:
        template, names = (args, {}) if isinstance(args, str) else (args[0], args[1])

        def value(match: re.Match[str]) -> str:
            name = match.group(1)
            if name in names:
                return str(self.resolve(names[name]))
            if "." in name and name.split(".", 1)[0] in self.resources:
                return str(self.attribute(*name.split(".", 1)))
            return str(self.ref(name))

        return re.sub(r"\$\{([^!}][^}]*)\}", value, template)

    # --- what a resource's Ref and attributes are, made from its name as AWS makes them ----------

    def ref(self, name: str) -> Any:
        if name in self.values:
            return self.values[name]
        kind = self.resources[name]["Type"]
        props = self.resources[name].get("Properties", {})
        if kind == "AWS::SQS::Queue":
            return f"https://sqs.{REGION}.amazonaws.com/{ACCOUNT}/{self.resolve(props['QueueName'])}"
        if kind == "AWS::SNS::Topic":
            return f"arn:aws:sns:{REGION}:{ACCOUNT}:{self.resolve(props['TopicName'])}"
        if kind in ("AWS::DynamoDB::Table", "AWS::ECS::Cluster", "AWS::IAM::Role"):
            name_property = {"AWS::DynamoDB::Table": "TableName", "AWS::ECS::Cluster": "ClusterName"}.get(kind)
            return self.resolve(props[name_property]) if name_property else name
        return name  # the logical id stands for what AWS would name it

    def attribute(self, name: str, attribute: str) -> Any:
        kind = self.resources[name]["Type"]
        props = self.resources[name].get("Properties", {})
        if kind == "AWS::SQS::Queue" and attribute in ("Arn", "QueueName"):
            queue = self.resolve(props["QueueName"])
            return queue if attribute == "QueueName" else f"arn:aws:sqs:{REGION}:{ACCOUNT}:{queue}"
        if kind == "AWS::DynamoDB::Table" and attribute in ("Arn", "StreamArn"):
            arn = f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{self.resolve(props['TableName'])}"
            return arn if attribute == "Arn" else f"{arn}/stream/LATEST"
        if kind == "AWS::Kinesis::Stream" and attribute == "Arn":
            return f"arn:aws:kinesis:{REGION}:{ACCOUNT}:stream/{self.resolve(props['Name'])}"
        if kind == "AWS::ECS::Service" and attribute == "Name":
            return self.resolve(props["ServiceName"])
        if kind == "AWS::IAM::Role" and attribute == "Arn":
            return f"arn:aws:iam::{ACCOUNT}:role/{name}"
        if kind == "AWS::Logs::LogGroup" and attribute == "Arn":
            return f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:{self.resolve(props['LogGroupName'])}:*"
        raise NotImplementedError(f"{kind}.{attribute}")


def parameters(settings: Settings) -> dict[str, str]:
    """The template's parameters for these settings: each setting that names or sizes a resource
    (the rest of the parameters describe the deployment, not dmd's settings)."""
    return {
        "TableName": settings.table_name,
        "NotificationsTableName": settings.notifications_table_name,
        "CheckpointTableName": settings.checkpoint_table_name,
        "QueueNamePrefix": settings.queue_name_prefix,
        "SmsStatusStreamName": settings.sms_status_stream_name,
        "SmsStatusShards": str(settings.sms_status_shards),
        "DemandKinesisStreamName": settings.demand_kinesis_stream_name or "",
        "VisibilityTimeoutSeconds": str(settings.visibility_timeout_seconds),
        "IntakeVisibilityTimeoutSeconds": str(settings.intake_visibility_timeout_seconds),
        "DlqMaxReceiveCount": str(settings.dlq_max_receive_count),
        "SmsProvider": settings.sms_provider,
        "SmsBaseUrl": settings.sms_base_url,
        "SmsAccountPartsPerSecond": f"{settings.sms_account_parts_per_second:g}",
        "AccountsBaseUrl": settings.accounts_base_url,
        "DemandChangesVia": "pipe" if settings.demand_pipe_role_arn else "bridge",
        **({"EumConfigurationSetName": settings.eum_configuration_set} if settings.eum_configuration_set else {}),
    }
