"""ListTrainingJobs as AWS answers it, for as long as the sandbox's endpoint serves.

moto cuts the page (MaxResults) first, from its jobs in the order they were made, never sorts, and
only then filters by NameContains: once moto holds more jobs than a page, a name's newest jobs are
missing from its answer, and "the latest job" is whichever came first. AWS filters, sorts (SortBy
CreationTime, Name or Status; SortOrder), then pages. `invoke status`, `invoke fetch` and the launch
summary's start-up prediction (project/aws/startup_history.py) ask for a name's newest jobs.
"""

from __future__ import annotations

from typing import Any

from project.sandbox import record
from project.sandbox.patches import MethodPatch

SORT_ATTRIBUTES = {"Name": "training_job_name", "Status": "training_job_status", "CreationTime": "creation_time"}


def _summary(job: Any) -> dict[str, Any]:
    fields = {
        "TrainingJobName": job.training_job_name,
        "TrainingJobArn": job.arn,
        "CreationTime": job.creation_time,
        "TrainingEndTime": job.training_end_time,
        "LastModifiedTime": job.last_modified_time,
        "TrainingJobStatus": job.training_job_status,
    }
    return {k: v for k, v in fields.items() if v is not None}


def list_training_jobs(response: Any) -> Any:
    """ListTrainingJobs as the API does it: filter, sort, then page."""
    from moto.core.responses import ActionResult

    name, status = response._get_param("NameContains"), response._get_param("StatusEquals")
    warm_pool = response._get_param("WarmPoolStatusEquals")
    for job in response.sagemaker_backend.training_jobs.values():
        record.update_warm_pool(job)
    jobs = [
        j
        for j in response.sagemaker_backend.training_jobs.values()
        if (not name or name in j.training_job_name)
        and (not status or j.training_job_status == status)
        and (not warm_pool or (getattr(j, "warm_pool_status", None) or {}).get("Status") == warm_pool)
    ]
    attribute = SORT_ATTRIBUTES.get(response._get_param("SortBy") or "CreationTime", "creation_time")
    jobs.sort(key=lambda j: getattr(j, attribute), reverse=response._get_param("SortOrder") == "Descending")
    start = int(response._get_param("NextToken") or 0)
    end = start + int(response._get_param("MaxResults") or 100)
    result: dict[str, Any] = {"TrainingJobSummaries": [_summary(j) for j in jobs[start:end]]}
    if end < len(jobs):
        result["NextToken"] = str(end)
    return ActionResult(result)


class TrainingJobListing(MethodPatch):
    def target(self) -> tuple[type, str, Any]:
        from moto.sagemaker.responses import SageMakerResponse

        return SageMakerResponse, "list_training_jobs", list_training_jobs
