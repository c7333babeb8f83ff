"""`AWS::ElasticLoadBalancingV2::LoadBalancer` as CloudFormation creates it.

moto 5.2.5 drops the template's `Type`, `Name`, `SubnetMappings`, `IpAddressType` and `Tags`, so
every load balancer became an application one and an NLB's `TCP`/`TLS` listener was refused
("must be one of HTTP, HTTPS"). The backend call itself (validation included) is moto's.
"""

from __future__ import annotations

from typing import Any

from moto.elbv2.models import FakeLoadBalancer, elbv2_backends


def _create_load_balancer(
    cls: type[FakeLoadBalancer],
    resource_name: str,
    cloudformation_json: Any,
    account_id: str,
    region_name: str,
    **kwargs: Any,
) -> FakeLoadBalancer:
    props = cloudformation_json["Properties"]
    backend = elbv2_backends[account_id][region_name]
    return backend.create_load_balancer(
        props.get("Name") or resource_name,
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
    FakeLoadBalancer.create_from_cloudformation_json = classmethod(_create_load_balancer)  # type: ignore[assignment]
