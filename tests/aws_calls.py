"""Every AWS call of the tasks, recorded, and what IAM must allow for each (tests only).

Recording: a botocore client plugin. botocore loads the modules BOTOCORE_EXPERIMENTAL__PLUGINS
names into every client it makes, in every process that inherits the variable: the test process,
each `python -m invoke ...` subprocess, the SageMaker SDK's own clients. The plugin hooks
before-parameter-build (the call's operation and its parameters, before anything is sent) and
appends one JSON line per call to the file RECORD_ENV names. The test session sets both variables
(tests/aws_fixtures.py, moto_endpoint). A line says who made the call: `invoke <task>` for a task,
`test` for the test process itself (fixtures, the sandbox playing SageMaker), which is not judged.

Judging: `launcher_requests` maps a task's call to the IAM requests AWS authorizes for it (action,
resource ARN, condition keys); `role_requests` derives, from each training job, model, endpoint and
transform job a task creates, what SageMaker then does as the execution role. tests/iam_policy.py
evaluates them against the policies Terraform rendered. A call this module cannot map fails: a new
AWS call in the code needs its IAM action here, so it is judged too.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.iam_policy import Request

RECORD_ENV = "LIGHTNING_SAGEMAKER_AWS_CALLS"  # the JSON-lines file every process appends its calls to
PLUGIN_ENV = "BOTOCORE_EXPERIMENTAL__PLUGINS"
PLUGIN = "aws_calls=tests.aws_calls"  # name=module; botocore calls module.initialize_client_plugin(client)
# The parameters a mapping below reads; the rest (bodies, files) is not recorded.
KEPT_TYPES = (str, int, float, bool, list, dict, type(None))


def _who() -> str:
    """`invoke <task>` in a task's process, else `test` (this process is pytest's)."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name in ("invoke", "invoke.__main__"):
        task = next((arg for arg in sys.argv[1:] if not arg.startswith("-")), "?")
        return f"invoke {task}"
    return "test"


def _kept(params: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if isinstance(v, KEPT_TYPES)}


def _record(client: Any) -> Any:
    def before_parameter_build(params: dict[str, Any], model: Any, **_: Any) -> None:
        path = os.environ.get(RECORD_ENV)
        if not path:
            return
        line = {
            "who": _who(),
            "service": client.meta.service_model.service_name,
            "operation": model.name,
            "region": client.meta.region_name,
            "params": _kept(params),
        }
        data = (json.dumps(line, default=str) + "\n").encode()
        descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(descriptor, data)  # one write of one line: appends from processes never interleave
        finally:
            os.close(descriptor)

    return before_parameter_build


def initialize_client_plugin(client: Any) -> None:
    """botocore's plugin entry point, called for each client it makes."""
    client.meta.events.register("before-parameter-build", _record(client))


@dataclass(frozen=True)
class Call:
    who: str
    service: str
    operation: str
    region: str
    params: dict[str, Any]

    @property
    def is_task(self) -> bool:
        return self.who.startswith("invoke ")


def read_calls(path: Path, offset: int = 0) -> list[Call]:
    """The calls recorded in path from byte offset on."""
    if not path.exists():
        return []
    with path.open("rb") as handle:
        handle.seek(offset)
        return [Call(**json.loads(line)) for line in handle.read().decode().splitlines() if line.strip()]


# --- the launcher: what IAM authorizes for each call of a task -------------------------------

# Calls AWS authorizes without any permission, or left out of the launcher policy on purpose.
NOT_JUDGED = {
    # AWS: "No permissions are required to perform this operation" (even an explicit deny cannot stop it).
    ("sts", "GetCallerIdentity"): "needs no permission",
    # Left out on purpose (terraform/README.md): with it the SDK stages code where jobs may write it.
    # The tasks take AccessDenied as "cannot say" and go on (project/aws/fit.py denied_actions).
    ("iam", "SimulatePrincipalPolicy"): "left out of the launcher policy on purpose",
    # s3:ListAllMyBuckets, left out on purpose: the SageMaker SDK's default-bucket check reads the
    # bucket's creation date through boto3's Bucket.load (ListBuckets), which takes AccessDenied as
    # "unknown"; the SDK then checks the bucket with list_objects_v2(Prefix="code"), which is judged.
    ("s3", "ListBuckets"): "left out of the launcher policy on purpose",
}
IAM_PREFIX = {  # else the client's name
    "sagemaker-runtime": "sagemaker",
    "service-quotas": "servicequotas",
    "efs": "elasticfilesystem",
}
# Actions that have no resource-level permissions: IAM authorizes them on "*".
NO_RESOURCE = {
    "ecr:GetAuthorizationToken",
    "sagemaker:ListTrainingJobs",
    "sagemaker:ListEndpoints",
    "sagemaker:ListModels",
    "sagemaker:ListTransformJobs",
    "sagemaker:Search",
    "cloudwatch:GetMetricStatistics",
    "cloudwatch:GetMetricData",
    "cloudwatch:PutMetricData",
    "pricing:GetProducts",
    "servicequotas:ListServiceQuotas",
    "servicequotas:ListAWSDefaultServiceQuotas",
    "servicequotas:GetAWSDefaultServiceQuota",
    # invoke train's network check (project/aws/vpc.py): EC2's Describe actions and FSx's
    "ec2:DescribeSubnets",
    "ec2:DescribeSecurityGroups",
    "ec2:DescribeRouteTables",
    "ec2:DescribeVpcEndpoints",
    "ec2:DescribeNetworkInterfaces",
    "fsx:DescribeFileSystems",
}
# How S3 authorizes each API operation (the service authorization reference's S3 table).
S3_OBJECT = {
    "GetObject": "s3:GetObject",
    "HeadObject": "s3:GetObject",
    "PutObject": "s3:PutObject",
    "CreateMultipartUpload": "s3:PutObject",
    "UploadPart": "s3:PutObject",
    "CompleteMultipartUpload": "s3:PutObject",
    "AbortMultipartUpload": "s3:AbortMultipartUpload",
    "ListParts": "s3:ListMultipartUploadParts",
    "DeleteObject": "s3:DeleteObject",
    "GetObjectTagging": "s3:GetObjectTagging",
}
S3_BUCKET = {
    "HeadBucket": "s3:ListBucket",
    "ListObjectsV2": "s3:ListBucket",
    "ListObjects": "s3:ListBucket",
    "GetBucketLocation": "s3:GetBucketLocation",
    "ListMultipartUploads": "s3:ListBucketMultipartUploads",
}
# SageMaker's resource of a call: its name parameter -> the ARN's resource type.
SAGEMAKER_NAMES = {
    "TrainingJobName": "training-job",
    "ModelName": "model",
    "EndpointConfigName": "endpoint-config",
    "EndpointName": "endpoint",
    "TransformJobName": "transform-job",
    "ModelPackageGroupName": "model-package-group",  # Create/DescribeModelPackageGroup
}
PASSED_TO = {"iam:PassedToService": "sagemaker.amazonaws.com"}
# Operations about a SageMaker resource whose name does not end their own: the resource's name parameter.
SAGEMAKER_ABOUT = {"UpdateEndpointWeightsAndCapacities": "EndpointName", "InvokeEndpointAsync": "EndpointName"}
# Application Auto Scaling's SageMaker targets: the first one of an account creates this service-linked
# role, as the caller (project/aws/async_endpoints.py, terraform/iam.tf ScaleAsyncEndpoints).
SCALING_SERVICE = "sagemaker.application-autoscaling.amazonaws.com"
SCALING_ROLE = f"role/aws-service-role/{SCALING_SERVICE}/AWSServiceRoleForApplicationAutoScaling_SageMakerEndpoint"


class Unmapped(Exception):
    """A call whose IAM action this module does not know: map it, so that it is judged."""


def s3_arn(bucket: str, key: str | None = None) -> str:
    return f"arn:aws:s3:::{bucket}" + (f"/{key}" if key is not None else "")


def split_s3(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key


def _s3(call: Call) -> list[Request]:
    p = call.params
    if call.operation in S3_OBJECT:
        return [Request(S3_OBJECT[call.operation], s3_arn(p["Bucket"], p["Key"]))]
    if call.operation in S3_BUCKET:
        context = {"s3:prefix": p.get("Prefix", "")} if call.operation.startswith("ListObjects") else {}
        return [Request(S3_BUCKET[call.operation], s3_arn(p["Bucket"]), context)]
    if call.operation == "CopyObject":
        source = p["CopySource"] if isinstance(p["CopySource"], str) else "/".join(p["CopySource"].values())
        bucket, key = split_s3(source.lstrip("/"))
        return [Request("s3:PutObject", s3_arn(p["Bucket"], p["Key"])), Request("s3:GetObject", s3_arn(bucket, key))]
    raise Unmapped(call.operation)


def alarm_arn(region: str, account: str, name: str) -> str:
    return f"arn:aws:cloudwatch:{region}:{account}:alarm:{name}"


def _camel(kind: str) -> str:
    return "".join(part.title() for part in kind.split("-"))  # training-job -> TrainingJob


def _sagemaker(call: Call, account: str) -> list[Request]:
    action = f"sagemaker:{call.operation}"
    p = call.params
    if action in NO_RESOURCE:
        return [Request(action, "*")]
    if "ResourceArn" in p:  # AddTags, ListTags, DeleteTags
        return [Request(action, p["ResourceArn"])]
    if call.operation == "ListModelPackages":  # a group's versions: model-package/<group>
        group = str(p.get("ModelPackageGroupName", "*")).lower()
        return [Request(action, f"arn:aws:sagemaker:{call.region}:{account}:model-package/{group}")]
    if call.operation.endswith("ModelPackage"):  # a version: model-package/<group>/<n>
        return _model_package(call, account, action)
    # The name the operation is about (CreateEndpoint also names its config, CreateTransformJob its
    # model: AWS authorizes those on the endpoint or the job itself).
    about = SAGEMAKER_ABOUT.get(call.operation)
    found = [
        (k, t)
        for k, t in SAGEMAKER_NAMES.items()
        if k in p and (call.operation.endswith(_camel(t)) if about is None else k == about)
    ]
    if not found:
        raise Unmapped(call.operation)
    key, kind = found[0]
    arn = f"arn:aws:sagemaker:{call.region}:{account}:{kind}/{str(p[key]).lower()}"
    requests = [Request(action, arn)]
    if call.operation.startswith("Create") and p.get("Tags"):
        requests.append(Request("sagemaker:AddTags", arn))  # tag on create
    for role_key in ("RoleArn", "ExecutionRoleArn"):
        if role_key in p and call.operation.startswith("Create"):
            requests.append(Request("iam:PassRole", p[role_key], PASSED_TO))
    return requests


def _model_package(call: Call, account: str, action: str) -> list[Request]:
    """CreateModelPackage is authorized on the group's versions; Describe/Update on the version's ARN."""
    p = call.params
    if call.operation == "CreateModelPackage":
        arn = f"arn:aws:sagemaker:{call.region}:{account}:model-package/{p['ModelPackageGroupName'].lower()}"
        return [Request(action, arn)] + ([Request("sagemaker:AddTags", arn)] if p.get("Tags") else [])
    name = str(p.get("ModelPackageArn") or p["ModelPackageName"])
    arn = name if name.startswith("arn:") else f"arn:aws:sagemaker:{call.region}:{account}:model-package/{name}"
    return [Request(action, arn.lower())]


def _by_name(call: Call, account: str, prefix: str) -> list[Request]:
    p = call.params
    action = f"{prefix}:{call.operation}"
    if action in NO_RESOURCE:
        context = {"cloudwatch:namespace": p["Namespace"]} if "Namespace" in p else {}
        return [Request(action, "*", context)]
    if prefix == "ecr" and "repositoryName" in p:
        registry = p.get("registryId") or account
        return [Request(action, f"arn:aws:ecr:{call.region}:{registry}:repository/{p['repositoryName']}")]
    if prefix == "logs" and "logGroupName" in p:
        group = f"arn:aws:logs:{call.region}:{account}:log-group:{p['logGroupName']}"
        stream = p.get("logStreamName")
        return [Request(action, f"{group}:log-stream:{stream}" if stream else f"{group}:*")]
    if prefix == "application-autoscaling" and "ServiceNamespace" in p:  # on the target, whose ARN AWS makes up
        requests = [Request(action, f"arn:aws:application-autoscaling:{call.region}:{account}:scalable-target/id")]
        if call.operation == "RegisterScalableTarget":
            requests.append(
                Request(
                    "iam:CreateServiceLinkedRole",
                    f"arn:aws:iam::{account}:{SCALING_ROLE}",
                    {"iam:AWSServiceName": SCALING_SERVICE},
                )
            )
        return requests
    if prefix == "cloudwatch" and ("AlarmName" in p or "AlarmNames" in p):  # PutMetricAlarm, Describe/DeleteAlarms
        names = [p["AlarmName"]] if "AlarmName" in p else p["AlarmNames"]
        return [Request(action, alarm_arn(call.region, account, name)) for name in names]
    if prefix == "elasticfilesystem" and "FileSystemId" in p:  # EFS authorizes on the file system
        return [Request(action, f"arn:aws:elasticfilesystem:{call.region}:{account}:file-system/{p['FileSystemId']}")]
    if prefix == "servicequotas" and "QuotaCode" in p:
        return [Request(action, f"arn:aws:servicequotas:{call.region}:{account}:{p['ServiceCode']}/{p['QuotaCode']}")]
    raise Unmapped(call.operation)


def launcher_requests(call: Call, account: str) -> list[Request]:
    """What IAM authorizes for one call the launcher makes; [] for calls it does not judge."""
    if (call.service, call.operation) in NOT_JUDGED:
        return []
    prefix = IAM_PREFIX.get(call.service, call.service)
    if prefix == "s3":
        return _s3(call)
    if prefix == "sagemaker":
        return _sagemaker(call, account)
    return _by_name(call, account, prefix)


# --- the execution role: what SageMaker does as it, for what the tasks create ----------------

# A key inside a prefix the role must read or write; the role's grants are prefix wildcards, so
# any one key under the prefix answers for all of them.
ANY_KEY = "object"


def _under(uri: str, *parts: str) -> str:
    bucket, key = split_s3(uri)
    return s3_arn(bucket, "/".join([key.rstrip("/"), *parts]) if key else "/".join(parts))


def _read_prefix(uri: str) -> list[Request]:
    bucket, key = split_s3(uri)
    return [
        Request("s3:ListBucket", s3_arn(bucket), {"s3:prefix": key}),
        Request("s3:GetObject", _under(uri, ANY_KEY) if key.endswith("/") or not key else s3_arn(bucket, key)),
    ]


def _pull(image: str) -> list[Request]:
    from project.aws.fit import PULL_ACTIONS, repository_arn

    arn = repository_arn(image)
    if arn is None:
        raise Unmapped(f"image {image} is not in ECR")
    return [Request("ecr:GetAuthorizationToken", "*"), *(Request(a, arn) for a in PULL_ACTIONS)]


def _logs_and_metrics(region: str, account: str, group: str, stream: str, namespace: str) -> list[Request]:
    arn = f"arn:aws:logs:{region}:{account}:log-group:{group}"
    return [
        Request("logs:CreateLogGroup", arn),
        Request("logs:DescribeLogStreams", f"{arn}:*"),
        Request("logs:CreateLogStream", f"{arn}:log-stream:{stream}"),
        Request("logs:PutLogEvents", f"{arn}:log-stream:{stream}"),
        Request("cloudwatch:PutMetricData", "*", {"cloudwatch:namespace": namespace}),
    ]


@dataclass(frozen=True)
class RoleWork:
    """What SageMaker does as `role` for one resource a task created."""

    what: str  # e.g. "training job lightning-2026 (invoke train)"
    role: str
    requests: list[Request]


def _training_job(call: Call, account: str) -> RoleWork:
    p = call.params
    name = p["TrainingJobName"]
    requests: list[Request] = []
    for channel in p.get("InputDataConfig", []):  # the data channels and the SDK's code channel
        if "S3DataSource" in channel["DataSource"]:
            requests += _read_prefix(channel["DataSource"]["S3DataSource"]["S3Uri"])
        # A FileSystemDataSource is mounted through the network, with no IAM action. The network
        # interfaces of a job in a VPC are not judged here: the applied world has no VPC
        # (tests/test_file_systems.py plans terraform/ with one and checks the role's grants change).
    output = p["OutputDataConfig"]["S3OutputPath"]
    requests += [Request("s3:PutObject", _under(output, name, "output", f)) for f in ("model.tar.gz", "output.tar.gz")]
    if "CheckpointConfig" in p:  # synced up while training, down again on resume
        checkpoints = p["CheckpointConfig"]["S3Uri"]
        requests += [Request(a, _under(checkpoints, "last.ckpt")) for a in ("s3:PutObject", "s3:GetObject")]
        requests += _read_prefix(checkpoints.rstrip("/") + "/")[:1]
    requests += _pull(p["AlgorithmSpecification"]["TrainingImage"])
    requests += _logs_and_metrics(
        call.region, account, "/aws/sagemaker/TrainingJobs", f"{name}/algo-1-1700000000", "/aws/sagemaker/TrainingJobs"
    )
    return RoleWork(f"training job {name} ({call.who})", p["RoleArn"], requests)


def _model(call: Call) -> RoleWork:
    p = call.params
    containers = [p["PrimaryContainer"]] if "PrimaryContainer" in p else p.get("Containers", [])
    requests: list[Request] = []
    for container in containers:
        requests += _pull(container["Image"])
        if container.get("ModelDataUrl"):
            bucket, key = split_s3(container["ModelDataUrl"])
            requests.append(Request("s3:GetObject", s3_arn(bucket, key)))
    return RoleWork(f"model {p['ModelName']} ({call.who})", p["ExecutionRoleArn"], requests)


def _served(call: Call, account: str, roles: dict[str, str], outputs_of: dict[str, dict[str, str]]) -> RoleWork | None:
    """An endpoint or transform job runs as its model's role, writing its own logs (and output)."""
    p = call.params
    role = roles.get(p.get("ModelName") or p.get("EndpointConfigName") or "")
    if call.operation == "CreateEndpoint":
        name, group, namespace, requests = p["EndpointName"], "Endpoints", "/aws/sagemaker/Endpoints", []
        outputs = outputs_of.get(p["EndpointConfigName"], {})  # an async endpoint writes answers and refusals
        for path, suffix in (("S3OutputPath", ".out"), ("S3FailurePath", "-error.out")):
            if path in outputs:
                requests.append(Request("s3:PutObject", _under(outputs[path], f"{ANY_KEY}{suffix}")))
    else:
        name, group, namespace = p["TransformJobName"], "TransformJobs", "/aws/sagemaker/TransformJobs"
        requests = _read_prefix(p["TransformInput"]["DataSource"]["S3DataSource"]["S3Uri"])
        requests.append(Request("s3:PutObject", _under(p["TransformOutput"]["S3OutputPath"], f"{ANY_KEY}.out")))
    if role is None:
        return None  # its model was created by an earlier test; that test judged the model
    group_name = f"/aws/sagemaker/{group}/{name}"
    requests += _logs_and_metrics(call.region, account, group_name, f"AllTraffic/i-{name}", namespace)
    return RoleWork(f"{group[:-1].lower()} {name} ({call.who})", role, requests)


def _rollout(call: Call, account: str, roles: dict[str, str]) -> RoleWork | None:
    """A guarded rollout: SageMaker reads its alarms' state as the role of the new config's models."""
    p = call.params
    alarms = p.get("DeploymentConfig", {}).get("AutoRollbackConfiguration", {}).get("Alarms", [])
    role = roles.get(p["EndpointConfigName"])
    if not alarms or role is None:
        return None
    requests = [Request("cloudwatch:DescribeAlarms", alarm_arn(call.region, account, a["AlarmName"])) for a in alarms]
    return RoleWork(f"rollout of endpoint {p['EndpointName']} ({call.who})", role, requests)


def role_work(calls: list[Call], account: str) -> Iterator[RoleWork]:
    """What SageMaker does as the execution role for each job, model, endpoint and transform job the
    tasks created, and for each guarded rollout (its alarms). Our own code inside a job's container
    calls no AWS API: its data and code are channel files SageMaker downloaded, its output is files
    SageMaker uploads (fetch.py's s3:// source is for local runs)."""
    roles: dict[str, str] = {}  # model or endpoint config name -> the execution role it runs as
    outputs_of: dict[str, dict[str, str]] = {}  # async endpoint config -> its OutputConfig
    for call in calls:
        if not call.is_task or call.service not in ("sagemaker", "sagemaker-runtime"):
            continue
        if call.operation == "CreateTrainingJob":
            yield _training_job(call, account)
        elif call.operation == "CreateModel":
            work = _model(call)
            roles[call.params["ModelName"]] = work.role
            yield work
        elif call.operation == "CreateEndpointConfig":
            for variant in call.params.get("ProductionVariants", []):
                if variant.get("ModelName") in roles:
                    roles[call.params["EndpointConfigName"]] = roles[variant["ModelName"]]
            if "AsyncInferenceConfig" in call.params:
                outputs_of[call.params["EndpointConfigName"]] = call.params["AsyncInferenceConfig"]["OutputConfig"]
        elif call.operation in ("CreateEndpoint", "CreateTransformJob"):
            served = _served(call, account, roles, outputs_of)
            if served is not None:
                if call.operation == "CreateEndpoint":
                    roles[call.params["EndpointName"]] = served.role
                yield served
        elif call.operation == "InvokeEndpointAsync" and call.params["EndpointName"] in roles:
            # SageMaker reads the request's input object as the endpoint's role.
            bucket, key = split_s3(call.params["InputLocation"])
            what = f"async request to {call.params['EndpointName']} ({call.who})"
            yield RoleWork(what, roles[call.params["EndpointName"]], [Request("s3:GetObject", s3_arn(bucket, key))])
        elif call.operation == "UpdateEndpoint":
            rollout = _rollout(call, account, roles)
            if rollout is not None:
                yield rollout


# --- the verdict ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Policies:
    """What Terraform rendered, as IAM holds it."""

    account: str
    launcher: list[dict[str, Any]]
    role_arn: str
    role: list[dict[str, Any]]


def refusals(calls: list[Call], policies: Policies) -> list[str]:
    """One line per request the rendered policies do not allow: who, the action, the resource."""
    from tests.iam_policy import ALLOWED, decision

    found: list[str] = []
    for call in calls:
        if not call.is_task:
            continue
        try:
            requests = launcher_requests(call, policies.account)
        except (Unmapped, KeyError) as exc:
            found.append(f"{call.who}: {call.service} {call.operation} ({exc}): map it to IAM in tests/aws_calls.py")
            continue
        for request in requests:
            verdict = decision(policies.launcher, request)
            if verdict != ALLOWED:
                found.append(
                    f"{call.who}: the launcher policy does not allow {request.action} on {request.resource}"
                    f"{_context(request)} ({call.operation}: {verdict})"
                )
    for work in role_work(calls, policies.account):
        if work.role != policies.role_arn:
            continue  # a role the test brought; terraform/ makes no promise for it
        for request in work.requests:
            verdict = decision(policies.role, request)
            if verdict != ALLOWED:
                found.append(
                    f"{work.what}: the execution role may not {request.action} on {request.resource}"
                    f"{_context(request)} ({verdict})"
                )
    return list(dict.fromkeys(found))


def _context(request: Request) -> str:
    return "".join(f" with {k}={v}" for k, v in request.context.items())
