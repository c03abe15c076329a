"""The request checker itself: every pattern of the services the tasks call becomes a Python regex."""

import re

import botocore.session
import pytest

from tests.service_model import _python_regex


@pytest.mark.parametrize(
    "service",
    [
        "sagemaker",
        "sagemaker-runtime",
        "cloudwatch",
        "s3",
        "ecr",
        "logs",
        "iam",
        "sts",
        "service-quotas",
        "application-autoscaling",
    ],
)
def test_every_pattern_of_the_service_model_compiles(service):
    model = botocore.session.get_session().get_service_model(service)
    for name in model.shape_names:
        pattern = model.shape_for(name).metadata.get("pattern")
        if pattern:
            re.compile(_python_regex(pattern))  # raises on a Java construct not translated


def test_java_classes_keep_their_meaning():
    assert re.fullmatch(_python_regex(r"\A\S[\p{Print}]*\z"), "id-1 x")
    assert not re.fullmatch(_python_regex(r"\p{ASCII}*"), "h\u00e9")
    assert re.fullmatch(_python_regex(r"\p{Print}+"), "ep-backlog-per-instance")
    assert not re.fullmatch(_python_regex(r"\p{Print}+"), "tab\there")
