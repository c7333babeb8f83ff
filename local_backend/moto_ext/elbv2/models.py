"""`AWS::ElasticLoadBalancingV2::LoadBalancer` as CloudFormation creates it.

moto 5.2.5 drops the template's `Type`, `Name`, `SubnetMappings`, `IpAddressType` and `Tags`, so
every load balancer became an application one and an NLB's `TCP`/`TLS` listener was refused
("must be one of HTTP, HTTPS"). The backend call itself (validation included) is moto's.
"""

from __future__ import annotations

from moto.elbv2.models import FakeLoadBalancer, elbv2_backends

from ..cfn_resource import CfnCall, patch_cfn_create


def _create_load_balancer(call: CfnCall) -> FakeLoadBalancer:
    props = call.props
    backend = elbv2_backends[call.account_id][call.region]
    return backend.create_load_balancer(
        props.get("Name") or call.name,
        props.get("SecurityGroups") or [],
        props.get("Subnets") or [],
        subnet_mappings=props.get("SubnetMappings"),
        scheme=props.get("Scheme", "internet-facing"),
        loadbalancer_type=props.get("Type", "application"),
        ip_address_type=props.get("IpAddressType", "ipv4"),
        tags=props.get("Tags"),
    )


def install() -> None:
    """Swap in the create above (idempotent)."""
    patch_cfn_create(FakeLoadBalancer, _create_load_balancer)
