"""Why a training job failed or stopped: one line of cause, one of fix, and where to read its log.

Pure: `classify(JobFacts) -> Triage`, over what DescribeTrainingJob says (status, SecondaryStatus
and its transitions, FailureReason, which SageMaker takes from `/opt/ml/output/failure`, written by
project.core.process.record_failure) and the last lines of each host's CloudWatch stream. `RULES` is read
top to bottom and the first rule that matches wins; the order is deliberate:

1. what the platform itself reports (spot reclaim, a stop, MaxRuntime, capacity, quota): the
   training code never ran or was told to end, whatever its log says after that;
2. CUDA out of memory before the collective timeouts and kills: one rank running out of GPU
   memory leaves the others waiting in a collective until NCCL times out, and torchrun then
   kills what is left;
3. a data error or a missing module before NCCL: a rank that died while starting leaves the
   others waiting at the rendezvous (a "missing rank");
4. the watchdog's "stalled" line (project/training/watchdog.py) before NCCL's timeouts and the SIGKILL:
   it names the stuck rank and frame, and the ranks it kills would read as killed for memory;
5. the kernel's SIGKILL (host memory) last: torchrun also kills healthy workers once one failed.

Reading the job from AWS is project.aws.workflow's `why` (a few calls); this module makes none.

This module is over 300 lines because RULES is one ordered table (first match wins: the order is the design)
and `classify` is its reader.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from project.core.sagemaker_names import LOG_GROUP

LOG_TAIL_LINES = 200  # per host: the tracebacks of several ranks plus torchrun's failure summary
SHOWN_LINES = 15  # last lines shown when no rule matched
EVIDENCE_CHARS = 300

REASON, STATUS, LOGS = "reason", "status", "logs"  # where a rule looks


@dataclass(frozen=True)
class Rule:
    kind: str  # the class of failure, e.g. "cuda-oom"
    pattern: str  # a regex; its named groups fill the cause and fix templates
    cause: str  # templates: {job}, {instance}, {region}, {checkpoints}, {host} and the named groups
    fix: str
    where: tuple[str, ...] = (REASON, LOGS)
    job_status: str = "Failed|Stopped"  # the TrainingJobStatus values it applies to (a regex)


RESUME = "run the same `invoke train` command again (same config): it resumes from the newest checkpoint"
CLOSER_HOST = "read the first error of the other hosts' logs (links below): that rank failed first"

RULES: tuple[Rule, ...] = (
    Rule(
        "spot-interruption",
        r"\bInterrupted\b|[Ss]pot (?:instance )?(?:interruption|was interrupted)",
        "EC2 reclaimed the managed spot instance ({match})",
        f"{RESUME}; raise job.max_wait_minutes to wait longer for spot capacity, or set job.spot=false",
        where=(STATUS, REASON),
    ),
    Rule(
        "spot-interruption",
        r"\bMaxWaitTimeExceeded\b",
        "the job waited longer than job.max_wait_minutes for spot capacity ({match})",
        f"raise job.max_wait_minutes or set job.spot=false, then {RESUME}",
        where=(STATUS, REASON),
    ),
    Rule(
        "max-runtime",
        r"\bMaxRuntimeExceeded\b",
        "the job reached its MaxRuntime (job.max_run_minutes) and SageMaker stopped it{saved}",
        f"raise job.max_run_minutes, then {RESUME}",
        where=(STATUS,),
        job_status="Stopped",
    ),
    Rule(
        "stopped",
        r"sigterm_checkpoint_step=(?P<step>\d+)",
        "stopped by StopTrainingJob; the training saved a checkpoint at step {step} ({checkpoints})",
        "run the same `invoke train` command again (same config): it resumes from step {step}",
        where=(LOGS,),
        job_status="Stopped",
    ),
    Rule(
        "stopped",
        r"Stopped",
        "stopped by StopTrainingJob before the training saved a checkpoint on the stop",
        "run the same `invoke train` command again: it resumes from the newest periodic checkpoint in "
        "{checkpoints} if one was written (trainer.checkpoint_every_n_steps), else it starts over",
        where=(STATUS,),
        job_status="Stopped",
    ),
    Rule(
        "capacity",
        r"\b(?:Insufficient)?CapacityError\b|[Ii]nsufficient capacity|Unable to provision requested ML compute",
        "SageMaker had no {instance} capacity in {region} when the job started",
        "launch again later, or choose another instance type (instance=...) or region (aws.region=...); "
        "managed spot (job.spot=true) draws on other capacity",
        where=(REASON, STATUS),
    ),
    Rule(
        "quota",
        r"\bResourceLimitExceeded\b(?:.*?service limit '(?P<quota>[^']+)')?",
        "an account quota is too low for this job{quota_named}",
        "request an increase in the Service Quotas console (Amazon SageMaker, '{quota}'), "
        "or stop other jobs of that instance type first",
        where=(REASON, STATUS),
    ),
    Rule(
        "cuda-oom",
        r"CUDA out of memory|OutOfMemoryError: CUDA|CUDA error: out of memory|CUBLAS_STATUS_ALLOC_FAILED",
        "a GPU ran out of memory on {host}",
        "lower trainer.batch_size (the global batch; each GPU gets its share), or use "
        "trainer.precision=16-mixed (bf16-mixed on A10G/L4/A100/H100 and newer); a GPU with more memory also works",
    ),
    Rule(
        "data",
        r"\bDataError: (?P<detail>.+?)(?:, exit code: \d+)?$",  # the detail without SageMaker's suffix
        "the dataset failed its checks in the job: {detail}",
        "upload good files with `invoke upload` (it sends verified copies) or fix dataset.files / dataset.s3_prefix",
    ),
    Rule(
        "import",
        r"(?:ModuleNotFoundError|ImportError)\W+No module named '(?P<module>[\w.]+)'",
        "user code failed to import: no module named '{module}' in the job's environment",
        "add the package that provides '{module}' to requirements-train.txt (the job's Python packages), "
        "or fix the import / model.net._target_; `invoke local` with the same overrides shows it in seconds",
    ),
    Rule(
        "import",
        r"ImportError: cannot import name '(?P<name>\w+)' from '(?P<module>[\w.]+)'",
        "user code failed to import: '{module}' has no '{name}' (a version mismatch?)",
        "pin the version of the package providing '{module}' in requirements-train.txt that has '{name}', "
        "or fix the import",
    ),
    Rule(
        "import",
        r"Error locating target '(?P<target>[\w.]+)'",
        "the model class model.net._target_='{target}' could not be imported",
        "fix model.net._target_ or make its module importable in the job (requirements-train.txt); "
        "`invoke local` with the same overrides shows the full import error",
    ),
    Rule(
        "stalled",
        r"stalled: rank (?P<rank>\d+) on (?P<on>\S+) stuck in a data loader worker .*? at step (?P<step>\d+) "
        r"for (?P<minutes>[\d.]+) min",
        "rank {rank} on {on} waited {minutes} min at step {step} for a data loader worker that never delivered "
        "(a worker hung or died: a deadlock in the dataset, a worker killed for memory)",
        "rerun with trainer.num_workers=0 to rule the workers out (the batches are then loaded in the rank); "
        f"the rank's stacks are in {{on}}'s log; {RESUME}",
    ),
    Rule(
        "stalled",
        r"stalled: rank (?P<rank>\d+) on (?P<on>\S+) stuck in (?P<frame>.+?) in (?P<phase>[a-z -]+) "
        r"at step (?P<step>\d+) for (?P<minutes>[\d.]+) min(?P<waiting>(?:; rank [\d, ]+ waits? for it)?)",
        "rank {rank} on {on} made no progress for {minutes} min in {phase} at step {step}, stuck in {frame}{waiting}",
        "read rank {rank}'s stacks in {on}'s log (the watchdog printed them); a collective or device call: rerun "
        "with +job.environment.NCCL_DEBUG=INFO +job.environment.TORCH_NCCL_ASYNC_ERROR_HANDLING=1 (older torch: "
        "NCCL_ASYNC_ERROR_HANDLING=1); a data worker: trainer.num_workers=0 rules them out; "
        "a slow step that is not stuck: raise trainer.stall_timeout_minutes",
    ),
    Rule(
        "stalled",
        r"stalled: rank (?P<rank>\d+) on (?P<on>\S+) waits in (?P<frame>.+?) in (?P<phase>[a-z -]+) "
        r"at step (?P<step>\d+) for (?P<minutes>[\d.]+) min",
        "rank {rank} on {on} waited {minutes} min in {frame} at step {step} for a rank on another host",
        "read the other hosts' logs (links below) for their `stalled:` line: it names the stuck rank; "
        "rerun with +job.environment.NCCL_DEBUG=INFO to see which rank a collective waits for",
    ),
    Rule(
        "stalled",
        r"stalled: a rank on (?P<on>\S+) never reported after (?P<minutes>[\d.]+) min of start-up",
        "a training process on {on} did not finish starting in {minutes} min (start-up, data set-up or rendezvous)",
        "read {on}'s log: a rendezvous waits for a host that never started (check the other hosts' logs and "
        "`invoke status`), a data download is slow (raise trainer.startup_timeout_minutes)",
    ),
    Rule(
        "nccl-timeout",
        r"Watchdog caught collective operation timeout|NCCL.{0,80}(?:timed out|[Tt]imeout)",
        "a collective operation (NCCL) timed out on {host}: another rank stopped answering",
        f"{CLOSER_HOST}; if none failed, a rank hung (rerun with +job.environment.NCCL_DEBUG=INFO)",
    ),
    Rule(
        "missing-rank",
        r"RendezvousTimeoutError|DistNetworkError|DistStoreError|[Ss]ocket [Tt]imeout|"
        r"client socket has timed out|store->get\(.*\) got error",
        "a rank never joined the process group on {host} (rendezvous / store timeout)",
        f"{CLOSER_HOST}; if a host wrote nothing, it did not start: check `invoke status` and the instance count",
    ),
    Rule(
        "host-oom-kill",
        r"exit code: 137\b|exitcode\s*:\s*-9\b|Signal 9 \(SIGKILL\)|Please use an instance type with more memory|"
        r"^Killed$",
        "the kernel's out-of-memory killer ended a training process (SIGKILL; exit 137): {instance} ran out of "
        "host memory",
        "use an instance type with more memory (instance=...), or lower trainer.batch_size or "
        "trainer.num_workers (each data-loading worker holds its own copy of a batch)",
    ),
)


@dataclass(frozen=True)
class JobFacts:
    """What triage reads about one job: its DescribeTrainingJob and each host's last log lines."""

    name: str
    status: str  # TrainingJobStatus
    failure_reason: str = ""
    status_history: tuple[str, ...] = ()  # SecondaryStatus and "Status: StatusMessage" of each transition
    region: str = ""
    instance: str = ""  # InstanceType
    checkpoints: str = ""  # CheckpointConfig.S3Uri
    hosts: Mapping[str, Sequence[str]] = field(default_factory=dict)  # log stream -> its last lines

    @classmethod
    def of(cls, desc: Mapping[str, Any], hosts: Mapping[str, Sequence[str]]) -> JobFacts:
        transitions = tuple(
            f"{t.get('Status', '')}: {t.get('StatusMessage', '')}" for t in desc.get("SecondaryStatusTransitions") or []
        )
        rc = desc.get("ResourceConfig") or {}
        return cls(
            name=desc["TrainingJobName"],
            status=desc["TrainingJobStatus"],
            failure_reason=desc.get("FailureReason") or "",
            status_history=(desc.get("SecondaryStatus") or "", *transitions),
            region=region_of(desc.get("TrainingJobArn", "")),
            instance=rc.get("InstanceType", ""),
            checkpoints=(desc.get("CheckpointConfig") or {}).get("S3Uri", ""),
            hosts=hosts,
        )


@dataclass(frozen=True)
class Triage:
    job: str
    status: str
    kind: str  # a Rule.kind, "completed", "running" or "unknown"
    cause: str
    fix: str
    reason: str = ""  # FailureReason's first line
    link: str = ""  # the console page of the log where the evidence is (or of the job's streams)
    evidence: str = ""  # the line that matched, as "<host>: <line>"
    last_lines: tuple[str, ...] = ()  # shown when nothing matched

    def report(self) -> str:
        """What `invoke why` prints, and `invoke train` when its job fails (first line: the headline)."""
        head = f"job {self.job} {self.status}" + (f": {self.reason}" if self.reason else "")
        lines = [head, f"cause: {self.cause}", f"fix: {self.fix}"]
        lines += [f"evidence: {self.evidence}"] if self.evidence else []
        lines += [f"log: {self.link}"] if self.link else []
        if self.last_lines:
            lines += ["last log lines:", *(f"  | {line}" for line in self.last_lines)]
        return "\n".join(lines)


def region_of(arn: str) -> str:
    """The region field of an ARN (arn:aws:sagemaker:<region>:<account>:training-job/<name>)."""
    parts = arn.split(":")
    return parts[3] if len(parts) > 5 else ""


def _console(text: str) -> str:
    """A name as the CloudWatch console's URL fragment spells it: URL-encoded twice, % written as $."""
    return quote(quote(text, safe=""), safe="").replace("%", "$")


def log_link(region: str, stream: str | None = None, job: str | None = None) -> str:
    """The CloudWatch console page of one log stream, or of the job's streams (a name filter)."""
    if not region:
        return ""
    group = f"https://{region}.console.aws.amazon.com/cloudwatch/home?region={region}#logsV2:log-groups/log-group/"
    group += _console(LOG_GROUP)
    if stream:
        return f"{group}/log-events/{_console(stream)}"
    return f"{group}$3FlogStreamNameFilter$3D{_console(job or '')}"  # ?logStreamNameFilter=, encoded once


def host_of(stream: str) -> str:
    """algo-2 of the stream `<job>/algo-2-1700000000`."""
    return re.sub(r"-\d+$", "", stream.rsplit("/", 1)[-1])


def _sources(facts: JobFacts, where: Sequence[str]) -> list[tuple[str | None, str]]:
    """(log stream or None, line) in the order a rule reads them."""
    found: list[tuple[str | None, str]] = []
    for place in where:
        if place == REASON:
            found += [(None, line) for line in facts.failure_reason.splitlines()]
        elif place == STATUS:
            found += [(None, line) for line in facts.status_history if line]
        else:
            found += [(stream, line) for stream in sorted(facts.hosts) for line in facts.hosts[stream]]
    return found


def _values(facts: JobFacts, stream: str | None, match: re.Match[str]) -> dict[str, str]:
    groups = {k: v for k, v in match.groupdict().items() if v is not None}
    saved = [line for lines in facts.hosts.values() for line in lines if "sigterm_checkpoint_step=" in line]
    return {
        "job": facts.name,
        "instance": facts.instance or "the instance type",
        "region": facts.region or "this region",
        "checkpoints": facts.checkpoints or "the job's checkpoint folder",
        "host": host_of(stream) if stream else "a host",
        "match": match.group(0),
        "quota": f"{facts.instance or '<instance type>'} for training job usage",
        "quota_named": f" ('{groups['quota']}')" if "quota" in groups else "",
        "saved": "; it saved a checkpoint on the way out" if saved else "",
        **groups,
    }


def _last_lines(facts: JobFacts) -> tuple[str | None, tuple[str, ...]]:
    """The stream whose end is shown when nothing matched (the first with lines), and that end."""
    for stream in sorted(facts.hosts):
        if facts.hosts[stream]:
            return stream, tuple(facts.hosts[stream][-SHOWN_LINES:])
    return None, ()


def classify(facts: JobFacts) -> Triage:
    """The first rule of RULES that matches the job; see the module docstring for the order."""
    reason = facts.failure_reason.strip().splitlines()[0] if facts.failure_reason.strip() else ""
    base = functools.partial(Triage, job=facts.name, status=facts.status, reason=reason)
    if facts.status == "Completed":
        return base(kind="completed", cause="the job completed", fix=f"`invoke fetch {facts.name}`")
    if facts.status not in ("Failed", "Stopped"):
        return base(
            kind="running",
            cause=f"the job has not ended yet ({' / '.join(filter(None, (facts.status, *facts.status_history[:1])))})",
            fix=f"follow it with `invoke logs {facts.name} --follow`",
            link=log_link(facts.region, job=facts.name),
        )
    for rule in RULES:
        if not re.fullmatch(rule.job_status, facts.status):
            continue
        pattern = re.compile(rule.pattern, re.M)
        for stream, line in _sources(facts, rule.where):
            match = pattern.search(line)
            if match is None:
                continue
            values = _values(facts, stream, match)
            return base(
                kind=rule.kind,
                cause=rule.cause.format_map(values),
                fix=rule.fix.format_map(values),
                link=log_link(facts.region, stream) if stream else log_link(facts.region, job=facts.name),
                evidence=f"{host_of(stream)}: {line.strip()[:EVIDENCE_CHARS]}" if stream else "",
            )
    stream, last = _last_lines(facts)
    return base(
        kind="unknown",
        cause=f"no known pattern in the FailureReason or the last {LOG_TAIL_LINES} log lines of each host",
        fix=f"read the last lines below; the whole log: `invoke logs {facts.name}`",
        link=log_link(facts.region, stream) if stream else log_link(facts.region, job=facts.name),
        last_lines=last,
    )
