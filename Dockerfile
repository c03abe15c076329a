# The SageMaker training image: an AWS Deep Learning Container for PyTorch (CUDA, NCCL, EFA,
# torchrun and the SageMaker training toolkit), plus this project's training requirements.
#   invoke build   # docker build --platform linux/amd64 --build-arg BASE_IMAGE=... -t <ecr>:<git-sha> .
ARG BASE_IMAGE
FROM ${BASE_IMAGE}

WORKDIR /opt/project
COPY requirements-train.txt .
# Keep the DLC's CUDA build of torch: install everything else the training code needs.
RUN grep -v '^torch==' requirements-train.txt > /tmp/requirements.txt \
 && python -m pip install --no-cache-dir -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt

COPY project/ /opt/project/project/
COPY conf/ /opt/project/conf/
ENV PYTHONPATH=/opt/project \
    PYTHONUNBUFFERED=1
# No ENTRYPOINT: the job's ContainerEntrypoint (the SageMaker SDK's driver) runs the code
# channel, whose sm_entry.py calls project.train with the resolved config.
