"""Route tables under CloudFormation, deleted and associated as AWS does it: a route table
disassociates its subnets before it goes, a subnet association is a real association (its id
is the physical id) that deletes itself, and a route deletes from its table. moto 5.2.5 lacks
these deletes, so a stack with its own route tables would not delete cleanly.
"""

from __future__ import annotations

from moto.ec2.models import ec2_backends
from moto.ec2.models.route_tables import Route, RouteTable
from moto.ec2.models.subnets import SubnetRouteTableAssociation

from ..cfn_resource import CfnCall, patch_cfn_create


def _route_table_delete(self: RouteTable, account_id: str, region_name: str) -> None:
    backend = ec2_backends[account_id][region_name]
    for association_id in list(self._associations):
        backend.disassociate_route_table(association_id)
    backend.route_tables.pop(self.id, None)


def _create_subnet_rt_association(call: CfnCall) -> SubnetRouteTableAssociation:
    props = call.props
    backend = ec2_backends[call.account_id][call.region]
    association = backend.create_subnet_association(
        route_table_id=props["RouteTableId"], subnet_id=props["SubnetId"]
    )
    association.association_id = backend.associate_route_table(  # type: ignore[attr-defined]
        props["RouteTableId"], subnet_id=props["SubnetId"]
    )
    association.account_id = call.account_id  # type: ignore[attr-defined]
    association.region_name = call.region  # type: ignore[attr-defined]
    return association


def _subnet_rt_association_id(self: SubnetRouteTableAssociation) -> str:
    return getattr(self, "association_id", None) or self.route_table_id


def _subnet_rt_association_delete(
    self: SubnetRouteTableAssociation, account_id: str, region_name: str
) -> None:
    backend = ec2_backends[account_id][region_name]
    backend.subnet_associations.pop(f"{self.route_table_id}:{self.subnet_id}", None)
    association_id = getattr(self, "association_id", None)
    if association_id:
        rt = backend.route_tables.get(self.route_table_id)
        if rt is not None and association_id in rt._associations:
            backend.disassociate_route_table(association_id)


def _route_delete(self: Route, account_id: str, region_name: str) -> None:
    self.route_table._routes.pop(self.id, None)


def install() -> None:
    """Patch moto's route table models (idempotent)."""
    RouteTable.delete = _route_table_delete  # type: ignore[attr-defined]
    Route.delete = _route_delete  # type: ignore[attr-defined]
    patch_cfn_create(SubnetRouteTableAssociation, _create_subnet_rt_association)
    SubnetRouteTableAssociation.physical_resource_id = property(  # type: ignore[assignment,method-assign]
        _subnet_rt_association_id
    )
    SubnetRouteTableAssociation.delete = _subnet_rt_association_delete  # type: ignore[attr-defined]
