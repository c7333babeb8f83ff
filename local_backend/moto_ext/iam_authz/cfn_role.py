"""CloudFormation acts as its execution role, as on AWS.

A stack created or updated with a `RoleARN` (the CDK's cfn-exec role) makes every call to the
other services as that role's session (`assumed-role/<role>/AWSCloudFormation`), with the
role's own policies; a stack without one acts as the caller of the operation. moto builds
resources by calling its backends directly, so the calls never pass the request hooks: each
resource is authorized here, before it is built, with the IAM actions its create (or update)
handler calls (`TYPE_ACTIONS`, from the CloudFormation resource schemas' handler permissions,
the calls that act on the resource). A denial fails that resource with AWS's resource-handler
message and the stack rolls back (the CloudFormation extension does the rollback). A type
without an entry is built unchecked, with a warning naming it once (`unmapped_types` counts).
Deletes are not authorized (see docs/limitations.md).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

from ..identity import Caller
from . import models, responses, service_roles

log = logging.getLogger("enclavekit.iam")
SESSION_NAME = "AWSCloudFormation"  # the session name CloudFormation uses for a service role
CFN_SERVICE = "cloudformation.amazonaws.com"
_WARNED: set[str] = set()
_ANNOUNCED: set[tuple[str, str]] = set()
_LOCK = threading.Lock()
# IAM's service names as the resource handlers print them: "(Service: Iam, Status Code: 403"
HANDLER_SERVICE = {"iam": "Iam", "s3": "S3", "ec2": "Ec2", "kms": "Kms", "ssm": "Ssm"}

Props = Mapping[str, Any]
# (name, props, account, region) -> [(action, resource)]
Rule = Callable[[str, Props, str, str], list[tuple[str, str]]]


class ResourceAccessDenied(Exception):
    """A resource its acting principal may not create; `message` is the event's reason."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _strs(v: Any) -> list[str]:
    if isinstance(v, str):
        return [v]
    if isinstance(v, list):
        return [x for x in v if isinstance(x, str)]
    return []


def _star(*names: str) -> Rule:
    return lambda name, p, acct, region: [(a, "*") for a in names]


def _role(name: str, p: Props, acct: str, region: str) -> list[tuple[str, str]]:
    arn = f"arn:aws:iam::{acct}:role{p.get('Path') or '/'}{name}"
    out = [("iam:CreateRole", arn)]
    if p.get("Policies"):
        out.append(("iam:PutRolePolicy", arn))
    out += [("iam:AttachRolePolicy", arn) for _ in _strs(p.get("ManagedPolicyArns"))[:1]]
    return out


def _role_arns(p: Props, acct: str) -> list[str]:
    return [
        r if r.startswith("arn:") else f"arn:aws:iam::{acct}:role/{r}"
        for r in _strs(p.get("Roles"))
    ]


def _policy(name: str, p: Props, acct: str, region: str) -> list[tuple[str, str]]:
    out = [("iam:PutRolePolicy", arn) for arn in _role_arns(p, acct)]
    out += [("iam:PutUserPolicy", f"arn:aws:iam::{acct}:user/{u}") for u in _strs(p.get("Users"))]
    out += [
        ("iam:PutGroupPolicy", f"arn:aws:iam::{acct}:group/{g}") for g in _strs(p.get("Groups"))
    ]
    return out


def _managed_policy(name: str, p: Props, acct: str, region: str) -> list[tuple[str, str]]:
    policy = p.get("ManagedPolicyName") or name
    out = [("iam:CreatePolicy", f"arn:aws:iam::{acct}:policy{p.get('Path') or '/'}{policy}")]
    return out + [("iam:AttachRolePolicy", arn) for arn in _role_arns(p, acct)]


def _instance_profile(name: str, p: Props, acct: str, region: str) -> list[tuple[str, str]]:
    arn = f"arn:aws:iam::{acct}:instance-profile{p.get('Path') or '/'}{name}"
    return [("iam:CreateInstanceProfile", arn), ("iam:AddRoleToInstanceProfile", arn)]


def _bucket(name: str, p: Props, acct: str, region: str) -> list[tuple[str, str]]:
    return [("s3:CreateBucket", f"arn:aws:s3:::{name}")]


def _bucket_policy(name: str, p: Props, acct: str, region: str) -> list[tuple[str, str]]:
    return [("s3:PutBucketPolicy", f"arn:aws:s3:::{p.get('Bucket')}")]


def _parameter(name: str, p: Props, acct: str, region: str) -> list[tuple[str, str]]:
    return [("ssm:PutParameter", f"arn:aws:ssm:{region}:{acct}:parameter/{name.lstrip('/')}")]


def _alias(name: str, p: Props, acct: str, region: str) -> list[tuple[str, str]]:
    return [("kms:CreateAlias", f"arn:aws:kms:{region}:{acct}:{p.get('AliasName') or name}")]


def _secret(name: str, p: Props, acct: str, region: str) -> list[tuple[str, str]]:
    return [
        ("secretsmanager:CreateSecret", f"arn:aws:secretsmanager:{region}:{acct}:secret:{name}")
    ]


def _function(name: str, p: Props, acct: str, region: str) -> list[tuple[str, str]]:
    out = [("lambda:CreateFunction", f"arn:aws:lambda:{region}:{acct}:function:{name}")]
    return out + [("iam:PassRole", r) for r in _strs(p.get("Role"))]


def _log_group(name: str, p: Props, acct: str, region: str) -> list[tuple[str, str]]:
    group = p.get("LogGroupName") or name
    return [("logs:CreateLogGroup", f"arn:aws:logs:{region}:{acct}:log-group:{group}")]


def _association(name: str, p: Props, acct: str, region: str) -> list[tuple[str, str]]:
    cert, role = p.get("CertificateArn"), p.get("RoleArn")
    return [("ec2:AssociateEnclaveCertificateIamRole", str(r)) for r in (cert, role) if r]


def _state_machine(name: str, p: Props, acct: str, region: str) -> list[tuple[str, str]]:
    arn = f"arn:aws:states:{region}:{acct}:stateMachine:{p.get('StateMachineName') or name}"
    return [("states:CreateStateMachine", arn)] + [
        ("iam:PassRole", r) for r in _strs(p.get("RoleArn"))
    ]


def _custom(name: str, p: Props, acct: str, region: str) -> list[tuple[str, str]]:
    token = str(p.get("ServiceToken") or "")
    if token.startswith("arn:aws:lambda:"):
        return [("lambda:InvokeFunction", token)]
    if token.startswith("arn:aws:sns:"):
        return [("sns:Publish", token)]
    return []


TYPE_ACTIONS: dict[str, Rule] = {
    "AWS::CDK::Metadata": _star(),
    "AWS::CloudFormation::WaitConditionHandle": _star(),
    "AWS::IAM::Role": _role,
    "AWS::IAM::Policy": _policy,
    "AWS::IAM::ManagedPolicy": _managed_policy,
    "AWS::IAM::InstanceProfile": _instance_profile,
    "AWS::S3::Bucket": _bucket,
    "AWS::S3::BucketPolicy": _bucket_policy,
    "AWS::SSM::Parameter": _parameter,
    "AWS::KMS::Key": _star("kms:CreateKey"),
    "AWS::KMS::Alias": _alias,
    "AWS::SecretsManager::Secret": _secret,
    "AWS::CertificateManager::Certificate": _star("acm:RequestCertificate"),
    "AWS::Lambda::Function": _function,
    "AWS::Lambda::Permission": lambda n, p, a, r: [
        ("lambda:AddPermission", str(p.get("FunctionName")))
    ],
    "AWS::Logs::LogGroup": _log_group,
    "AWS::StepFunctions::StateMachine": _state_machine,
    "AWS::EC2::VPC": _star("ec2:CreateVpc"),
    "AWS::EC2::Subnet": _star("ec2:CreateSubnet"),
    "AWS::EC2::SecurityGroup": _star("ec2:CreateSecurityGroup"),
    "AWS::EC2::SecurityGroupIngress": _star("ec2:AuthorizeSecurityGroupIngress"),
    "AWS::EC2::SecurityGroupEgress": _star("ec2:AuthorizeSecurityGroupEgress"),
    "AWS::EC2::InternetGateway": _star("ec2:CreateInternetGateway"),
    "AWS::EC2::VPCGatewayAttachment": _star("ec2:AttachInternetGateway"),
    "AWS::EC2::RouteTable": _star("ec2:CreateRouteTable"),
    "AWS::EC2::Route": _star("ec2:CreateRoute"),
    "AWS::EC2::SubnetRouteTableAssociation": _star("ec2:AssociateRouteTable"),
    "AWS::EC2::EIP": _star("ec2:AllocateAddress"),
    "AWS::EC2::NatGateway": _star("ec2:CreateNatGateway"),
    "AWS::EC2::Instance": _star("ec2:RunInstances"),
    "AWS::EC2::LaunchTemplate": _star("ec2:CreateLaunchTemplate"),
    "AWS::EC2::VPCEndpoint": _star("ec2:CreateVpcEndpoint"),
    "AWS::EC2::KeyPair": _star("ec2:CreateKeyPair"),
    "AWS::EC2::EnclaveCertificateIamRoleAssociation": _association,
    "AWS::AutoScaling::AutoScalingGroup": _star("autoscaling:CreateAutoScalingGroup"),
    "AWS::AutoScaling::LaunchConfiguration": _star("autoscaling:CreateLaunchConfiguration"),
    "AWS::ElasticLoadBalancingV2::LoadBalancer": _star("elasticloadbalancing:CreateLoadBalancer"),
    "AWS::ElasticLoadBalancingV2::TargetGroup": _star("elasticloadbalancing:CreateTargetGroup"),
    "AWS::ElasticLoadBalancingV2::Listener": _star("elasticloadbalancing:CreateListener"),
    "AWS::SNS::Topic": _star("sns:CreateTopic"),
    "AWS::SQS::Queue": _star("sqs:CreateQueue"),
    "AWS::DynamoDB::Table": _star("dynamodb:CreateTable"),
    "AWS::IAM::User": lambda n, p, a, r: [
        ("iam:CreateUser", f"arn:aws:iam::{a}:user{p.get('Path') or '/'}{n}")
    ],
    "AWS::IAM::AccessKey": lambda n, p, a, r: [
        ("iam:CreateAccessKey", f"arn:aws:iam::{a}:user/{p.get('UserName')}")
    ],
    "AWS::Lambda::Version": _star("lambda:PublishVersion"),
    "AWS::Lambda::LayerVersion": _star("lambda:PublishLayerVersion"),
    "AWS::Lambda::EventSourceMapping": _star("lambda:CreateEventSourceMapping"),
    "AWS::Logs::ResourcePolicy": _star("logs:PutResourcePolicy"),
    "AWS::Events::Rule": _star("events:PutRule"),
    "AWS::Events::EventBus": _star("events:CreateEventBus"),
    "AWS::ECR::Repository": _star("ecr:CreateRepository"),
    "AWS::ECS::Cluster": _star("ecs:CreateCluster"),
    "AWS::ECS::Service": _star("ecs:CreateService"),
    "AWS::ECS::TaskDefinition": _star("ecs:RegisterTaskDefinition"),
    "AWS::Route53::HostedZone": _star("route53:CreateHostedZone"),
    "AWS::Route53::RecordSet": _star("route53:ChangeResourceRecordSets"),
    "AWS::Route53::RecordSetGroup": _star("route53:ChangeResourceRecordSets"),
    "AWS::EC2::Volume": _star("ec2:CreateVolume"),
    "AWS::EC2::VolumeAttachment": _star("ec2:AttachVolume"),
    "AWS::EC2::NetworkInterface": _star("ec2:CreateNetworkInterface"),
    "AWS::EC2::FlowLog": _star("ec2:CreateFlowLogs"),
    "AWS::ElasticLoadBalancingV2::ListenerRule": _star("elasticloadbalancing:CreateRule"),
    "AWS::SSM::Document": _star("ssm:CreateDocument"),
    "AWS::Kinesis::Stream": _star("kinesis:CreateStream"),
    "AWS::CloudFormation::Stack": _star("cloudformation:CreateStack"),
}
# Updates that change a resource in place call these instead (others: as their create).
UPDATE_ACTIONS: dict[str, Rule] = {
    "AWS::IAM::Role": lambda n, p, a, r: [
        ("iam:UpdateAssumeRolePolicy", f"arn:aws:iam::{a}:role{p.get('Path') or '/'}{n}")
    ],
    "AWS::KMS::Key": _star("kms:PutKeyPolicy"),
    "AWS::EC2::Instance": _star("ec2:ModifyInstanceAttribute"),
    "AWS::Lambda::Function": lambda n, p, a, r: [
        ("lambda:UpdateFunctionCode", f"arn:aws:lambda:{r}:{a}:function:{n}")
    ],
}


def resource_types(types: frozenset[str]) -> list[str]:
    """The real resource types among moto's model names (some models name none: "?")."""
    return sorted(t for t in types if t.count("::") == 2 and t != "AWS::SERVICE::RESOURCE")


def unmapped_types(types: frozenset[str]) -> list[str]:
    """The deployable resource types that are built without an authorization check."""
    custom = ("Custom::", "AWS::CloudFormation::CustomResource")
    return [t for t in resource_types(types) if t not in TYPE_ACTIONS and not t.startswith(custom)]


def _acting(stack: Any) -> Caller | None:
    """Who CloudFormation acts as for `stack`: its role's session, else the request's caller."""
    role_arn = getattr(stack, "role_arn", None)
    if not role_arn:
        return responses.request_caller()
    account = role_arn.split(":")[4] if role_arn.count(":") >= 5 else stack.account_id
    name = role_arn.rsplit("/", 1)[-1]
    session = f"arn:aws:sts::{account}:assumed-role/{name}/{SESSION_NAME}"
    return Caller("", account, role_arn, session, "role", name)


def authorize(
    stack: Any, logical_id: str, resource_type: str, name: str, props: Props, update: bool
) -> None:
    """Raise ResourceAccessDenied if the stack's acting principal may not build the resource."""
    if not responses.enabled():
        return
    caller = _acting(stack)
    if caller is None:
        return
    _announce(stack, caller)
    if caller.kind == "root":
        return
    role_arn = getattr(stack, "role_arn", None)
    if role_arn and not service_roles.may_assume(CFN_SERVICE, role_arn, stack.region_name).allowed:
        raise ResourceAccessDenied(f"Role {caller.principal} is invalid or cannot be assumed")
    rule = (UPDATE_ACTIONS.get(resource_type) if update else None) or TYPE_ACTIONS.get(
        resource_type
    )
    if rule is None and resource_type.startswith(("Custom::", "AWS::CloudFormation::Custom")):
        rule = _custom
    if rule is None:
        _warn_unmapped(resource_type)
        return
    identity = models.caller_policies(caller)
    for action, resource in rule(name, props, caller.account, stack.region_name):
        res = models.resource_policy(action.split(":")[0], action, resource, stack.region_name)
        keys = models.request_keys(caller, stack.region_name, {})
        if action == "iam:PassRole":
            keys["iam:PassedToService"] = _passed_to(resource_type)
        verdict = models.decide(caller, action, resource, keys, identity, res)
        if verdict.allowed:
            continue
        text = (
            f"User: {caller.display_arn} is not authorized to perform: {action} on resource: "
            f"{resource} {verdict.reason}"
        )
        log.warning("AccessDenied: %s (stack %s, %s)", text, stack.name, logical_id)
        prefix = action.split(":")[0]
        service = HANDLER_SERVICE.get(prefix, prefix.capitalize())
        raise ResourceAccessDenied(
            f'Resource handler returned message: "{text} (Service: {service}, Status Code: '
            f'403, Request ID: 00000000-0000-0000-0000-000000000000)" (RequestToken: '
            f"00000000-0000-0000-0000-000000000000, HandlerErrorCode: AccessDenied)"
        )


def _passed_to(resource_type: str) -> str:
    service = resource_type.split("::")[1].lower() if "::" in resource_type else ""
    return {"stepfunctions": "states"}.get(service, service) + ".amazonaws.com"


def _announce(stack: Any, caller: Caller) -> None:
    """One log line per stack and acting principal: who CloudFormation acts as."""
    with _LOCK:
        if (stack.stack_id, caller.display_arn) in _ANNOUNCED:
            return
        _ANNOUNCED.add((stack.stack_id, caller.display_arn))
    log.info("IAM: CloudFormation acts as %s for stack %s", caller.display_arn, stack.name)


def _warn_unmapped(resource_type: str) -> None:
    with _LOCK:
        if resource_type in _WARNED:
            return
        _WARNED.add(resource_type)
    log.warning(
        "IAM: CloudFormation type %s is not mapped to IAM actions: built unchecked", resource_type
    )


def install() -> None:
    """Hook moto's resource parsing (every create and update passes it once, with the name)."""
    from moto.cloudformation import models as cfn_models
    from moto.cloudformation import parsing

    if getattr(parsing, "_enclavekit_cfn_role", False):
        return
    original = parsing.parse_resource_and_generate_name

    def parse_resource_and_generate_name(
        logical_id: str, resource_json: dict[str, Any], resources_map: Any
    ) -> Any:
        out = original(logical_id, resource_json, resources_map)
        if out:
            backend = cfn_models.cloudformation_backends[resources_map._account_id][
                resources_map._region_name
            ]
            stack = backend.stacks.get(resources_map.stack_id)
            if stack is not None:
                _cls, parsed_json, name = out
                update = logical_id in resources_map._parsed_resources
                props = parsed_json.get("Properties") or {}
                rtype = str(parsed_json.get("Type") or resource_json.get("Type"))
                authorize(stack, logical_id, rtype, str(name), props, update)
        return out

    parsing.parse_resource_and_generate_name = parse_resource_and_generate_name

    original_apply = cfn_models.ChangeSet.apply

    def apply(self: Any) -> None:
        # The change set's RoleARN becomes the stack's; without one the stack keeps its own.
        if self.role_arn:
            self.stack.role_arn = self.role_arn
        original_apply(self)

    cfn_models.ChangeSet.apply = apply  # type: ignore[method-assign]
    parsing._enclavekit_cfn_role = True  # type: ignore[attr-defined]
