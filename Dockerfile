# job.image=custom: an AWS Deep Learning Container for PyTorch training (CUDA, NCCL, EFA, torchrun)
# with this project's training requirements built in, so a job starts without pip.
#   invoke build   # docker build --platform linux/amd64 --build-arg BASE_IMAGE=<job.base_image> -t <ecr>:deps-<hash> .
# The tag hashes this file, .dockerignore, requirements-train.txt and the base image
# (project/aws/image.py): no project code goes in. The code travels in the job's code channel,
# so a code change never needs a rebuild.
ARG BASE_IMAGE
FROM ${BASE_IMAGE}

COPY requirements-train.txt /tmp/requirements-train.txt
# Keep the DLC's CUDA build of torch: install everything else the training code needs.
RUN grep -v '^torch==' /tmp/requirements-train.txt > /tmp/requirements.txt \
 && python -m pip install --no-cache-dir -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt /tmp/requirements-train.txt

ENV PYTHONUNBUFFERED=1
# No ENTRYPOINT: the job's ContainerEntrypoint (the SageMaker SDK's driver) runs the code
# channel, whose sm_entry.py calls project.training.train with the resolved config.
