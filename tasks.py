# Over 300 lines, kept whole: invoke's task list, one short task per command (its help, then a hand-off into project/).
"""Tasks: train locally or on SageMaker, move data and artifacts. `invoke --list` shows them.

Tasks that take Hydra overrides accept them as bare tokens: `invoke local trainer.max_epochs=1`.
Heavy imports (torch, Lightning, the SageMaker SDK) happen inside the tasks that need them.

Importing this module does exactly two things beyond defining the tasks, both for the task that
invoke is about to parse and run (tests/test_process.py checks that nothing else changes):
- invoke's parser learns bare Hydra overrides (project.face.cli.accept_bare_overrides), and
- the garbage collector is tuned for a short process (project.core.process.tune_gc_for_a_short_process).
"""

from invoke import Collection, Exit, task

from project.core.errors import UserError
from project.core.process import tune_gc_for_a_short_process
from project.face.cli import OVERRIDES_HELP, accept_bare_overrides, user_errors
from project.sandbox import DEFAULT_PORT as SANDBOX_PORT

# Replaces invoke's Collection.to_contexts, a global, and that is the only way: the `invoke`
# command builds its own Program and Parser, and loads this module's `ns` as a copy that is always
# a plain Collection (Collection.from_module), so no subclass or hook given here reaches the parser.
accept_bare_overrides()
tune_gc_for_a_short_process()  # a task builds large, long-lived object graphs as it starts, then ends

JOB_HELP = "A training job, by name or its folder runs/<job> (default: the latest job)"


MULTIRUN_HELP = "Sweep (Hydra multirun): a,b / choice() / range() / interval() values make one job per combination"


@task(iterable=["overrides"], help={"overrides": OVERRIDES_HELP, "multirun": MULTIRUN_HELP})
def local(c, overrides=None, multirun=False):
    """Train on this machine (CPU or its GPUs) with Hydra overrides; artifacts go to runs/<run>/.

    Ctrl-C stops at the next step with a checkpoint; the same command resumes. With -m, a sweep:
    the jobs one after another, in runs/<sweep>/<n>/, with a results table.
    """
    from project.aws import source  # noqa: F401 (an s3:// channel: the check reads it, the training process its copy)
    from project.training import local

    if multirun:
        from project.face import sweep

        with user_errors():
            sweep.local_sweep(overrides or [])
        return
    with user_errors():  # one clear line in a second; the training process imports meanwhile
        code = local.run(overrides or [])
    if code in local.SELF_REPORTED_EXITS:
        raise Exit(code=code)  # the training process printed what happened
    if code:
        raise Exit(f"error: training failed (exit code {code}); see the log above", code=code)


@task(
    iterable=["overrides"],
    help={
        "run_dir": "A run: its name under runs/ or its folder (runs/<run>); with --endpoint, the endpoint's name",
        "images": "Photos or scans of a digit, PNG or JPEG: a file, a folder or a,b,c",
        "raw": "The images already are 28x28 light-on-dark model input (e.g. MNIST's own): no preprocessing",
        "endpoint": "Ask the SageMaker endpoint named first (`invoke deploy`) instead of a local run",
        "variant": "With --endpoint: send every request to this production variant (TargetVariant)",
        "overrides": OVERRIDES_HELP + " (aws.*, with --endpoint)",
    },
)
def predict(c, run_dir, images, raw=False, endpoint=False, variant=None, overrides=None):
    """Read handwritten digits in photos with a run's exported model: the top two classes, or why unsure."""
    from project.serving.predict import expand_images, find_model, run_folder
    from project.serving.predict import predict as classify

    with user_errors():
        if endpoint:
            from project.aws import endpoint_predict

            endpoint_predict.predict_task(overrides or [], run_dir, expand_images(images), raw, variant)
            return
        if variant:
            raise Exit("error: --variant pins a request on an endpoint: add --endpoint", code=2)
        run = run_folder(run_dir, overrides or [])
        find_model(run)
        for prediction in classify(run, expand_images(images), raw=raw):
            print(prediction)


@task(iterable=["overrides"], help={"overrides": OVERRIDES_HELP, "dry_run": "List what would move; move nothing"})
def upload(c, overrides=None, dry_run=False):
    """Upload the dataset's raw files to the data bucket (incremental: unchanged files are skipped)."""
    from project.aws import workflow

    with user_errors():
        workflow.upload(overrides or [], dry_run=dry_run)


@task(
    iterable=["overrides"],
    help={
        "overrides": OVERRIDES_HELP,
        "dry_run": "Print the docker command; run nothing",
    },
)
def build(c, overrides=None, dry_run=False):
    """Build the job.image=custom image (tag: hash of Dockerfile, requirements, base); skipped if in ECR.

    The base image is job.base_image (an override, e.g. job.base_image=<uri>); the code is not in it.
    """
    from project.aws import workflow

    with user_errors():
        workflow.build(overrides or [], dry_run, workflow.run_command)


@task(
    iterable=["overrides"],
    help={
        "overrides": OVERRIDES_HELP,
        "dry_run": "Print the commands",
    },
)
def push(c, overrides=None, dry_run=False):
    """Log Docker in to ECR (token from boto3) and push the custom image's tag; skipped if in ECR."""
    from project.aws import workflow

    with user_errors():
        workflow.push(overrides or [], dry_run, workflow.run_command)


@task(
    iterable=["overrides"],
    help={
        "overrides": OVERRIDES_HELP + "; e.g. trainer.gpus=4 instance=ml.p3.8xlarge job.spot=true",
        "yes": "Launch without asking (the cost summary is still printed)",
        "dry_run": "Validate and print the full CreateTrainingJob request; launch nothing",
        "wait": "Stream the logs until the job ends (default); --no-wait detaches",
        "poll": "Seconds between status checks while waiting (default 10)",
        "multirun": MULTIRUN_HELP
        + "; each a SageMaker job, hydra.launcher.max_parallel=N at once (default: the free quota)",
    },
)
def train(c, overrides=None, yes=False, dry_run=False, wait=True, poll=10, multirun=False):
    """Launch a SageMaker training job: validate, show the cost, confirm, launch, stream logs.

    With -m, a sweep: every job validated first, one summary and question, then launched and followed.
    """
    from project.aws import workflow

    if multirun:
        from project.face import sweep

        if dry_run or not wait:
            raise Exit("error: -m sweeps launch and follow their jobs: drop --dry-run/--no-wait", code=2)
        with user_errors():
            sweep.sagemaker_sweep(overrides or [], yes=yes, poll_seconds=float(poll))
        return
    with user_errors():
        workflow.train(overrides or [], yes=yes, dry_run=dry_run, wait=wait, poll_seconds=float(poll))


@task(
    iterable=["overrides"],
    help={
        "job": JOB_HELP,
        "follow": "Keep streaming until the job ends",
        "overrides": OVERRIDES_HELP + " (aws.*, job.base_name)",
    },
)
def logs(c, job=None, follow=False, overrides=None):
    """Print a training job's CloudWatch log."""
    from project.aws import workflow

    with user_errors():
        workflow.logs(overrides or [], job, follow)


@task(
    iterable=["overrides"],
    help={
        "job": "One job (default: the recent ones)",
        "limit": "How many recent jobs",
        "overrides": OVERRIDES_HELP + " (aws.*, job.base_name)",
    },
)
def status(c, job=None, limit=10, overrides=None):
    """Recent training jobs: status, instance, duration, billable time, cost, final metrics."""
    from project.aws import workflow

    with user_errors():
        workflow.status(overrides or [], job, limit)


@task(iterable=["overrides"], help={"job": JOB_HELP, "overrides": OVERRIDES_HELP + " (aws.*, job.base_name)"})
def why(c, job=None, overrides=None):
    """Why a training job failed or stopped: the cause, the fix and its CloudWatch log link."""
    from project.aws import workflow

    with user_errors():
        workflow.why(overrides or [], job)


@task(
    iterable=["overrides"],
    help={"job": "The job to stop (its name or its folder runs/<job>)", "overrides": OVERRIDES_HELP + " (aws.*)"},
)
def stop(c, job, overrides=None):
    """Stop a training job (it gets SIGTERM, checkpoints, and ends as Stopped)."""
    from project.aws import workflow

    with user_errors():
        workflow.stop(overrides or [], job)


@task(
    iterable=["overrides"],
    help={
        "job": JOB_HELP,
        "sweep": "A sweep id: every completed job of it, into runs/<sweep>/<n>/",
        "overrides": OVERRIDES_HELP + " (aws.*, paths.runs_dir)",
    },
)
def fetch(c, job=None, sweep=None, overrides=None):
    """Download a job's model, output and checkpoints into runs/<job>/ and print its metrics."""
    from project.aws import workflow

    with user_errors():
        if sweep:
            from project.aws.sweep import fetch_sweep

            fetch_sweep(overrides or [], sweep)
        else:
            workflow.fetch(overrides or [], job)


@task(
    iterable=["overrides"],
    help={
        "sweep": "Only the runs of this sweep",
        "since": "Only runs since 30m, 12h, 3d or an ISO date",
        "metric": "Only runs whose final metric passes, e.g. val_acc>=0.9",
        "mlflow": "Also the MLflow runs: of logger.mlflow.tracking_uri, else Terraform's tracking server, else mlruns/",
        "overrides": OVERRIDES_HELP + " (aws.*, paths.runs_dir, logger.mlflow.tracking_uri)",
    },
)
def runs(c, sweep=None, since=None, metric=None, mlflow=False, overrides=None):
    """Every run, local and SageMaker, newest first: status, config hash, git sha, overrides, metrics, cost."""
    from project.face import catalog

    with user_errors():
        catalog.list_runs(overrides or [], sweep, since, metric, mlflow=mlflow)


@task(
    iterable=["overrides"],
    help={
        "a": "A run: its folder, its name under runs/, or a SageMaker job; with --endpoint, the endpoint",
        "b": "The other run; with --endpoint, a folder of labelled images (one subfolder per class)",
        "endpoint": "Score each production variant of endpoint A on the images of B: accuracy, 95% interval, test",
        "overrides": OVERRIDES_HELP + " (aws.*, paths.runs_dir)",
    },
)
def compare(c, a, b, endpoint=False, overrides=None):
    """Two runs side by side: config diff, final metrics, one PNG of both learning curves.

    With --endpoint: every labelled image sent to each variant of the endpoint; accuracy per variant
    with a 95% interval (Wilson) and whether they differ significantly (two-proportion z-test).
    """
    with user_errors():
        if endpoint:
            from project.aws.variants import compare_task

            compare_task(overrides or [], a, b)
            return
        from project.face.compare import compare as compare_runs

        compare_runs(a, b, overrides or [])


@task(
    iterable=["overrides"],
    help={
        "region": "Region whose prices to read (default: aws.region, else the AWS profile's, else us-east-1)",
        "catalog": "Folder of instance files to rewrite (default: conf/instance)",
        "overrides": OVERRIDES_HELP + " (aws.*)",
    },
)
def prices(c, region=None, catalog=None, overrides=None):
    """Refresh conf/instance/*.yaml training prices from the AWS Price List API (writes date and source)."""
    from project.aws import workflow

    with user_errors():
        workflow.prices(overrides or [], region=region, catalog=catalog)


RUN_HELP = "A run (its name under runs/ or its folder runs/<run>) or a training job; default: the latest job"


@task(
    iterable=["overrides"],
    help={
        "job": RUN_HELP + "; or model:latest / model:<version> from the registry (`invoke models`)",
        "serverless": "A serverless endpoint (pay per request, scales to zero) instead of instances",
        "update": "Move an existing endpoint to this run (a new endpoint config; no downtime)",
        "traffic": "Add this run to endpoint deploy.endpoint_name as a variant with this % of its traffic (1-99)",
        "async_": "An asynchronous endpoint: requests queue in S3, it scales to zero instances while idle",
        "canary": "With --update: shift this % of the fleet (1-50) first, bake, then the rest; alarms roll it back",
        "linear": "With --update: shift this % of the fleet (10-50) at a time, baking after each step",
        "bake": "Minutes each step bakes with the alarms watching (1-60; default deploy.rollout.bake_minutes)",
        "yes": "Deploy without asking (the cost is still printed)",
        "overrides": OVERRIDES_HELP + "; e.g. deploy.instance=ml.g4dn.xlarge deploy.endpoint_name=digits",
    },
)
def deploy(
    c,
    job=None,
    serverless=False,
    update=False,
    traffic=None,
    canary=None,
    linear=None,
    bake=None,
    yes=False,
    async_=False,
    overrides=None,
):
    """Serve a run on a SageMaker endpoint: cost, confirm, create, wait; says how to remove it."""
    from project.aws import deploy as serve

    with user_errors():
        if async_:
            from project.aws.async_endpoints import check_async

            check_async(serverless, update, traffic)
        if traffic is not None:  # A/B: the run as one more variant of an endpoint
            from project.aws.variants import add_variant_task

            if (canary, linear, bake) != (None, None, None):
                raise UserError("--traffic adds a variant with its share at once: drop --canary/--linear/--bake")

            add_variant_task(overrides or [], job, traffic, yes, serverless or update)
            return
        serve.deploy_task(overrides or [], job, serverless, update, yes, async_, canary, linear, bake)


@task(
    iterable=["overrides", "retire"],
    help={
        "endpoint": "The endpoint whose traffic to shift",
        "retire": "A variant to remove (its model too) once the others serve; may repeat",
        "overrides": "VARIANT=PERCENT, once per variant that stays (summing to 100), e.g. B=50 A=50; "
        "and Hydra overrides (aws.*)",
    },
)
def traffic(c, endpoint, retire=None, overrides=None):
    """Shift an endpoint's traffic between its variants (UpdateEndpointWeightsAndCapacities); --retire ends one."""
    from project.aws.variants import traffic_task

    with user_errors():
        traffic_task(overrides or [], endpoint, retire or [])


@task(
    iterable=["overrides"],
    help={
        "job": "A run (its name under runs/ or its folder) or a completed training job (fetched first)",
        "force": "Register even when the gate refuses it (the version records that it was forced)",
        "overrides": OVERRIDES_HELP + "; e.g. deploy.gate.metric=test_loss deploy.gate.tolerance=0.02",
    },
)
def register(c, job, force=False, overrides=None):
    """Evaluate a run through the serving code path, gate it against the newest Approved version, register it."""
    from project.aws import registry

    with user_errors():
        registry.register_task(overrides or [], job, force)


@task(iterable=["overrides"], help={"overrides": OVERRIDES_HELP + " (aws.*, deploy.model_group)"})
def models(c, overrides=None):
    """The registry's versions, newest first: status, run, config, gate metric, served accuracy."""
    from project.aws import registry

    with user_errors():
        registry.models_task(overrides or [])


@task(iterable=["overrides"], help={"version": "GROUP/VERSION (`invoke models`)", "overrides": OVERRIDES_HELP})
def approve(c, version, overrides=None):
    """Approve a registered version: `invoke deploy model:latest` serves the newest Approved one."""
    from project.aws import registry

    with user_errors():
        registry.status_task(overrides or [], version, registry.APPROVED)


@task(iterable=["overrides"], help={"version": "GROUP/VERSION (`invoke models`)", "overrides": OVERRIDES_HELP})
def reject(c, version, overrides=None):
    """Reject a registered version: never served by model:latest, and no longer the gate's reference."""
    from project.aws import registry

    with user_errors():
        registry.status_task(overrides or [], version, registry.REJECTED)


@task(
    iterable=["overrides"],
    help={
        "sweep": "A SageMaker sweep's id (`invoke runs` lists them): its best completed job by sweep.objective",
        "canary": "Where the endpoint serves: shift this % of the fleet (1-50) first "
        "(default deploy.rollout.canary_percent)",
        "bake": "Minutes each step bakes with the alarms watching (1-60; default deploy.rollout.bake_minutes)",
        "yes": "Ship without asking (the summary and cost are still printed)",
        "overrides": OVERRIDES_HELP + "; deploy.endpoint_name=<endpoint> is required",
    },
)
def ship(c, sweep, canary=None, bake=None, yes=False, overrides=None):
    """A sweep's best job to an endpoint: register (gate), canary with rollback, approve; a re-run resumes.

    Each stage done is recorded in runs/<sweep>/ship-<endpoint>.json: the same command skips it.
    """
    from project.face.ship import ship_task

    with user_errors():
        ship_task(overrides or [], sweep, canary, bake, yes)


@task(iterable=["overrides"], help={"overrides": OVERRIDES_HELP + " (aws.*)"})
def endpoints(c, overrides=None):
    """This project's live endpoints: status, instances or serverless, uptime, cost so far, EXPIRED/IDLE."""
    from project.aws import endpoints as serve

    with user_errors():
        serve.endpoints_task(overrides or [])


@task(
    iterable=["overrides"],
    help={
        "name": "The endpoint to remove",
        "all_": "Every endpoint of this project",
        "expired": "Every endpoint older than its deploy.ttl_hours",
        "overrides": OVERRIDES_HELP + " (aws.*)",
    },
)
def undeploy(c, name=None, all_=False, expired=False, overrides=None):
    """Delete an endpoint with its endpoint config and model (idempotent); --all, --expired."""
    from project.aws import endpoints as serve

    with user_errors():
        serve.undeploy_task(overrides or [], [name] if name else [], all_, expired)


@task(
    iterable=["overrides"],
    help={
        "inputs": "An s3:// prefix or a local folder of PNG/JPEG images or .npy/.json arrays (uploaded first)",
        "job": RUN_HELP,
        "overrides": OVERRIDES_HELP + "; e.g. deploy.transform_instance=ml.c5.xlarge",
    },
)
def batch_predict(c, inputs, job=None, overrides=None):
    """A SageMaker batch transform of a prefix of images or arrays: runs/<run>/predictions/ (and one CSV)."""
    from project.aws import batch

    with user_errors():
        batch.batch_predict_task(overrides or [], job, inputs)


@task(
    help={
        "port": f"Port on 127.0.0.1 (default {SANDBOX_PORT}, LocalStack's)",
        "background": "Run detached, with a pid file in .sandbox/; `invoke sandbox --stop` ends it",
        "stop": "Stop the background sandbox of this checkout",
        "jobs": "Run each SageMaker job it records on this machine (default where namespaces allow); "
        "--no-jobs only records them",
    }
)
def sandbox(c, port=SANDBOX_PORT, background=False, stop=False, jobs=True):
    """Local AWS endpoint (moto) that plays SageMaker too: `invoke train` jobs run here, no Docker."""
    from project.sandbox.daemon import main

    with user_errors():
        main(port=int(port), background=background, stop=stop, run_jobs=jobs)


ns = Collection(
    local,
    predict,
    upload,
    build,
    push,
    train,
    logs,
    status,
    why,
    stop,
    fetch,
    runs,
    compare,
    prices,
    deploy,
    endpoints,
    traffic,
    undeploy,
    batch_predict,
    register,
    models,
    approve,
    reject,
    ship,
    sandbox,
)
ns.configure({"run": {"echo": False}})
