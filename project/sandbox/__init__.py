"""The sandbox: a local AWS endpoint that also plays SageMaker, so jobs run without Docker or AWS.

`invoke sandbox` serves a moto server with the gaps users would hit filled in (S3 bucket-policy
conditions, SageMaker's job lifecycle and listing, any image tag as "this machine", SageMaker's
Service Quotas, IAM's policy simulator refused rather than a 500), and runs each
training job it records on this machine, as one SageMaker instance would. One module per concern:

- endpoint: the moto server over HTTP, with S3 policy conditions evaluated (policy) and
  SageMaker's Service Quotas served (quotas);
- service: SageMaker's API where moto falls short, and the background runs of created jobs;
- serving: endpoints and transform jobs answered by their models (model_server: the inference
  image's /ping and /invocations around the model's own code/inference.py, one process per model);
- async_queue: an asynchronous endpoint's queue (input object in, output or failure object out);
- record: moto's in-process record of a job and the status changes the service makes to it;
- optml: the job's /opt/ml tree on each host;
- environment: the container's environment on each host;
- container: the entry point as PID 1 in private namespaces, its logs into CloudWatch;
- results: model.tar.gz / output.tar.gz, checkpoints, metrics and the failure reason;
- run: a recorded job's instances (a container each), from their trees to the end state;
- daemon: the foreground / background server behind `invoke sandbox`.

Nothing here imports the code a job runs (project.training.train, torch): the sandbox is the platform
(a model server imports torch in its own process).
This module stays import-cheap: tasks.py reads the defaults below.
"""

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 4566  # LocalStack's edge port: tflocal and localstack-client expect it
STATE_DIR = ".sandbox"  # under the checkout: pid file, log and the jobs' /opt/ml trees
