"""Before a job in a VPC is launched: can it reach its file systems and S3? (EC2, FSx, EFS APIs.)

A job whose network is wrong fails only after minutes of provisioning; `invoke train` asks AWS
first: each file system exists in the job's region and is FSx for Lustre or EFS as its scheme
says, lies in the VPC of the job's subnets and in each subnet's availability zone, and is
reachable on its port from the job's security groups; each subnet routes to S3 (a gateway
endpoint, or a NAT gateway for 0.0.0.0/0). Every problem is one line naming the piece and the
fix; all of them are raised together (LaunchError). boto3 clients are given; nothing is created.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from project.aws.errors import aws_errors
from project.aws.filesystems import FSX, FileSystemChannel, port_text
from project.aws.plan import JobPlan, LaunchError

TERRAFORM_FIX = "aws.subnets / subnet_ids in terraform/"


@dataclass(frozen=True)
class Place:
    """Where a file system is: its VPC, the zones it can be mounted in, the security groups of its
    network interfaces (None: unknown, the job's own are taken as the file system's)."""

    vpc: str
    zones: frozenset[str]
    groups: frozenset[str] | None


def _code(exc: Exception) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


def _subnets(ec2: Any, ids: Iterable[str], problems: list[str]) -> dict[str, dict[str, Any]]:
    fix = f"fix {TERRAFORM_FIX}"
    return _each(lambda i: ec2.describe_subnets(SubnetIds=[i])["Subnets"][0], ec2, ids, "subnet", fix, problems)


def _groups(ec2: Any, ids: Iterable[str], problems: list[str]) -> dict[str, dict[str, Any]]:
    fix = "fix aws.security_groups"
    return _each(
        lambda i: ec2.describe_security_groups(GroupIds=[i])["SecurityGroups"][0],
        ec2,
        ids,
        "security group",
        fix,
        problems,
    )


def _each(
    describe: Any, ec2: Any, ids: Iterable[str], what: str, fix: str, problems: list[str]
) -> dict[str, dict[str, Any]]:
    """Each id described one at a time: a missing one is named (a problem line), not the whole call refused."""
    found: dict[str, dict[str, Any]] = {}
    for one in ids:
        try:
            found[one] = describe(one)
        except ec2.exceptions.ClientError as exc:
            if "NotFound" not in _code(exc):
                raise
            problems.append(f"{what} {one} does not exist in this region: {fix}")
    return found


def _interface_groups(ec2: Any, interfaces: list[str]) -> frozenset[str] | None:
    if not interfaces:
        return None
    described = ec2.describe_network_interfaces(NetworkInterfaceIds=interfaces)["NetworkInterfaces"]
    return frozenset(g["GroupId"] for eni in described for g in eni.get("Groups", []))


def _fsx_place(fs: FileSystemChannel, ec2: Any, fsx: Any, region: str, problems: list[str]) -> Place | None:
    try:
        found = fsx.describe_file_systems(FileSystemIds=[fs.file_system_id])["FileSystems"]
    except fsx.exceptions.FileSystemNotFound:
        found = []
    if not found:
        problems.append(_not_found(fs, region, "aws fsx describe-file-systems"))
        return None
    desc = found[0]
    if desc.get("FileSystemType") != "LUSTRE":
        problems.append(
            f"{fs.file_system_id} is an FSx for {desc.get('FileSystemType')} file system, not Lustre: "
            "SageMaker mounts FSx for Lustre only (or use efs:// for EFS)"
        )
        return None
    mount = (desc.get("LustreConfiguration") or {}).get("MountName")
    if mount and mount != fs.mount_name:
        problems.append(
            f"{fs.uri}: the mount name of {fs.file_system_id} is {mount}, not {fs.mount_name}: "
            f"write fsx://{fs.file_system_id}/{mount}/{fs.path}"
        )
    subnets = ec2.describe_subnets(SubnetIds=desc["SubnetIds"])["Subnets"]
    vpc = desc.get("VpcId") or subnets[0]["VpcId"]
    groups = _interface_groups(ec2, desc.get("NetworkInterfaceIds") or [])
    return Place(vpc, frozenset(s["AvailabilityZone"] for s in subnets), groups)


def _efs_place(fs: FileSystemChannel, ec2: Any, efs: Any, region: str, problems: list[str]) -> Place | None:
    try:
        efs.describe_file_systems(FileSystemId=fs.file_system_id)
    except efs.exceptions.FileSystemNotFound:
        problems.append(_not_found(fs, region, "aws efs describe-file-systems"))
        return None
    targets = efs.describe_mount_targets(FileSystemId=fs.file_system_id)["MountTargets"]
    if not targets:
        problems.append(
            f"{fs.file_system_id} has no mount target: create one in each job subnet's zone "
            "(aws efs create-mount-target), with a security group that admits NFS (2049)"
        )
        return None
    groups = _interface_groups(ec2, [t["NetworkInterfaceId"] for t in targets if t.get("NetworkInterfaceId")])
    return Place(targets[0]["VpcId"], frozenset(t["AvailabilityZoneName"] for t in targets), groups)


def _not_found(fs: FileSystemChannel, region: str, command: str) -> str:
    return (
        f"{fs.uri}: no file system {fs.file_system_id} in {region} (`{command}`): a job reads a file system of its "
        "own region only; fix the id, or train in the file system's region (aws.region / region in terraform/)"
    )


def _admits(rule: dict[str, Any], port: int, sources: frozenset[str]) -> bool:
    if rule.get("IpProtocol") not in ("-1", "tcp"):
        return False
    if rule.get("IpProtocol") == "tcp" and not rule.get("FromPort", 0) <= port <= rule.get("ToPort", -1):
        return False
    from_group = any(pair.get("GroupId") in sources for pair in rule.get("UserIdGroupPairs", []))
    return from_group or any(r.get("CidrIp") for r in rule.get("IpRanges", []))


def _check_place(
    fs: FileSystemChannel,
    place: Place,
    subnets: dict[str, dict[str, Any]],
    groups: dict[str, dict[str, Any]],
    job_groups: frozenset[str],
    problems: list[str],
) -> None:
    vpcs = {s["VpcId"] for s in subnets.values()}
    if vpcs and place.vpc not in vpcs:
        problems.append(
            f"{fs.file_system_id} is in {place.vpc}, the job's subnets in {', '.join(sorted(vpcs))}: "
            f"give subnets of {place.vpc} ({TERRAFORM_FIX})"
        )
        return
    zones = ", ".join(sorted(place.zones))
    for subnet, desc in subnets.items():
        if desc["AvailabilityZone"] not in place.zones:
            where = "lies in" if fs.kind is FSX else "has mount targets in"
            problems.append(
                f"subnet {subnet} is in {desc['AvailabilityZone']} and {fs.file_system_id} {where} {zones}: "
                f"give only subnets of {zones} ({TERRAFORM_FIX})"
            )
    fs_groups = place.groups if place.groups is not None else job_groups
    rules = [rule for group in fs_groups if group in groups for rule in groups[group].get("IpPermissions", [])]
    closed = [port for port in fs.kind.ports if not any(_admits(rule, port, job_groups) for rule in rules)]
    if job_groups and closed:
        fs_names, job_names = ", ".join(sorted(fs_groups)), ", ".join(sorted(job_groups))
        problems.append(
            f"no security group of {fs.file_system_id} ({fs_names}) admits TCP {port_text(closed)} from the job's "
            f"({job_names}): add an inbound rule for {port_text(fs.kind.ports)} from the job's security group "
            "(terraform/ makes one that admits itself)"
        )


def _s3_route(ec2: Any, subnet: str, vpc: str, endpoints: set[str]) -> bool:
    tables = ec2.describe_route_tables(Filters=[{"Name": "association.subnet-id", "Values": [subnet]}])["RouteTables"]
    if not tables:  # no table of its own: the VPC's main route table
        tables = ec2.describe_route_tables(
            Filters=[{"Name": "vpc-id", "Values": [vpc]}, {"Name": "association.main", "Values": ["true"]}]
        )["RouteTables"]
    for route in (r for t in tables for r in t.get("Routes", [])):
        if route.get("GatewayId") in endpoints:
            return True
        if route.get("DestinationCidrBlock") == "0.0.0.0/0" and str(route.get("NatGatewayId", "")).startswith("nat-"):
            return True
    return False


def _check_s3_routes(ec2: Any, region: str, subnets: dict[str, dict[str, Any]], problems: list[str]) -> None:
    for vpc in sorted({s["VpcId"] for s in subnets.values()}):
        described = ec2.describe_vpc_endpoints(
            Filters=[
                {"Name": "vpc-id", "Values": [vpc]},
                {"Name": "service-name", "Values": [f"com.amazonaws.{region}.s3"]},
            ]
        )["VpcEndpoints"]
        endpoints = {e["VpcEndpointId"] for e in described if e.get("VpcEndpointType") == "Gateway"}
        for subnet, desc in subnets.items():
            if desc["VpcId"] == vpc and not _s3_route(ec2, subnet, vpc, endpoints):
                problems.append(
                    f"subnet {subnet} has no route to S3 (the job's data, code and output): add an S3 gateway "
                    f"endpoint to {vpc}'s route tables (terraform/: vpc_has_s3_gateway_endpoint=false makes one) "
                    "or a NAT gateway route for 0.0.0.0/0"
                )


def check_network(plan: JobPlan, client: Callable[[str], Any]) -> None:
    """Every reason the job's VPC would fail it, one line each (LaunchError); nothing for a job outside a VPC.

    `client(service)`: the boto3 client of ec2, fsx or efs (made only when asked for)."""
    if not plan.subnets:
        return
    ec2 = client("ec2")
    problems: list[str] = []
    with aws_errors(resource=f"the VPC of subnets {', '.join(plan.subnets)}"):
        subnets = _subnets(ec2, plan.subnets, problems)
        groups = _groups(ec2, plan.security_groups, problems)
        if len({s["VpcId"] for s in subnets.values()}) > 1:
            problems.append(f"the job's subnets lie in more than one VPC: give subnets of one VPC ({TERRAFORM_FIX})")
        for fs in dict.fromkeys(plan.file_systems.values()):
            if fs.kind is FSX:
                place = _fsx_place(fs, ec2, client("fsx"), plan.region, problems)
            else:
                place = _efs_place(fs, ec2, client("efs"), plan.region, problems)
            if place is not None:
                other = sorted((place.groups or frozenset()) - set(groups))  # the file system's own groups
                known = groups | _groups(ec2, other, problems)
                _check_place(fs, place, subnets, known, frozenset(groups), problems)
        _check_s3_routes(ec2, plan.region, subnets, problems)
    if problems:
        raise LaunchError("\n".join(dict.fromkeys(problems)))
