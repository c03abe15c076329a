"""File-system channels (fsx://, efs://): the plan and request, `invoke local`'s mount, and the
network check `invoke train` runs before a launch, against moto's EC2, FSx and EFS over HTTP.

The sandbox job that reads an fsx:// channel end to end is in tests/test_sagemaker_e2e.py (its world).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from project.aws import filesystems, sdk, vpc
from project.aws import plan as jobs
from project.aws import source as _registers_fsx_and_efs  # noqa: F401 (as the tasks do)
from project.aws.image import JobImage, PipInstall
from project.aws.infra import Infra
from project.aws.session import aws_clients
from project.core.errors import UserError
from project.training.raw import DataError
from project.training.resolve import resolve
from tests.aws_fixtures import run_terraform, terraform_env
from tests.requires import requires
from tests.service_model import problems

INFRA = Infra(
    data_bucket="data-b",
    artifacts_bucket="art-b",
    repository_url="123456789012.dkr.ecr.us-east-1.amazonaws.com/proj",
    role_arn="arn:aws:iam::123456789012:role/proj-sagemaker",
    region="us-east-1",
)
CUSTOM = JobImage("custom", f"{INFRA.repository_url}:abc1234", "2.8.0")
FSX = "fsx://fs-0123456789abcdef0/abcdwxyz/datasets/mnist"
EFS = "efs://fs-89abcdef/datasets/val"
NETWORK = ("aws.subnets=[subnet-0a1b2c3d]", "aws.security_groups=[sg-0a1b2c3d]")


def plan(composed, *overrides, image=CUSTOM, infra=INFRA):
    cfg = composed(*overrides)
    return jobs.plan_job(cfg, infra, image, revision="9f8e7d6"), cfg


# --- the channel, the plan, the request ------------------------------------------------------


def test_a_file_system_channel_names_the_directory_aws_mounts():
    fsx = filesystems.file_system_channel(FSX)
    assert (fsx.kind.file_system_type, fsx.file_system_id, fsx.directory_path) == (
        "FSxLustre",
        "fs-0123456789abcdef0",
        "/abcdwxyz/datasets/mnist",
    )
    efs = filesystems.file_system_channel(EFS + "/")
    assert (efs.kind.file_system_type, efs.directory_path, efs.uri) == ("EFS", "/datasets/val", EFS)
    assert filesystems.file_system_channel("s3://bucket/prefix/") is None


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("fsx://data/abcdwxyz/x", r"not a file-system id after fsx:// \(fs-<hex>\); write fsx://fs-<id>/<mount-name>/"),
        ("fsx://fs-0123456789abcdef0", r"mount name \(MountName, `aws fsx describe-file-systems`\) is missing"),
        ("efs://fs-89abcdef/../etc", r"'\.\.' is not allowed .*; write efs://fs-<id>/<path>"),
        ("efs://fsap-0123456789abcdef0/x", r"an EFS access point; .* write efs://fs-<id>/<path>, with the access"),
    ],
)
def test_a_malformed_file_system_channel_is_one_line(composed, uri, message):
    with pytest.raises(UserError, match=message):
        plan(composed, f"dataset.channels.train={uri}", *NETWORK)


def test_the_request_mounts_each_file_system_read_only_in_the_jobs_vpc(composed, moto_endpoint):
    """The CreateTrainingJob request the SDK builds (code staged to moto's S3), valid under botocore's model."""
    import boto3

    infra = replace(INFRA, artifacts_bucket=f"art-{uuid.uuid4().hex[:12]}")
    boto3.client("s3").create_bucket(Bucket=infra.artifacts_bucket)
    p, cfg = plan(
        composed,
        f"dataset.channels.train={FSX}",
        f"+dataset.channels.validation={EFS}",
        *NETWORK,
        "job.network_isolation=true",
        "instance=ml.m5.xlarge",
        infra=infra,
    )
    jobs.validate_plan(p, cfg)
    assert p.channels == {"train": FSX, "validation": EFS} and p.manifests == {}
    assert f"{FSX}  (FSxLustre fs-0123456789abcdef0:/abcdwxyz/datasets/mnist, read-only)" in p.summary()
    assert "VPC subnets subnet-0a1b2c3d; security groups sg-0a1b2c3d; network isolation" in p.summary()
    trainer = sdk.model_trainer(p, f"s3://{infra.artifacts_bucket}/code/{p.job_name}/", boto3.Session())
    request = sdk.create_request(trainer, p.job_name)
    assert problems("sagemaker", "CreateTrainingJob", request) == []
    channels = {c["ChannelName"]: c for c in request["InputDataConfig"]}
    assert channels["train"]["DataSource"] == {
        "FileSystemDataSource": {
            "FileSystemId": "fs-0123456789abcdef0",
            "FileSystemAccessMode": "ro",
            "FileSystemType": "FSxLustre",
            "DirectoryPath": "/abcdwxyz/datasets/mnist",
        }
    }
    assert channels["validation"]["DataSource"]["FileSystemDataSource"]["DirectoryPath"] == "/datasets/val"
    assert channels["train"]["InputMode"] == "File"
    assert request["VpcConfig"] == {"Subnets": ["subnet-0a1b2c3d"], "SecurityGroupIds": ["sg-0a1b2c3d"]}
    assert request["EnableNetworkIsolation"] is True


def test_the_vpc_comes_from_terraform_unless_the_config_gives_it(composed):
    infra = replace(INFRA, subnets=("subnet-11111111",), security_groups=("sg-11111111",))
    p, _ = plan(composed, f"dataset.channels.train={FSX}", infra=infra)
    assert (p.subnets, p.security_groups) == (("subnet-11111111",), ("sg-11111111",))
    p, _ = plan(composed, f"dataset.channels.train={FSX}", *NETWORK, infra=infra)
    assert (p.subnets, p.security_groups) == (("subnet-0a1b2c3d",), ("sg-0a1b2c3d",))
    assert plan(composed)[0].subnets == ()  # an S3 job stays out of any VPC


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ([f"dataset.channels.train={FSX}"], r"inside its VPC, and it has no subnets: set subnet_ids .* aws.subnets="),
        (
            [f"dataset.channels.train={FSX}", "+dataset.input_modes.train=FastFile", *NETWORK],
            r"dataset.input_modes.train=FastFile: a file-system channel .* File mode only",
        ),
        ([f"dataset.channels.train={FSX}", NETWORK[0]], r"needs subnets and security groups; it has no security"),
        (["job.network_isolation=true", "job.image=aws"], r"reaches no network, but job.image=aws pip-installs"),
        (["job.network_isolation=true", "logger=mlflow"], r"use job.image=custom .* and logger=tensorboard"),
    ],
)
def test_a_job_whose_network_cannot_work_is_refused_in_one_line(composed, overrides, message):
    uri = "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-training:2.8.0-cpu-py312"
    image = JobImage("aws", uri, "2.8.0", PipInstall(40, 300.0)) if "job.image=aws" in overrides else CUSTOM
    p, cfg = plan(composed, *overrides, image=image)
    with pytest.raises(jobs.LaunchError, match=message) as refused:
        jobs.validate_plan(p, cfg)
    assert "\n" not in str(refused.value)


def test_invoke_upload_leaves_a_file_system_channel_where_it_is(moto_endpoint):
    from project.aws import workflow

    said: list[str] = []
    names = [f"aws.{k}={getattr(INFRA, k)}" for k in ("data_bucket", "artifacts_bucket", "repository_url", "role_arn")]
    workflow.upload([f"dataset.channels.train={FSX}", *names, "aws.region=us-east-1"], echo=said.append)
    assert said == [f"train: {FSX} is a file system the job mounts: nothing to upload"]


# --- invoke local: the file system where this machine mounts it ------------------------------


def test_invoke_local_reads_a_file_system_where_it_is_mounted(composed, tiny_data, tmp_path):
    folder, files = tiny_data
    mount = tmp_path / "mnt"
    (mount / "datasets").mkdir(parents=True)
    (mount / "datasets" / "mnist").symlink_to(folder)
    hashes = [f"dataset.files.{stem}={sha}" for stem, sha in files.items()]
    given = [f"dataset.channels.train={FSX}", *hashes, f"paths.data_dir={tmp_path / 'cache'}"]
    with pytest.raises(DataError) as refused:
        resolve(composed(*given), remember=False)
    assert str(refused.value) == (
        f"{FSX}: fs-0123456789abcdef0 is not mounted here: mount it (`sudo mount -t lustre -o relatime,flock "
        "<DNSName>@tcp:/<MountName> /mnt/fs-0123456789abcdef0`) and give "
        "+paths.mounts.fs-0123456789abcdef0=/mnt/fs-0123456789abcdef0, or copy the data into a folder and point "
        "the channel at it"
    )
    data = resolve(composed(*given, f"+paths.mounts.fs-0123456789abcdef0={mount}"), remember=False)
    assert data.folders["train"] == mount / "datasets" / "mnist" and set(data.files) == set(files)


# --- the network check before a launch (moto's EC2, FSx, EFS) ---------------------------------


@pytest.fixture(scope="module")
def network(moto_endpoint):
    """A VPC as a user has it: subnets in two zones, an S3 gateway endpoint on the main route table,
    a subnet with its own table and no way to S3, one behind a NAT gateway; the jobs' security group
    (admits 988 and 2049 from itself) and one that admits nothing; an FSx for Lustre and an EFS file
    system in us-east-1a; a second VPC."""
    clients = aws_clients("us-east-1", moto_endpoint)
    ec2, fsx, efs = (clients.client(s) for s in ("ec2", "fsx", "efs"))
    vpc_a = ec2.create_vpc(CidrBlock="10.10.0.0/16")["Vpc"]["VpcId"]
    vpc_b = ec2.create_vpc(CidrBlock="10.20.0.0/16")["Vpc"]["VpcId"]

    def subnet(vpc_id, cidr, zone):
        return ec2.create_subnet(VpcId=vpc_id, CidrBlock=cidr, AvailabilityZone=zone)["Subnet"]["SubnetId"]

    def main_table(vpc_id):
        filters = [{"Name": "vpc-id", "Values": [vpc_id]}, {"Name": "association.main", "Values": ["true"]}]
        return ec2.describe_route_tables(Filters=filters)["RouteTables"][0]["RouteTableId"]

    def own_table(vpc_id, subnet_id):
        table = ec2.create_route_table(VpcId=vpc_id)["RouteTable"]["RouteTableId"]
        ec2.associate_route_table(RouteTableId=table, SubnetId=subnet_id)
        return table

    ids = {"vpc_a": vpc_a, "vpc_b": vpc_b}
    ids |= {"a1": subnet(vpc_a, "10.10.1.0/24", "us-east-1a"), "a2": subnet(vpc_a, "10.10.2.0/24", "us-east-1b")}
    ids |= {"a3": subnet(vpc_a, "10.10.3.0/24", "us-east-1a"), "a4": subnet(vpc_a, "10.10.4.0/24", "us-east-1a")}
    ids["b1"] = subnet(vpc_b, "10.20.1.0/24", "us-east-1a")
    for vpc_id in (vpc_a, vpc_b):
        ec2.create_vpc_endpoint(
            VpcId=vpc_id,
            ServiceName="com.amazonaws.us-east-1.s3",
            VpcEndpointType="Gateway",
            RouteTableIds=[main_table(vpc_id)],
        )
    own_table(vpc_a, ids["a3"])  # local routes only: no way to S3
    nat = ec2.create_nat_gateway(SubnetId=ids["a1"], AllocationId=ec2.allocate_address(Domain="vpc")["AllocationId"])
    nat_table = own_table(vpc_a, ids["a4"])
    ec2.create_route(
        RouteTableId=nat_table, DestinationCidrBlock="0.0.0.0/0", NatGatewayId=nat["NatGateway"]["NatGatewayId"]
    )
    tag = uuid.uuid4().hex[:6]
    ids["jobs_sg"] = ec2.create_security_group(GroupName=f"jobs-{tag}", Description="jobs", VpcId=vpc_a)["GroupId"]
    ec2.authorize_security_group_ingress(
        GroupId=ids["jobs_sg"],
        IpPermissions=[
            {"IpProtocol": "tcp", "FromPort": low, "ToPort": high, "UserIdGroupPairs": [{"GroupId": ids["jobs_sg"]}]}
            for low, high in ((988, 988), (1018, 1023), (2049, 2049))
        ],
    )
    # Lustre's 988 only: its clients also talk on 1018-1023.
    ids["half_sg"] = ec2.create_security_group(GroupName=f"half-{tag}", Description="x", VpcId=vpc_a)["GroupId"]
    ec2.authorize_security_group_ingress(
        GroupId=ids["half_sg"],
        IpPermissions=[
            {"IpProtocol": "tcp", "FromPort": 988, "ToPort": 988, "UserIdGroupPairs": [{"GroupId": ids["half_sg"]}]}
        ],
    )
    ids["closed_sg"] = ec2.create_security_group(GroupName=f"closed-{tag}", Description="x", VpcId=vpc_a)["GroupId"]
    lustre = fsx.create_file_system(
        FileSystemType="LUSTRE",
        StorageCapacity=1200,
        SubnetIds=[ids["a1"]],
        SecurityGroupIds=[ids["jobs_sg"]],
        LustreConfiguration={"DeploymentType": "SCRATCH_2"},
    )["FileSystem"]
    ids["fsx"] = lustre["FileSystemId"]
    for name, group in (("efs", ids["jobs_sg"]), ("efs_closed", ids["closed_sg"])):
        ids[name] = efs.create_file_system(CreationToken=f"{name}-{tag}")["FileSystemId"]
        efs.create_mount_target(FileSystemId=ids[name], SubnetId=ids["a1"], SecurityGroups=[group])
    return clients, ids


def check(composed, network, channel: str, subnets: list[str], groups: list[str]) -> str:
    """What the check says of a job reading `channel` (a template over the network's ids) from `subnets`."""
    clients, ids = network
    uri = channel.format(**ids)
    p, _ = plan(
        composed,
        f"dataset.channels.train={uri}",
        f"aws.subnets=[{','.join(ids[s] for s in subnets)}]",
        f"aws.security_groups=[{','.join(ids[g] for g in groups)}]",
    )
    try:
        vpc.check_network(p, clients.client)
    except jobs.LaunchError as exc:
        return str(exc)
    return ""


@pytest.mark.parametrize(
    ("channel", "subnets", "groups"),
    [
        ("fsx://{fsx}/fsx/data", ["a1"], ["jobs_sg"]),
        ("fsx://{fsx}/fsx/data", ["a4"], ["jobs_sg"]),  # S3 through a NAT gateway
        ("efs://{efs}/data", ["a1"], ["jobs_sg"]),
    ],
    ids=["fsx-endpoint", "fsx-nat", "efs"],
)
def test_a_network_that_reaches_the_file_system_and_s3_passes(composed, network, channel, subnets, groups):
    assert check(composed, network, channel, subnets, groups) == ""


@pytest.mark.parametrize(
    ("channel", "subnets", "groups", "expected"),
    [
        (
            "fsx://fs-0000000000000000/fsx/data",
            ["a1"],
            ["jobs_sg"],
            "fsx://fs-0000000000000000/fsx/data: no file system fs-0000000000000000 in us-east-1 "
            "(`aws fsx describe-file-systems`): a job reads a file system of its own region only; fix the id, "
            "or train in the file system's region (aws.region / region in terraform/)",
        ),
        (
            "fsx://{fsx}/fsx/data",
            ["b1"],
            ["jobs_sg"],
            "{fsx} is in {vpc_a}, the job's subnets in {vpc_b}: give subnets of {vpc_a} "
            "(aws.subnets / subnet_ids in terraform/)",
        ),
        (
            "fsx://{fsx}/fsx/data",
            ["a1", "a2"],
            ["jobs_sg"],
            "subnet {a2} is in us-east-1b and {fsx} lies in us-east-1a: give only subnets of us-east-1a "
            "(aws.subnets / subnet_ids in terraform/)",
        ),
        (
            "fsx://{fsx}/fsx/data",
            ["a1"],
            ["closed_sg"],
            "no security group of {fsx} ({closed_sg}) admits TCP 988 and 1018-1023 from the job's ({closed_sg}): add "
            "an inbound rule for 988 and 1018-1023 from the job's security group (terraform/ makes one that admits "
            "itself)",
        ),
        (
            "fsx://{fsx}/fsx/data",
            ["a1"],
            ["half_sg"],
            "no security group of {fsx} ({half_sg}) admits TCP 1018-1023 from the job's ({half_sg}): add an inbound "
            "rule for 988 and 1018-1023 from the job's security group (terraform/ makes one that admits itself)",
        ),
        (
            "efs://{efs_closed}/data",
            ["a1"],
            ["jobs_sg"],
            "no security group of {efs_closed} ({closed_sg}) admits TCP 2049 from the job's ({jobs_sg}): add an "
            "inbound rule for 2049 from the job's security group (terraform/ makes one that admits itself)",
        ),
        (
            "fsx://{fsx}/fsx/data",
            ["a3"],
            ["jobs_sg"],
            "subnet {a3} has no route to S3 (the job's data, code and output): add an S3 gateway endpoint to "
            "{vpc_a}'s route tables (terraform/: vpc_has_s3_gateway_endpoint=false makes one) or a NAT gateway "
            "route for 0.0.0.0/0",
        ),
    ],
    ids=["missing", "other-vpc", "other-zone", "port-closed", "lustre-988-only", "efs-port-closed", "no-s3-route"],
)
def test_each_network_problem_is_one_line_naming_the_piece_and_the_fix(
    composed, network, channel, subnets, groups, expected
):
    _, ids = network
    assert check(composed, network, channel, subnets, groups) == expected.format(**ids)


def test_a_subnet_or_group_that_does_not_exist_is_named(composed, network):
    clients, ids = network
    p, _ = plan(composed, f"dataset.channels.train=fsx://{ids['fsx']}/fsx/data", *NETWORK)
    with pytest.raises(jobs.LaunchError) as refused:
        vpc.check_network(p, clients.client)
    assert str(refused.value).splitlines() == [
        "subnet subnet-0a1b2c3d does not exist in this region: fix aws.subnets / subnet_ids in terraform/",
        "security group sg-0a1b2c3d does not exist in this region: fix aws.security_groups",
    ]


def test_terraform_makes_the_jobs_network_only_when_given_a_vpc(terraform_applied, moto_endpoint, network):
    """The applied world is the default one (no VPC: no subnets, no security group); with vpc_id and
    subnet_ids Terraform plans the jobs' security group and its rules, an S3 gateway endpoint on the
    VPC's route tables, the execution role's network-interface grants, and the outputs."""
    workdir, outputs, infra = terraform_applied
    assert (outputs["subnets"], outputs["security_groups"]) == ([], [])
    assert (infra.subnets, infra.security_groups) == ((), ())
    _, ids = network
    env = terraform_env(moto_endpoint, workdir)
    variables = ["-var", f"vpc_id={ids['vpc_a']}", "-var", f'subnet_ids=["{ids["a1"]}"]']
    run_terraform(workdir, env, "plan", "-refresh=false", "-input=false", "-no-color", *variables, "-out", "vpc.tfplan")
    shown = run_terraform(workdir, env, "show", "-json", "vpc.tfplan")
    planned = json.loads(shown.stdout)
    changes = {c["address"]: c["change"] for c in planned["resource_changes"] if c["change"]["actions"] != ["no-op"]}
    group = changes["aws_security_group.jobs[0]"]["after"]
    assert group["vpc_id"] == ids["vpc_a"] and changes["aws_security_group.jobs[0]"]["actions"] == ["create"]
    ports = {
        (c["after"]["ip_protocol"], c["after"]["from_port"], c["after"]["to_port"])
        for address, c in changes.items()
        if address.startswith("aws_vpc_security_group_ingress_rule.")
    }
    assert ports == {("tcp", 988, 988), ("tcp", 1018, 1023), ("tcp", 2049, 2049), ("-1", None, None)}
    endpoint = changes["aws_vpc_endpoint.s3[0]"]["after"]
    assert endpoint["vpc_endpoint_type"] == "Gateway" and endpoint["service_name"] == "com.amazonaws.us-east-1.s3"
    assert changes["aws_iam_role_policy.this"]["actions"] == ["update"]  # the network-interface grants
    assert planned["planned_values"]["outputs"]["subnets"]["value"] == [ids["a1"]]


def test_checked_paths_stay_where_the_file_system_is(tmp_path):
    assert filesystems.mounted({"fs-89abcdef": str(tmp_path)}, EFS) == Path(tmp_path) / "datasets" / "val"


# --- the sandbox: a local folder where SageMaker mounts the file system ------------------------


def fs_job(vpc: dict | None) -> dict:
    """A DescribeTrainingJob of a job reading FSx for Lustre, as moto records it."""
    source = {
        "FileSystemId": "fs-0123456789abcdef0",
        "FileSystemAccessMode": "ro",
        "FileSystemType": "FSxLustre",
        "DirectoryPath": "/abcdwxyz/datasets/mnist",
    }
    return {
        "TrainingJobName": "j",
        "TrainingJobArn": "arn:aws:sagemaker:us-east-1:123456789012:training-job/j",
        "AlgorithmSpecification": {"TrainingInputMode": "File"},
        "ResourceConfig": {"InstanceType": "ml.m5.xlarge", "InstanceCount": 1},
        "InputDataConfig": [{"ChannelName": "train", "DataSource": {"FileSystemDataSource": source}}],
        **({"VpcConfig": vpc} if vpc else {}),
    }


def test_the_sandbox_links_the_file_systems_folder_where_sagemaker_mounts_it(tmp_path, monkeypatch):
    from project.sandbox.optml import FILE_SYSTEMS_ENV, SandboxError, file_system_mounts, prepare_tree

    data = tmp_path / "fs" / "fs-0123456789abcdef0" / "datasets" / "mnist"
    data.mkdir(parents=True)
    (data / "train-images-idx3-ubyte.gz").write_bytes(b"x")
    vpc = {"Subnets": ["subnet-0a1b2c3d"], "SecurityGroupIds": ["sg-0a1b2c3d"]}
    with pytest.raises(SandboxError, match="file system fs-0123456789abcdef0 has no folder here: set SANDBOX_FILE"):
        prepare_tree(tmp_path / "tree", fs_job(vpc), s3=None)
    monkeypatch.setenv(FILE_SYSTEMS_ENV, str(tmp_path / "fs"))
    with pytest.raises(SandboxError, match="channel train: a FileSystemDataSource needs the VpcConfig of the job"):
        prepare_tree(tmp_path / "tree", fs_job(None), s3=None)
    prepare_tree(tmp_path / "tree", fs_job(vpc), s3=None)
    channel = tmp_path / "tree" / "input" / "data" / "train"
    assert channel.is_dir() and not any(channel.iterdir())  # a mount point, bound when the container starts
    # The mount name is the file system's root: /fsx/datasets/mnist is <id>/datasets/mnist.
    assert file_system_mounts(fs_job(vpc)) == [(data, "/opt/ml/input/data/train")]
    config = json.loads((tmp_path / "tree" / "input" / "config" / "inputdataconfig.json").read_text())
    assert config == {"train": {"TrainingInputMode": "File", "RecordWrapperType": "None"}}


@requires(container=True)
def test_a_file_system_channel_is_read_only_in_the_container(tmp_path):
    """SageMaker mounts a FileSystemDataSource read-only: a job reads it, and its write fails there as here."""
    import subprocess

    from project.sandbox.container import namespace_argv

    tree, data = tmp_path / "tree", tmp_path / "fs" / "data"
    (tree / "input" / "data" / "train").mkdir(parents=True)
    data.mkdir(parents=True)
    (data / "shard-0.tar").write_bytes(b"x")
    script = "ls /opt/ml/input/data/train && touch /opt/ml/input/data/train/written"
    argv = namespace_argv(tree, ["sh", "-c", script], read_only=[(data, "/opt/ml/input/data/train")])
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert "shard-0.tar" in done.stdout, done.stdout + done.stderr
    assert done.returncode != 0 and "Read-only file system" in done.stderr, done.stderr
    assert sorted(p.name for p in data.iterdir()) == ["shard-0.tar"]  # nothing written to the file system


def test_ports_are_written_as_a_reader_writes_them():
    assert filesystems.port_text(filesystems.FSX.ports) == "988 and 1018-1023"
    assert filesystems.port_text([2049]) == "2049"
    assert filesystems.port_text([1, 2, 3, 7, 9, 10]) == "1-3, 7 and 9-10"


@requires(terraform=True)
def test_terraform_makes_the_network_the_check_asks_for(composed, moto_endpoint, tmp_path):
    """terraform/ with vpc_id and subnet_ids, applied against moto: a VPC whose subnet had no way to
    S3 gets the gateway endpoint, the jobs' group admits Lustre's ports from itself, the outputs
    name both, and a job reading an FSx of that group passes the check with Terraform's outputs
    alone (no aws.subnets). The role may make the job's network interfaces there, and only there."""
    from project.aws.infra import OUTPUT_NAMES, load_infra
    from tests.aws_fixtures import copy_configuration
    from tests.iam_policy import ALLOWED, Request, decision

    clients = aws_clients("us-east-1", moto_endpoint)
    ec2, fsx = clients.client("ec2"), clients.client("fsx")
    vpc_id = ec2.create_vpc(CidrBlock="10.30.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc_id, CidrBlock="10.30.1.0/24", AvailabilityZone="us-east-1a")["Subnet"]
    tag = uuid.uuid4().hex[:6]
    workdir = copy_configuration(tmp_path / "terraform")
    env = terraform_env(moto_endpoint, workdir)
    # The network and the role's policy (and what they need): not the whole stack of the session's world.
    targets = ["aws_security_group.jobs", "aws_vpc_endpoint.s3", "aws_iam_role_policy.this"]
    targets += ["aws_vpc_security_group_ingress_rule.file_systems", "aws_vpc_security_group_egress_rule.https"]
    variables = [f"project=net-{tag}", f"vpc_id={vpc_id}", f'subnet_ids=["{subnet["SubnetId"]}"]', "force_destroy=true"]
    run_terraform(workdir, env, "init", "-input=false", "-no-color")
    args = [*(f"-target={t}" for t in targets), *(a for v in variables for a in ("-var", v))]
    try:
        run_terraform(workdir, env, "apply", "-auto-approve", "-input=false", "-no-color", *args)
        # A targeted apply leaves out the outputs that name no resource (subnets): a refresh writes them.
        refresh = ("apply", "-refresh-only", "-auto-approve", "-input=false", "-no-color")
        run_terraform(workdir, env, *refresh, *(a for v in variables for a in ("-var", v)))
        outputs = {k: v["value"] for k, v in json.loads(run_terraform(workdir, env, "output", "-json").stdout).items()}
        (group,) = outputs["security_groups"]
        assert outputs["subnets"] == [subnet["SubnetId"]]
        lustre = fsx.create_file_system(
            FileSystemType="LUSTRE", StorageCapacity=1200, SubnetIds=[subnet["SubnetId"]], SecurityGroupIds=[group]
        )["FileSystem"]
        # As the tasks read them (project/aws/infra.py); what the targeted apply did not make, from INFRA.
        absent = {name: getattr(INFRA, name) for name in OUTPUT_NAMES if not outputs.get(name)}
        infra = load_infra(workdir, absent)
        assert (infra.subnets, infra.security_groups) == ((subnet["SubnetId"],), (group,))
        p, _ = plan(composed, f"dataset.channels.train=fsx://{lustre['FileSystemId']}/fsx/data", infra=infra)
        vpc.check_network(p, clients.client)  # raises LaunchError naming what is missing
        assert ec2.describe_vpc_endpoints(Filters=[{"Name": "vpc-id", "Values": [vpc_id]}])["VpcEndpoints"]

        role = outputs["role_arn"].rsplit("/", 1)[1]
        (name,) = clients.client("iam").list_role_policies(RoleName=role)["PolicyNames"]
        document = clients.client("iam").get_role_policy(RoleName=role, PolicyName=name)["PolicyDocument"]
        documents = [json.loads(document) if isinstance(document, str) else document]
        arn = f"arn:aws:ec2:us-east-1:{outputs['role_arn'].split(':')[4]}"
        for resource in (f"{arn}:subnet/{subnet['SubnetId']}", f"{arn}:security-group/{group}"):
            assert decision(documents, Request("ec2:CreateNetworkInterface", resource)) == ALLOWED, resource
        other = f"{arn}:subnet/subnet-0ffffffffffffffff"
        assert decision(documents, Request("ec2:CreateNetworkInterface", other)) != ALLOWED
    finally:
        run_terraform(workdir, env, "destroy", "-auto-approve", "-input=false", "-no-color", *args)
